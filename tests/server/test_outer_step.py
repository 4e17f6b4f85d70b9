"""fednesterov: FedAvg's mean, then DiLoCo's outer SGD step with Nesterov momentum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmol.config import FederationConfig
from fedmol.errors import ConfigError
from fedmol.server.strategies import FedNesterov, make_strategy, outer_nesterov_step, strategy_state
from tests.server.messages import reply


def test_outer_step_matches_torch_sgd_with_nesterov():
    """Two outer steps equal torch.optim.SGD(nesterov=True) fed the outer gradient x - mean."""
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 4)).astype(np.float32)
    means = [x0 - rng.normal(size=(3, 4)).astype(np.float32) * 0.1 for _ in range(2)]
    param = torch.nn.Parameter(torch.tensor(x0))
    sgd = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    current, momentum = {"w": x0}, {}
    for k in range(2):
        mean = means[k] if k == 0 else current["w"] - (x0 - means[k])  # the same update relative to x
        param.grad = torch.tensor(current["w"] - mean)
        sgd.step()
        current = outer_nesterov_step(current, {"w": mean}, momentum, lr=0.7, mu=0.9)
        np.testing.assert_allclose(current["w"], param.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_outer_lr_one_without_momentum_is_the_mean_and_integers_pass_through():
    current = {"w": np.ones(3, np.float32), "n": np.array([5], np.int64)}
    mean = {"w": np.array([0.0, 2.0, 4.0], np.float32), "n": np.array([7], np.int64)}
    out = outer_nesterov_step(current, mean, {}, lr=1.0, mu=0.0)
    np.testing.assert_allclose(out["w"], mean["w"])
    assert out["n"].tolist() == [7] and out["w"].dtype == np.float32


def test_fednesterov_steps_from_the_weighted_mean_and_keeps_momentum_for_checkpoints():
    cfg = FederationConfig(strategy="fednesterov", outer_lr=0.5, outer_momentum=0.9, min_sites=2)
    strategy = make_strategy(cfg)
    assert isinstance(strategy, FedNesterov)
    x = np.zeros(2, np.float32)
    strategy.current_arrays = {"w": x}  # what configure_train keeps of the model it sends
    replies = [reply(1, {"w": np.array([1.0, 1.0], np.float32)}, 1.0),
               reply(2, {"w": np.array([4.0, 4.0], np.float32)}, 2.0)]
    arrays, _ = strategy.aggregate_train(1, replies)
    # mean 3.0; d = -3; m = -3; x - 0.5 * (d + 0.9 m) = 0 + 0.5 * 5.7
    np.testing.assert_allclose(arrays["w"].numpy(), [2.85, 2.85], rtol=1e-6)
    assert set(strategy_state(strategy)) == {"m_t/w"}


def test_secure_aggregation_accepts_the_outer_step_but_not_a_median():
    FederationConfig(strategy="fednesterov", secure_aggregation=True).validate()
    with pytest.raises(ConfigError, match="fednesterov"):
        FederationConfig(strategy="fedmedian", secure_aggregation=True).validate()
