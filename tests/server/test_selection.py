"""Best-round selection and early stopping: the score, the rule, and the round loops that act on it.

The loop tests run the production code (`fedmol.server.federation._run_rounds`, Flower's own
`Strategy.start`, `fedmol.server.secagg.run_secure_rounds`) against scripted sites whose validation
score is a function of the model they receive: the global model after round r is an array full of
r, and SCORES[r] is its score. So each assertion says which model was evaluated, not only when.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.records import from_array_record, join_metrics, to_array_record
from fedmol.server import federation
from fedmol.server.rounds import HookedStrategy, RoundOutcome, SiteReport
from fedmol.server.selection import BestRound, federated_valid_score, site_weight
from tests.server.messages import reply

GLOBAL = {"trunk.w": np.zeros((3, 2), np.float32), "heads.consortium_classification.b": np.zeros(2, np.float32)}
NODES = (1, 2)


def site(name: str, score: Any, labels: Any = None, eval_labels: float | None = None) -> SiteReport:
    summary = {"valid_score": score}
    if labels is not None:
        summary["valid_n_labels"] = labels
    metrics = {} if eval_labels is None else {wire.NUM_EVAL_LABELS: eval_labels}
    return SiteReport(node_id=0, site=name, metrics=metrics, summary=summary)


# -- the federated validation score ----------------------------------------------------------------
def test_score_is_weighted_by_validation_labels_and_skips_sites_without_one():
    fed = federated_valid_score([site("a", 0.8, 30), site("b", float("nan"), 1000), site("c", None, 500),
                                 site("d", 0.5, 10), site("e", "0.9", 10)])
    assert fed.score == pytest.approx((0.8 * 30 + 0.5 * 10) / 40)
    assert (fed.labels, fed.sites) == (40, ("a", "d"))
    assert federated_valid_score([site("b", float("nan"), 10)]).score is None
    assert federated_valid_score([]).score is None


def test_weight_falls_back_to_evaluation_labels_then_to_one():
    assert site_weight(site("a", 0.7, 12)) == 12
    assert site_weight(site("a", 0.7, None, eval_labels=40)) == 40  # valid + test labels (older sites)
    assert site_weight(site("a", 0.7, 0, eval_labels=0)) == 1.0
    fed = federated_valid_score([site("a", 0.6, None), site("b", 0.8, None)])
    assert fed.score == pytest.approx(0.7)


# -- the rule -------------------------------------------------------------------------------------
def model(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in GLOBAL.items()}


def test_best_round_keeps_a_copy_of_the_best_model_and_ties_go_to_the_earlier_round():
    sel = BestRound()
    arrays = model(1.0)
    assert sel.observe(1, 0.7, arrays)
    arrays["trunk.w"][:] = 99.0  # the caller's arrays change: the kept copy does not
    assert not sel.observe(2, 0.7, model(2.0))  # a tie: round 1 stays
    assert not sel.observe(3, 0.6, model(3.0))
    assert sel.chosen(3, model(3.0))[0] == 1
    np.testing.assert_array_equal(sel.chosen(3, model(3.0))[1]["trunk.w"], 1.0)
    assert sel.observe(4, 0.71, model(4.0)) and sel.best_round == 4


def test_patience_0_never_stops_and_patience_k_stops_after_k_rounds_without_improvement():
    scores = [0.6, 0.8, 0.7, 0.75, 0.79, 0.9]
    never, two = BestRound(0), BestRound(2)
    stops = []
    for r, s in enumerate(scores, start=1):
        never.observe(r, s, model(r))
        two.observe(r, s, model(r))
        assert not never.should_stop
        stops.append(two.should_stop)
    assert stops == [False, False, False, True, True, False]  # rounds 3 and 4 no better than round 2
    assert never.best_round == 6


def test_unscored_rounds_are_no_improvement_and_no_score_at_all_keeps_the_last_model():
    sel = BestRound(2)
    sel.observe(1, None, model(1))
    sel.observe(2, float("nan"), model(2))
    assert not sel.should_stop and sel.best_round is None  # nothing to judge by
    last = model(7.0)
    assert sel.chosen(2, last) == (2, last)
    assert "no site reported a validation score" in sel.reason(2)
    sel.observe(3, 0.5, model(3))
    sel.observe(4, None, model(4))
    sel.observe(5, None, model(5))
    assert sel.should_stop and sel.rounds_without_improvement == 2


def test_reason_says_which_round_and_why():
    sel = BestRound(3)
    for r, s in enumerate([0.70, 0.7712, 0.75, 0.76, 0.74], start=1):
        sel.observe(r, s, model(r))
    assert sel.reason(20) == "best federated validation score 0.7712 at round 2; ran all 20 rounds"
    sel.stop()
    assert sel.reason(20) == ("best federated validation score 0.7712 at round 2; stopped at round 5 after 3 "
                              "rounds without improvement (patience 3)")
    assert "round 6's training, which carried that evaluation, was discarded" in sel.reason(20, discarded_round=6)


def test_state_round_trip():
    sel = BestRound(2)
    for r, s in enumerate([0.6, None, 0.8, 0.7], start=1):
        sel.observe(r, s, model(r))
    sel.stop()
    state = json.loads(json.dumps(sel.state()))
    again = BestRound(2)
    again.restore(state, sel.best_arrays)
    assert (again.scores, again.best_round, again.best_score, again.stopped_at) == ({1: 0.6, 2: None, 3: 0.8, 4: 0.7},
                                                                                  3, 0.8, 4)
    lost = BestRound(2)
    lost.restore(state, None)  # the best model's file is gone: no best round without its model
    assert lost.best_round is None and lost.scores == again.scores


def test_the_final_evaluation_is_never_a_candidate():
    sel = BestRound()
    sel.on_round(RoundOutcome(1, "evaluate", [site("a", 0.6, 10)], [], [], None, to_array_record(model(1))), None)
    sel.on_round(RoundOutcome(1, "evaluate", [site("a", 0.9, 10)], [], [], None, to_array_record(model(1)),
                              final=True), None)
    sel.on_round(RoundOutcome(2, "train", [site("a", 0.95, 10)], [], [], None, to_array_record(model(2))), None)
    assert sel.scores == {1: 0.6} and sel.best_score == 0.6


# -- the Message-API loop: Flower's Strategy.start, stopped by an exception -------------------------
def value_of(arrays: dict[str, np.ndarray] | list[np.ndarray]) -> int:
    first = next(iter(arrays.values())) if isinstance(arrays, dict) else arrays[0]
    return int(round(float(np.asarray(first).flat[0])))


def summary_for(scores: dict[int, float], received: int) -> dict[str, Any]:
    return {"valid_score": scores.get(received, math.nan), "valid_n_labels": 10}


class ScriptedGrid:
    """Sites that train to the round number and score a model by SCORES[its value]."""

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores
        self.sent: list[tuple[str, int, bool, int]] = []  # (type, server-round, final, model value)

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            config = msg.content[wire.CONFIG]
            received = value_of(from_array_record(msg.content[wire.ARRAYS]))
            rnd = int(config["server-round"])
            self.sent.append((msg.metadata.message_type, rnd, bool(config.get(wire.CFG_FINAL, False)), received))
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type == "train":
                answer = reply(node, model(float(rnd)), 10)
                if config.get(wire.CFG_EVALUATE_FIRST):
                    answer.content[wire.EVAL_METRICS] = ConfigRecord({wire.NUM_TRAIN_LABELS: 10.0,
                                                                      wire.NUM_EVAL_LABELS: 20.0})
                    answer.content[wire.EVAL_REPORT] = ConfigRecord({
                        wire.REP_SITE: f"site{node}", wire.REP_TASK_METRICS: "{}",
                        wire.REP_SUMMARY: json.dumps(summary_for(self.scores, received))})
            else:
                answer = reply(node, None, 10, summary=summary_for(self.scores, received))
            out.append(answer)
        return out

    def of(self, kind: str, *, final: bool | None = None) -> list[tuple[int, int]]:
        """(server-round, model value) of the messages of one kind, one per round (all sites agree)."""
        return sorted({(r, v) for t, r, f, v in self.sent if t == kind and (final is None or f == final)})


@pytest.fixture
def task_identity(monkeypatch):
    # Flower's strategies build messages for the ServerApp's own task (as in a real run).
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class Recorder:
    def __init__(self):
        self.outcomes: list[RoundOutcome] = []

    def on_round(self, outcome, strategy):
        self.outcomes.append(outcome)


def run_rounds(scores: dict[int, float], *, rounds: int, patience: int, evaluate_in_train: bool):
    """The production round loop of `run_federation` (no secure aggregation) on scripted sites."""
    cfg = FederationConfig(num_server_rounds=rounds, patience=patience, evaluate_in_train=evaluate_in_train,
                           min_sites=len(NODES))
    grid = ScriptedGrid(scores)
    selection, rec = BestRound(patience), Recorder()
    hooks = [selection, rec]
    inner = FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS, configrecord_key=wire.CONFIG,
                   min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    hooked = HookedStrategy(inner, hooks, total_rounds=rounds, evaluate_in_train=evaluate_in_train,
                            should_stop=lambda: selection.should_stop)
    hooked.last_arrays = to_array_record(GLOBAL)
    strategy, discarded = federation._run_rounds(grid, None, cfg, hooked, selection, hooks, dict(GLOBAL),
                                                 start_round=0, federation_id="f", reference="",
                                                 tracker=None)
    return grid, selection, rec, strategy, discarded


SCORES = {1: 0.6, 2: 0.8, 3: 0.7, 4: 0.75, 5: 0.9, 6: 0.95}


@pytest.mark.parametrize("evaluate_in_train", [True, False])
def test_patience_0_runs_every_round_and_the_final_evaluation_gets_the_best_model(task_identity, evaluate_in_train):
    grid, selection, rec, strategy, discarded = run_rounds({**SCORES, 4: 0.5}, rounds=4, patience=0,
                                                           evaluate_in_train=evaluate_in_train)
    # Every round trained, each on the previous round's aggregate.
    assert grid.of("train") == [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert selection.scores == {1: 0.6, 2: 0.8, 3: 0.7, 4: 0.5} and selection.best_round == 2
    assert (strategy.last_round, discarded, selection.stopped_at) == (4, None, None)
    # Round 4's model was evaluated once, plainly; then the final evaluation, once, of round 2's model.
    plain = [(4, 4)] if evaluate_in_train else [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert grid.of("evaluate", final=False) == plain
    assert grid.of("evaluate", final=True) == [(2, 2)]
    finals = [o for o in rec.outcomes if o.final]
    assert len(finals) == 1 and finals[0].server_round == 2
    assert federated_valid_score(finals[0].reports).score == pytest.approx(0.8)  # the sites scored round 2's model
    assert value_of({k: v.numpy() for k, v in finals[0].arrays.items()}) == 2
    assert "ran all 4 rounds" in selection.reason(4)


def test_patience_stops_flowers_loop_and_discards_the_round_that_carried_the_evaluation(task_identity):
    """Also the contract with Flower 1.41's `Strategy.start`: an exception raised by the strategy
    (`FederationStopped`) ends its round loop at once and reaches the caller unchanged. If a later
    Flower catches it, round 6 gets trained here and this test fails."""
    grid, selection, rec, strategy, discarded = run_rounds(SCORES, rounds=6, patience=2, evaluate_in_train=True)
    # Round 4's evaluation came with round 5's training replies: 2 rounds without improvement.
    assert grid.of("train") == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
    assert selection.stopped_at == 4 and discarded == 5
    assert strategy.last_round == 4  # round 5's updates were never aggregated
    assert not [o for o in rec.outcomes if o.phase == "train" and o.server_round == 5]
    assert grid.of("evaluate", final=False) == []
    assert grid.of("evaluate", final=True) == [(2, 2)]
    assert selection.reason(6, discarded_round=discarded) == (
        "best federated validation score 0.8000 at round 2; stopped at round 4 after 2 rounds without "
        "improvement (patience 2); round 5's training, which carried that evaluation, was discarded")


def test_patience_without_evaluate_in_train_stops_after_the_rounds_own_evaluation(task_identity):
    grid, selection, _, strategy, discarded = run_rounds(SCORES, rounds=6, patience=2, evaluate_in_train=False)
    assert grid.of("train") == [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert grid.of("evaluate", final=False) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert grid.of("evaluate", final=True) == [(2, 2)]
    assert (strategy.last_round, discarded, selection.stopped_at) == (4, None, 4)


def test_a_resumed_federation_evaluates_its_unevaluated_last_round_before_the_final(task_identity):
    cfg = FederationConfig(num_server_rounds=3, patience=0, min_sites=2)
    grid, selection, rec = ScriptedGrid({1: 0.6, 2: 0.7, 3: 0.65}), BestRound(0), Recorder()
    selection.observe(1, 0.6, model(1))  # the checkpoint of round 3 knew rounds 1 and 2
    selection.observe(2, 0.7, model(2))
    inner = FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS, configrecord_key=wire.CONFIG,
                   min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    hooked = HookedStrategy(inner, [selection, rec], round_offset=3, total_rounds=3, evaluate_in_train=True,
                            should_stop=lambda: selection.should_stop)
    hooked.last_arrays = to_array_record(model(3))
    federation._run_rounds(grid, None, cfg, hooked, selection, [selection, rec], model(3), start_round=3,
                           federation_id="f", reference="", tracker=None)
    assert grid.of("train") == []
    assert grid.of("evaluate", final=False) == [(3, 3)]
    assert grid.of("evaluate", final=True) == [(2, 2)]
    assert selection.scores[3] == 0.65


# -- the secure-aggregation loop (Flower's legacy DefaultWorkflow, wrapped) ----------------------------
class Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class ClientManager:
    def num_available(self) -> int:
        return len(NODES)

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion=None) -> list[Proxy]:
        return [Proxy(n) for n in NODES]


def legacy_report(node: int, summary: dict[str, Any]) -> dict[str, Any]:
    return {wire.REP_SITE: f"site{node}", wire.REP_REFERENCE_HASH: "ref", wire.REP_TASK_METRICS: "{}",
            wire.REP_SUMMARY: json.dumps(summary)}


def test_secure_rounds_select_the_best_round_and_stop_early(monkeypatch):
    """`run_secure_rounds` with Flower's legacy loop played by a stand-in that calls the workflows
    it was given once per round, as `DefaultWorkflow.__call__` does (SecAgg+ replaced by a plain sum)."""
    from fedmol.server import secagg

    ok = Status(code=Code.OK, message="")
    sent: list[tuple[int, bool, int]] = []  # evaluate messages: (server-round, final, model value)
    trained: list[int] = []

    def fit(grid, ctx):
        rnd = ctx.state_round
        trained.append(rnd)
        update = ndarrays_to_parameters([np.full_like(GLOBAL[k], rnd) for k in ctx.strategy.names])
        results = [(Proxy(n), FitRes(ok, update, 10, join_metrics({wire.NUM_TRAIN_LABELS: 10.0},
                                                                     legacy_report(n, {}))))
                   for n in NODES]
        ctx.params, _ = ctx.strategy.aggregate_fit(rnd, results, [])

    def evaluate(grid, ctx):
        rnd = ctx.state_round
        results = []
        for proxy, ins in ctx.strategy.configure_evaluate(rnd, ctx.params, ClientManager()):
            received = value_of(parameters_to_ndarrays(ins.parameters))
            sent.append((int(ins.config[wire.CFG_ROUND]), bool(ins.config[wire.CFG_FINAL]), received))
            metrics = join_metrics({wire.NUM_EVAL_LABELS: 20.0, wire.VALID_LOSS: 1.0},
                                   legacy_report(proxy.node_id, summary_for(SCORES, received)))
            results.append((proxy, EvaluateRes(ok, 1.0, 20, metrics)))
        ctx.strategy.aggregate_evaluate(rnd, results, [])

    class StandIn:
        def __init__(self, fit_workflow=None, evaluate_workflow=None):
            self.fit_workflow, self.evaluate_workflow = fit, evaluate

        def __call__(self, grid, ctx):
            ctx.params = None
            for rnd in range(1, ctx.config.num_rounds + 1):
                ctx.state_round = rnd
                self.fit_workflow(grid, ctx)
                self.evaluate_workflow(grid, ctx)

    monkeypatch.setattr(secagg, "DefaultWorkflow", StandIn)
    cfg = FederationConfig(num_server_rounds=6, patience=2, secure_aggregation=True, min_sites=2)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    selection, rec = BestRound(2), Recorder()
    strategy = secagg.run_secure_rounds(None, context, cfg, dict(GLOBAL), [selection, rec], federation_id="f",
                                        round_offset=0, expected_fingerprint="", selection=selection)
    assert trained == [1, 2, 3, 4]  # the legacy loop went on to round 6, doing nothing after the stop
    assert [(r, f, v) for r, f, v in sent if not f] == [(r, False, r) for r in (1, 2, 3, 4) for _ in NODES]
    assert [(r, v) for r, f, v in sent if f] == [(2, 2)] * len(NODES)  # the final: round 2's model, once
    assert selection.stopped_at == 4 and selection.best_round == 2 and strategy.last_round == 4
    finals = [o for o in rec.outcomes if o.final]
    assert [o.server_round for o in finals] == [2]
    assert federated_valid_score(finals[0].reports).score == pytest.approx(0.8)


def test_a_resumed_secure_fednesterov_federation_keeps_its_outer_momentum(monkeypatch):
    """The checkpoint's ``m_t`` reaches `SecureFedAvg` on resume (it ran from zero momentum before):
    one round from a global model of 0 whose secure mean is 2, with a checkpointed momentum of 1."""
    from fedmol.server import secagg
    from fedmol.server.strategies import strategy_state

    ok = Status(code=Code.OK, message="")

    def fit(grid, ctx):
        update = ndarrays_to_parameters([np.full_like(GLOBAL[k], 2.0) for k in ctx.strategy.names])
        results = [(Proxy(1), FitRes(ok, update, 10, join_metrics({wire.NUM_TRAIN_LABELS: 10.0},
                                                                   legacy_report(1, {}))))]
        ctx.params, _ = ctx.strategy.aggregate_fit(ctx.state_round, results, [])

    class StandIn:  # one round (round 4), then the final evaluation's call, which sees no site here
        def __init__(self, fit_workflow=None, evaluate_workflow=None):
            self.fit_workflow, self.evaluate_workflow = fit, (lambda grid, ctx: None)

        def __call__(self, grid, ctx):
            ctx.params, ctx.state_round = None, 4
            self.fit_workflow(grid, ctx)
            self.evaluate_workflow(grid, ctx)

    monkeypatch.setattr(secagg, "DefaultWorkflow", StandIn)
    cfg = FederationConfig(num_server_rounds=4, patience=0, secure_aggregation=True, min_sites=1,
                           strategy="fednesterov", outer_lr=0.7, outer_momentum=0.9)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    resumed = {f"m_t/{k}": np.ones_like(v) for k, v in GLOBAL.items()}
    strategy = secagg.run_secure_rounds(None, context, cfg, dict(GLOBAL), [], federation_id="f", round_offset=3,
                                        expected_fingerprint="", resumed_state=resumed)
    # d = 0 - 2; m = 0.9 * 1 + d = -1.1; new = 0 - 0.7 * (d + 0.9 * m) = 2.093 (from zero momentum: 2.66)
    for name, arr in strategy_state(strategy).items():
        np.testing.assert_allclose(arr, -1.1, rtol=1e-6, err_msg=name)
    for name in GLOBAL:
        np.testing.assert_allclose(strategy.last_arrays[name].numpy(), 2.093, rtol=1e-5, err_msg=name)
