"""FedAvg's mean over the numpy arrays the server holds (`MeanFedAvg`): the same bits as Flower's.

A contract test: if Flower's `aggregate_arrayrecords` ever changes its arithmetic, these fail, and
`weighted_mean` must follow it (or `make_strategy` go back to Flower's FedAvg)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.records import to_array_record
from fedmol.server.strategies import MeanFedAvg, MeanFedProx, make_strategy, weighted_mean
from tests.server.messages import reply


def _updates(seed: int, n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"trunk.0.weight": rng.standard_normal((64, 8), dtype=np.float32) * np.float32(10.0 ** rng.integers(-3, 3)),
             "trunk.0.bias": rng.standard_normal(8, dtype=np.float32)} for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_weighted_mean_has_the_bits_of_flowers_aggregation(seed):
    updates = _updates(seed, 2 + seed % 3)
    weights = [float(w) for w in np.random.default_rng(seed).integers(1, 5000, len(updates))]
    contents = [RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in u.items()}),
                            "metrics": reply(1, None, w).content[wire.METRICS]})
                for u, w in zip(updates, weights, strict=True)]
    flower = aggregate_arrayrecords(contents, wire.NUM_TRAIN_LABELS)
    ours = weighted_mean(updates, weights)
    assert set(ours) == set(flower.keys())
    for name, value in ours.items():
        assert value.dtype == flower[name].numpy().dtype
        assert np.array_equal(value, flower[name].numpy()), name


@pytest.mark.parametrize("keep", [True, False])
def test_mean_fedavg_aggregates_like_flowers_fedavg(keep):
    """Replies whose records keep their arrays (the server's decoded updates) and replies read
    from bytes give Flower's FedAvg result: arrays and metrics."""
    updates = _updates(7, 3)
    weights = [120.0, 35.0, 900.0]

    def replies(use_keep):
        out = []
        for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
            msg = reply(i + 1, u, w, extra_metrics={"train-loss": 0.1 * (i + 1)})
            if use_keep:
                msg.content[wire.ARRAYS] = to_array_record(u, keep=True)
            out.append(msg)
        return out

    common = dict(min_train_nodes=1, min_available_nodes=1, weighted_by_key=wire.NUM_TRAIN_LABELS,
                  arrayrecord_key=wire.ARRAYS)
    expected, expected_metrics = FedAvg(**common).aggregate_train(1, replies(False))
    arrays, metrics = MeanFedAvg(**common).aggregate_train(1, replies(keep))
    assert set(arrays.keys()) == set(expected.keys())
    for name in expected.keys():
        assert np.array_equal(arrays[name].numpy(), expected[name].numpy()), name
    assert dict(metrics) == dict(expected_metrics)
    assert MeanFedAvg(**common).aggregate_train(1, []) == (None, None)


def test_the_strategies_that_average_use_it():
    assert isinstance(make_strategy(FederationConfig(strategy="fedavg")), MeanFedAvg)
    prox = make_strategy(FederationConfig(strategy="fedprox"))
    assert isinstance(prox, MeanFedProx) and isinstance(prox, FedProx)
    assert isinstance(make_strategy(FederationConfig(strategy="fednesterov")), MeanFedAvg)
