"""fedmol.privacy: the accountant against independent computations, its inverse, and the DP config."""

from __future__ import annotations

import math

import pytest

from fedmol.config import FederationConfig
from fedmol.errors import ConfigError
from fedmol.privacy import (
    SiteBudget,
    central_epsilon,
    central_noise_for_epsilon,
    dp_sgd_epsilon,
    noise_for_epsilon,
)

DELTA = 1e-5


SETTINGS = [
    (1.1, 256 / 60_000, 60 * 60_000 // 256),  # Abadi et al. 2016's MNIST setting, 60 epochs
    (2.0, 128 / 1_500, 40 * 2 * 12),  # a Tox21-sized site: 40 rounds of 2 epochs of 12 batches
    (0.8, 0.5, 20),
    (4.65, 1.0, 60),  # the site-dp-sgd default: 20 rounds of 3 full-batch steps at epsilon 8
]


@pytest.mark.parametrize("sigma, q, steps", SETTINGS)
def test_epsilon_matches_opacus_prv_accountant(sigma, q, steps):
    # Two independent tight accountants: dp-accounting's PLD (ours) and Opacus's PRV (Gopi et al. 2021).
    from opacus.accountants import PRVAccountant

    opacus = PRVAccountant()
    opacus.history = [(sigma, q, steps)]
    assert dp_sgd_epsilon(sigma, q, steps, DELTA) == pytest.approx(opacus.get_epsilon(DELTA), rel=1e-2)


@pytest.mark.parametrize("sigma, q, steps", SETTINGS)
def test_rdp_accountant_matches_opacus_and_is_never_tighter_than_pld(sigma, q, steps):
    from opacus.accountants import RDPAccountant

    opacus = RDPAccountant()
    opacus.history = [(sigma, q, steps)]
    rdp = dp_sgd_epsilon(sigma, q, steps, DELTA, accountant="rdp")
    # Our order grid is finer than Opacus's default one: never worse, at most a little better.
    assert rdp <= opacus.get_epsilon(DELTA) + 1e-9
    assert rdp == pytest.approx(opacus.get_epsilon(DELTA), rel=2e-3)
    # RDP's conversion to (epsilon, delta) is an upper bound: PLD's tight figure is below it.
    assert dp_sgd_epsilon(sigma, q, steps, DELTA) < rdp


def test_abadi_example_is_within_the_published_value():
    # Abadi et al. (2016), section 3.1: q 0.01, sigma 4, delta 1e-5, T 10,000 -> epsilon about 1.26 with the
    # moments accountant, which a tight accountant never exceeds.
    eps = dp_sgd_epsilon(4.0, 0.01, 10_000, DELTA)
    assert 0.9 < eps <= 1.26


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a Gaussian mechanism of sensitivity 1 and noise 1 / mu at ``delta``
    (Balle & Wang 2018, theorem 8): delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    from scipy.special import log_ndtr

    def delta_of(eps: float) -> float:
        return math.exp(log_ndtr(-eps / mu + mu / 2)) - math.exp(eps + log_ndtr(-eps / mu - mu / 2))

    lo, hi = 0.0, 1e5
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("rounds, sigma", [(10, 5.0), (60, 4.65), (1, 0.9), (60, 0.3), (60, 0.1)])
def test_without_sampling_the_epsilon_is_the_exact_gaussian_one(rounds, sigma):
    # Without sampling, k rounds of noise sigma are one Gaussian mechanism of noise sigma / sqrt(k): an exact
    # formula, which PLD (pessimistic discretisation; coarser below sigma 1) reaches from above and RDP overshoots.
    exact = _gaussian_epsilon(math.sqrt(rounds) / sigma, DELTA)
    ours = central_epsilon([sigma] * rounds, DELTA)
    assert exact <= ours <= exact * 1.005
    assert dp_sgd_epsilon(sigma, 1.0, rounds, DELTA, accountant="rdp") > ours


@pytest.mark.parametrize("target, q, steps", [(8.0, 128 / 1_500, 960), (1.0, 0.01, 1_000), (3.0, 1.0, 40)])
def test_the_inverse_gives_the_smallest_noise_within_the_target(target, q, steps):
    sigma = noise_for_epsilon(target, DELTA, q, steps)
    assert dp_sgd_epsilon(sigma, q, steps, DELTA) <= target
    assert dp_sgd_epsilon(sigma * 0.999, q, steps, DELTA) > target


def test_the_inverse_agrees_with_opacus():
    from opacus.accountants.utils import get_noise_multiplier

    ours = noise_for_epsilon(8.0, DELTA, 128 / 1_500, 960)
    theirs = get_noise_multiplier(target_epsilon=8.0, target_delta=DELTA, sample_rate=128 / 1_500, steps=960,
                                  accountant="prv", epsilon_tolerance=0.001)
    assert ours == pytest.approx(theirs, rel=5e-3)
    assert central_noise_for_epsilon(3.0, DELTA, 40) == pytest.approx(noise_for_epsilon(3.0, DELTA, 1.0, 40))


def test_no_noise_means_no_privacy_and_no_steps_cost_nothing():
    assert dp_sgd_epsilon(0.0, 0.1, 10, DELTA) == math.inf
    assert dp_sgd_epsilon(1.0, 0.1, 0, DELTA) == 0.0
    with pytest.raises(ValueError, match="target epsilon"):
        noise_for_epsilon(0.0, DELTA, 0.1, 10)


def test_a_budget_file_keeps_the_accountant_it_names(tmp_path):
    # Budget files written before PLD name rdp: a resumed federation goes on with the same accountant.
    budget = SiteBudget(federation_id="f", target_epsilon=8.0, delta=DELTA, noise_multiplier=4.94,
                        max_grad_norm=1.0, sample_rate=1.0, accountant="rdp")
    assert budget.spend(1, 60) == pytest.approx(dp_sgd_epsilon(4.94, 1.0, 60, DELTA, accountant="rdp"))
    assert budget.epsilon_spent > dp_sgd_epsilon(4.94, 1.0, 60, DELTA) + 0.3  # ~8.0 against ~7.4 with PLD
    budget.save(tmp_path / "dp-f.json")
    assert SiteBudget.load(tmp_path / "dp-f.json").accountant == "rdp"
    with pytest.raises(ValueError, match="unknown DP accountant 'moments'"):
        dp_sgd_epsilon(1.0, 0.1, 10, DELTA, accountant="moments")


def test_budget_file_round_trip(tmp_path):
    budget = SiteBudget(federation_id="f", target_epsilon=8.0, delta=DELTA, noise_multiplier=1.5,
                        max_grad_norm=4.0, sample_rate=0.1)
    budget.spend(1, 20)
    budget.spend(2, 20)
    path = tmp_path / "privacy" / "dp-f.json"
    budget.save(path)
    again = SiteBudget.load(path)
    assert again == budget and again.steps_spent == 40
    assert again.epsilon_spent == pytest.approx(dp_sgd_epsilon(1.5, 0.1, 40, DELTA))


def test_every_dp_mode_needs_a_budget():
    for mode in ("site-dp-sgd", "server-fixed", "server-adaptive"):
        with pytest.raises(ConfigError, match=rf"dp='{mode}' needs a privacy budget: set dp-epsilon > 0"):
            FederationConfig.from_run_config({"dp": mode})
        assert FederationConfig.from_run_config({"dp": mode, "dp-epsilon": 8}).dp_epsilon == 8.0
    with pytest.raises(ConfigError, match="dp-delta"):
        FederationConfig.from_run_config({"dp": "site-dp-sgd", "dp-epsilon": 8, "dp-delta": 0})
    with pytest.raises(ConfigError, match="dp-sample-clip"):
        FederationConfig.from_run_config({"dp-sample-clip": -1})


def test_secure_aggregation_goes_with_per_compound_dp_not_with_central_dp():
    cfg = FederationConfig.from_run_config({"secure-aggregation": True, "dp": "site-dp-sgd", "dp-epsilon": 8})
    assert cfg.secure_aggregation and cfg.dp == "site-dp-sgd"
    for mode in ("server-fixed", "server-adaptive"):
        with pytest.raises(ConfigError, match="secure-aggregation=true needs .* never an individual update"):
            FederationConfig.from_run_config({"secure-aggregation": True, "dp": mode, "dp-epsilon": 8})
