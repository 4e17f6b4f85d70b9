"""The strategy wrapper: update validation, aggregation maths against numpy, hooks, round offsets."""

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian

from fedmol import wire
from fedmol.server.rounds import HookedStrategy, validate_update
from fedmol.server.strategies import restore_strategy_state, strategy_state
from tests.server.messages import reply

GLOBAL = {"trunk.w": np.zeros((3, 2), np.float32), "heads.consortium_classification.b": np.zeros(2, np.float32)}


def expected():
    return {k: (v.shape, str(v.dtype)) for k, v in GLOBAL.items()}


class Recorder:
    def __init__(self):
        self.outcomes = []

    def on_round(self, outcome, strategy):
        self.outcomes.append(outcome)


def wrapped(inner, **kw):
    s = HookedStrategy(inner, [rec := Recorder()], **kw)
    s._expected = expected()
    s._sampled["train"] = [1, 2, 3]
    return s, rec


def arrays(value):
    return {k: np.full_like(v, value) for k, v in GLOBAL.items()}


@pytest.mark.parametrize("bad, reason", [
    ({**arrays(1.0), "heads.private_regression.w": np.zeros(2, np.float32)}, "array names differ"),
    ({"trunk.w": np.zeros((3, 3), np.float32), "heads.consortium_classification.b": np.zeros(2, np.float32)},
     "shape"),
    ({**arrays(1.0), "trunk.w": np.full((3, 2), np.nan, np.float32)}, "NaN"),
])
def test_invalid_updates_are_named(bad, reason):
    assert reason in validate_update(reply(1, bad, 10), expected())


def test_valid_update_passes_and_weight_must_be_positive():
    assert validate_update(reply(1, arrays(1.0), 10), expected()) is None
    assert "positive" in validate_update(reply(1, arrays(1.0), 0), expected())


def test_fedavg_is_the_label_weighted_mean_and_bad_updates_are_dropped():
    s, rec = wrapped(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS))
    replies = [reply(1, arrays(1.0), 10), reply(2, arrays(4.0), 30),
               reply(3, {**arrays(1.0), "trunk.w": np.full((3, 2), np.inf, np.float32)}, 1000)]
    agg, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(agg["trunk.w"].numpy(), np.full((3, 2), (1 * 10 + 4 * 30) / 40))
    out = rec.outcomes[-1]
    assert [r.site for r in out.reports] == ["site1", "site2"]
    assert out.rejected[0][0] == "site3" and "infinite" in out.rejected[0][1]


def test_packed_replies_aggregate_like_plain_ones_and_a_malformed_one_is_rejected():
    """Sites send their arrays packed in one array (`fedmol.records.to_array_record(packed=True)`):
    the server reads them back, aggregates exactly as from plain replies (decoding the replies side
    by side), and rejects a packed array that does not read back, naming why."""
    from flwr.app import Array, ArrayRecord

    from fedmol.records import PACKED, to_array_record

    def packed(msg, record=None):
        msg.content[wire.ARRAYS] = record or to_array_record(
            {k: v.numpy() for k, v in msg.content[wire.ARRAYS].items()}, packed=True)
        return msg

    s, rec = wrapped(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS))
    replies = [packed(reply(1, arrays(1.0), 10)), packed(reply(2, arrays(4.0), 30)),
               packed(reply(3, arrays(9.0), 1000), ArrayRecord({PACKED: Array(np.arange(40, dtype=np.uint8))}))]
    agg, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(agg["trunk.w"].numpy(), np.full((3, 2), (1 * 10 + 4 * 30) / 40))
    out = rec.outcomes[-1]
    assert [r.site for r in out.reports] == ["site1", "site2"]
    assert out.rejected[0][0] == "site3" and "packing header" in out.rejected[0][1]


def test_reference_hash_mismatch_is_rejected():
    s, rec = wrapped(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS))
    s.aggregate_train(1, [reply(1, arrays(1.0), 10, reference_hash="A"), reply(2, arrays(2.0), 10, reference_hash="B")])
    assert [site for site, _ in rec.outcomes[-1].rejected] == ["site2"]
    assert "another key or settings" in rec.outcomes[-1].rejected[0][1]


