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


@pytest.mark.parametrize("sigma, q, steps", [
    (1.1, 256 / 60_000, 60 * 60_000 // 256),  # Abadi et al. 2016's MNIST setting, 60 epochs
    (2.0, 128 / 1_500, 40 * 2 * 12),  # a Tox21-sized site: 40 rounds of 2 epochs of 12 batches
    (0.8, 0.5, 20),
])
def test_epsilon_matches_opacus_rdp_accountant(sigma, q, steps):
    from opacus.accountants import RDPAccountant

    opacus = RDPAccountant()
    opacus.history = [(sigma, q, steps)]
    ours = dp_sgd_epsilon(sigma, q, steps, DELTA)
    # Our order grid is finer than Opacus's default one: never worse, at most a little better.
    assert ours <= opacus.get_epsilon(DELTA) + 1e-9
    assert ours == pytest.approx(opacus.get_epsilon(DELTA), rel=2e-3)


def test_abadi_example_is_within_the_published_value():
    # Abadi et al. (2016), section 3.1: q 0.01, sigma 4, delta 1e-5, T 10,000 -> epsilon about 1.26 with the
    # moments accountant. RDP with the conversion of Balle et al. (2020) is tighter, never looser.
    eps = dp_sgd_epsilon(4.0, 0.01, 10_000, DELTA)
    assert 0.9 < eps <= 1.26


def test_central_dp_is_a_plain_gaussian_composition():
    # Without sampling, k rounds of noise sigma are one Gaussian of sigma / sqrt(k): RDP alpha / (2 s^2).
    rounds, sigma = 10, 5.0
    alphas = [a / 100 for a in range(101, 100_000)]
    rho = rounds / (2 * sigma ** 2)
    best = min(a * rho + math.log((a - 1) / a) - (math.log(DELTA) + math.log(a)) / (a - 1) for a in alphas)
    assert central_epsilon([sigma] * rounds, DELTA) == pytest.approx(best, rel=2e-3)


@pytest.mark.parametrize("target, q, steps", [(8.0, 128 / 1_500, 960), (1.0, 0.01, 1_000), (3.0, 1.0, 40)])
def test_the_inverse_gives_the_smallest_noise_within_the_target(target, q, steps):
    sigma = noise_for_epsilon(target, DELTA, q, steps)
    assert dp_sgd_epsilon(sigma, q, steps, DELTA) <= target
    assert dp_sgd_epsilon(sigma * 0.999, q, steps, DELTA) > target


def test_the_inverse_agrees_with_opacus():
    from opacus.accountants.utils import get_noise_multiplier

    ours = noise_for_epsilon(8.0, DELTA, 128 / 1_500, 960)
    theirs = get_noise_multiplier(target_epsilon=8.0, target_delta=DELTA, sample_rate=128 / 1_500, steps=960,
                                  accountant="rdp", epsilon_tolerance=0.001)
    assert ours == pytest.approx(theirs, rel=5e-3)
    assert central_noise_for_epsilon(3.0, DELTA, 40) == pytest.approx(noise_for_epsilon(3.0, DELTA, 1.0, 40))


def test_no_noise_means_no_privacy_and_no_steps_cost_nothing():
    assert dp_sgd_epsilon(0.0, 0.1, 10, DELTA) == math.inf
    assert dp_sgd_epsilon(1.0, 0.1, 0, DELTA) == 0.0
    with pytest.raises(ValueError, match="target epsilon"):
        noise_for_epsilon(0.0, DELTA, 0.1, 10)


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
