"""Central (site-level) DP: noise from the budget, the unweighted mean, and each site's account."""

from __future__ import annotations

import numpy as np
import pytest

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.privacy import central_epsilon, central_noise_for_epsilon
from fedmol.records import to_array_record
from fedmol.server.strategies import (
    AccountedAdaptiveClipping,
    AccountedFixedClipping,
    MeanFedAvg,
    central_noise_multiplier,
    make_strategy,
    restore_strategy_state,
    strategy_state,
)
from tests.server.messages import reply

GLOBAL = {"trunk.w": np.zeros((3, 2), np.float32), "heads.consortium_classification.b": np.zeros(2, np.float32)}


def _cfg(**kw) -> FederationConfig:
    return FederationConfig(**{"dp": "server-fixed", "dp_epsilon": 3.0, "num_server_rounds": 4, "min_sites": 2,
                               "dp_clipping_norm": 10.0, **kw})


def _arrays(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in GLOBAL.items()}


def _round(dp, rnd: int, replies):
    dp.current_arrays = to_array_record(GLOBAL)
    dp.strategy.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}  # FedAdam's (configure_train's)
    return dp.aggregate_train(rnd, replies)


def test_the_noise_comes_from_the_budget_and_the_rounds():
    cfg = _cfg()
    dp = make_strategy(cfg)
    assert isinstance(dp, AccountedFixedClipping)
    sigma = central_noise_for_epsilon(3.0, 1e-5, 4)
    assert dp.noise_multiplier == pytest.approx(sigma) == central_noise_multiplier(cfg)
    assert central_epsilon([sigma] * 4, 1e-5) <= 3.0 < central_epsilon([sigma] * 5, 1e-5)
    assert type(make_strategy(cfg.replace(dp="site-dp-sgd"))) is MeanFedAvg  # DP at the sites: no wrapper


def test_the_mean_is_unweighted_and_each_site_is_accounted():
    np.random.seed(0)
    # Next to no noise, so that the mean shows (no update of exactly 0: Flower divides by its norm).
    cfg = _cfg(dp_epsilon=1e4)
    dp = make_strategy(cfg)
    replies = [reply(1, _arrays(1.0), 1000), reply(2, _arrays(0.001), 10)]
    agg, _ = _round(dp, 1, replies)
    # FedAvg's label weights would give 0.99: one site's share of the mean must stay 1/n for the noise to cover it.
    assert abs(float(agg["trunk.w"].numpy().mean()) - 0.5) < 0.1
    weights = [m.content[wire.METRICS][wire.NUM_TRAIN_LABELS] for m in replies]
    assert weights == [1000, 10]  # the replies keep their weights (the round's reports use them)
    dp.num_sampled_clients = 1  # round 2 sampled site1 only (configure_train sets it)
    _round(dp, 2, [reply(1, _arrays(1.0), 1000)])
    by_site = dp.epsilon_by_site()
    assert by_site["site1"] == pytest.approx(central_epsilon([dp.noise_multiplier] * 2, 1e-5))
    assert by_site["site2"] == pytest.approx(central_epsilon([dp.noise_multiplier], 1e-5))


def test_fewer_answers_than_sampled_sites_cost_more():
    dp = make_strategy(_cfg())
    dp.num_sampled_clients = 3  # configure_train sampled three; two answered
    _round(dp, 1, [reply(1, _arrays(1.0), 5), reply(2, _arrays(0.001), 5)])
    assert dp.releases["site1"] == [pytest.approx(dp.noise_multiplier * 2 / 3)]


def test_the_account_survives_a_checkpoint():
    dp = make_strategy(_cfg(strategy="fedadam"))
    _round(dp, 1, [reply(1, _arrays(1.0), 5), reply(2, _arrays(0.001), 5)])
    state = strategy_state(dp)
    assert any(k.startswith("m_t/") for k in state)  # the optimiser's state, as before
    fresh = make_strategy(_cfg(strategy="fedadam"))
    restore_strategy_state(fresh, state)
    assert fresh.epsilon_by_site() == pytest.approx(dp.epsilon_by_site())
    with pytest.raises(ValueError, match="central-DP account"):
        restore_strategy_state(make_strategy(_cfg(dp="off", dp_epsilon=0.0)), state)


def test_adaptive_clipping_accounts_its_clipped_count():
    cfg = _cfg(dp="server-adaptive")
    dp = make_strategy(cfg)
    assert isinstance(dp, AccountedAdaptiveClipping)
    z = central_noise_multiplier(cfg)
    # The update gets more noise than z, the count's noise makes up the rest: together one Gaussian of z.
    assert dp.noise_multiplier > z and dp.clipped_count_stddev == pytest.approx(2 * z)
    assert (dp.noise_multiplier ** -2 + dp.clipped_count_stddev ** -2) ** -0.5 == pytest.approx(z)
    for rnd in range(1, 5):
        _round(dp, rnd, [reply(1, _arrays(1.0), 5), reply(2, _arrays(0.001), 5)])
    assert dp.epsilon_by_site()["site1"] == pytest.approx(central_epsilon([z] * 4, 1e-5))
    assert dp.epsilon_by_site()["site1"] <= 3.0


def test_the_adapted_clipping_norm_survives_a_checkpoint():
    dp = make_strategy(_cfg(dp="server-adaptive"))
    for rnd in (1, 2):
        _round(dp, rnd, [reply(1, _arrays(1.0), 5), reply(2, _arrays(0.001), 5)])
    assert dp.clipping_norm != 10.0  # adapted from dp-clipping-norm
    fresh = make_strategy(_cfg(dp="server-adaptive"))
    restore_strategy_state(fresh, strategy_state(dp))
    assert fresh.clipping_norm == dp.clipping_norm
    assert fresh.epsilon_by_site() == pytest.approx(dp.epsilon_by_site())
    with pytest.raises(ValueError, match="adaptive clipping norm"):
        restore_strategy_state(make_strategy(_cfg()), {"dp-clipping-norm": np.array([3.0])})