def test_median_outvotes_a_scaled_update():
    s, _ = wrapped(FedMedian(weighted_by_key=wire.NUM_TRAIN_LABELS))
    agg, _ = s.aggregate_train(1, [reply(1, arrays(1.0), 10), reply(2, arrays(1.2), 10), reply(3, arrays(1000.0), 10)])
    np.testing.assert_allclose(agg["trunk.w"].numpy(), 1.2)


@pytest.mark.parametrize("strategy, beta, quorum", [("fedmedian", 0.2, 3), ("trimmed-mean", 0.2, 5),
                                                   ("trimmed-mean", 0.34, 3), ("trimmed-mean", 0.0, 1),
                                                   ("fedavg", 0.2, 1)])
def test_robust_strategies_name_the_updates_they_need_to_outvote_a_site(strategy, beta, quorum):
    from fedmol.config import FederationConfig
    from fedmol.server.strategies import robust_quorum

    assert robust_quorum(FederationConfig(strategy=strategy, trimmed_beta=beta)) == quorum


def test_median_of_too_few_updates_keeps_the_global_model():
    """Two answers (a poisoning site and one honest site): their median is their mean, so the round
    is not aggregated, and the outcome says why; three are."""
    s, rec = wrapped(FedMedian(weighted_by_key=wire.NUM_TRAIN_LABELS), min_updates=3)
    agg, metrics = s.aggregate_train(1, [reply(1, arrays(1.0), 10), reply(3, arrays(1000.0), 10)])
    assert agg is None and metrics is None
    out = rec.outcomes[-1]
    assert [r.site for r in out.reports] == ["site1", "site3"] and out.arrays is None
    assert "2 of 3 sampled sites' updates accepted" in out.skipped and "needs 3" in out.skipped
    agg, _ = s.aggregate_train(2, [reply(1, arrays(1.0), 10), reply(2, arrays(1.2), 10), reply(3, arrays(1000.0), 10)])
    np.testing.assert_allclose(agg["trunk.w"].numpy(), 1.2)
    assert rec.outcomes[-1].skipped == ""


def test_a_consortium_smaller_than_the_quorum_aggregates_what_came():
    s, rec = wrapped(FedMedian(weighted_by_key=wire.NUM_TRAIN_LABELS), min_updates=5)  # 3 sampled
    agg, _ = s.aggregate_train(1, [reply(1, arrays(1.0), 10), reply(2, arrays(1.2), 10), reply(3, arrays(2.0), 10)])
    np.testing.assert_allclose(agg["trunk.w"].numpy(), 1.2)
    assert rec.outcomes[-1].skipped == ""
    agg, _ = s.aggregate_train(2, [reply(1, arrays(1.0), 10), reply(2, arrays(1.2), 10)])
    assert agg is None and "needs 3" in rec.outcomes[-1].skipped


def test_missing_sites_and_round_offset():
    s, rec = wrapped(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS), round_offset=4)
    s.site_names[3] = "hospital"
    s.aggregate_train(1, [reply(1, arrays(1.0), 10), reply(2, arrays(1.0), 10)])
    assert rec.outcomes[-1].server_round == 5
    assert rec.outcomes[-1].missing == ["hospital"]


def test_fedadam_state_survives_a_checkpoint():
    adam = FedAdam(weighted_by_key=wire.NUM_TRAIN_LABELS, eta=0.1)
    adam.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}
    adam.aggregate_train(1, [reply(1, arrays(1.0), 10), reply(2, arrays(2.0), 10)])
    state = strategy_state(adam)
    assert state and all(k.split("/")[0] in ("m_t", "v_t") for k in state)
    fresh = FedAdam(weighted_by_key=wire.NUM_TRAIN_LABELS, eta=0.1)
    restore_strategy_state(fresh, state)
    for attr in ("m_t", "v_t"):
        for k in GLOBAL:
            np.testing.assert_array_equal(getattr(fresh, attr)[k], getattr(adam, attr)[k])


def test_central_dp_clips_each_update_and_keeps_the_optimiser_state_reachable():
    from fedmol.config import FederationConfig
    from fedmol.server.strategies import make_strategy

    # A huge budget: next to no noise, so that the clipping shows.
    cfg = FederationConfig(strategy="fedadam", dp="server-fixed", dp_clipping_norm=1.0, dp_epsilon=1e6,
                           min_sites=2)
    dp = make_strategy(cfg)
    assert "DifferentialPrivacyServerSideFixedClipping" in [c.__name__ for c in type(dp).__mro__]
    s, _ = wrapped(dp)
    dp.strategy.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}
    from fedmol.records import to_array_record

    dp.current_arrays = to_array_record(GLOBAL)
    s.aggregate_train(1, [reply(1, arrays(100.0), 10), reply(2, arrays(100.0), 10)])
    state = strategy_state(dp)
    assert state  # FedAdam's moments, reached through the DP wrapper
    # Each update was clipped to norm 1 before FedAdam saw it: its first moment is tiny.
    assert max(np.abs(v).max() for v in state.values()) < 1.0


def test_float16_updates_are_aggregated_in_float32():
    s, _ = wrapped(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS))
    half = {k: np.full_like(v, 1.0009765625, dtype=np.float16) for k, v in GLOBAL.items()}
    agg, _ = s.aggregate_train(1, [reply(1, half, 10), reply(2, arrays(3.0), 10)])
    out = agg["trunk.w"].numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (1.0009765625 + 3.0) / 2, rtol=1e-6)


def with_evaluation(msg, valid_loss, site):
    """A train reply that also carries the site's evaluation of the model it received."""
    from flwr.app import ConfigRecord

    msg.content[wire.EVAL_METRICS] = ConfigRecord({wire.NUM_TRAIN_LABELS: 5.0, wire.VALID_LOSS: valid_loss})
    msg.content[wire.EVAL_REPORT] = ConfigRecord({wire.REP_SITE: site, wire.REP_TASK_METRICS: "{}",
                                                  wire.REP_SUMMARY: '{"eval_seconds": 0.5}'})
    return msg


def test_evaluate_in_train_asks_for_the_evaluation_and_splits_it_off_the_train_replies(monkeypatch):
    from flwr.app import ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from fedmol.records import to_array_record

    class Grid:
        def get_node_ids(self):
            return [1, 2, 3]

    # Flower's strategies build messages for the ServerApp's own task (as in a real run).
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    s, rec = wrapped(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS),
                     evaluate_in_train=True, total_rounds=3)
    cfg = ConfigRecord({wire.CFG_FEDERATION_ID: "f"})
    first = list(s.configure_train(1, to_array_record(GLOBAL), cfg, Grid()))
    assert wire.CFG_EVALUATE_FIRST not in first[0].content[wire.CONFIG]  # nothing to evaluate before round 1
    assert list(s.configure_evaluate(1, to_array_record(GLOBAL), cfg, Grid())) == []  # folded into round 2
    assert s.aggregate_evaluate(1, []) is None and rec.outcomes == []

    second = list(s.configure_train(2, to_array_record(GLOBAL), cfg, Grid()))
    sent = second[0].content[wire.CONFIG]
    assert sent[wire.CFG_EVALUATE_FIRST] is True and sent[wire.CFG_EVALUATE_ROUND] == 1
    replies = [with_evaluation(reply(n, arrays(float(n)), 10), valid_loss=float(n), site=f"site{n}") for n in (1, 2)]
    agg, _ = s.aggregate_train(2, replies)
    evaluation, training = rec.outcomes[-2:]
    assert (evaluation.phase, evaluation.server_round) == ("evaluate", 1)
    np.testing.assert_array_equal(evaluation.arrays["trunk.w"].numpy(), GLOBAL["trunk.w"])  # what was evaluated
    assert [r.site for r in evaluation.reports] == ["site1", "site2"]
    assert evaluation.metrics[wire.VALID_LOSS] == pytest.approx(1.5)  # weighted by the eval weight (5 and 5)
    assert evaluation.missing == ["node-3"]  # sampled for round 2, never answered
    assert (training.phase, training.server_round) == ("train", 2)
    assert all(wire.EVAL_METRICS not in m.content.config_records for m in replies)
    np.testing.assert_allclose(agg["trunk.w"].numpy(), 1.5)

    # The last round has its own evaluation, a plain one: the final evaluation (CFG_FINAL) is sent
    # after the rounds, with the chosen round's model (tests/server/test_selection.py).
    last = list(s.configure_evaluate(3, to_array_record(GLOBAL), cfg, Grid()))
    assert len(last) == 3 and last[0].content[wire.CONFIG][wire.CFG_FINAL] is False
