"""What the MLflow tracker logs of best-round selection: the score per round, the final evaluation
apart, and which round was kept and why."""

from __future__ import annotations

import numpy as np
import pytest

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.records import metric_record, to_array_record
from fedmol.server.rounds import RoundOutcome, SiteReport
from fedmol.server.selection import BestRound


def report(site: str, score: float, labels: float) -> SiteReport:
    return SiteReport(node_id=0, site=site, metrics={wire.VALID_LOSS: 1.0 - score},
                      summary={"valid_score": score, "valid_n_labels": labels, "test_score": score - 0.1})


def test_tracker_logs_the_federated_score_per_round_the_final_apart_and_the_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from fedmol.server.tracking import MlflowTracker

    cfg = FederationConfig(output_dir=str(tmp_path), experiment="selection")
    tracker = MlflowTracker(cfg, run_name="t")
    selection = BestRound(1)
    arrays = to_array_record({"w": np.zeros(2, np.float32)})
    for rnd, (a, b) in enumerate([(0.7, 0.5), (0.9, 0.6), (0.6, 0.6)], start=1):
        outcome = RoundOutcome(rnd, "evaluate", [report("a", a, 30), report("b", b, 10)], [], [],
                               metric_record({wire.VALID_LOSS: 0.5}), arrays)
        selection.on_round(outcome, None)
        tracker.on_round(outcome, None)
    selection.stop()
    final = RoundOutcome(2, "evaluate", [report("a", 0.95, 30), report("b", 0.65, 10)], [], [],
                         metric_record({wire.VALID_LOSS: 0.25}), arrays, final=True)
    tracker.on_round(final, None)
    tracker.log_selection(selection, rounds_run=3, reason=selection.reason(5))
    client, run_id = tracker.client, tracker.run_id
    history = {m.step: m.value for m in client.get_metric_history(run_id, "federated-valid-score")}
    assert history == pytest.approx({1: (0.7 * 30 + 0.5 * 10) / 40, 2: (0.9 * 30 + 0.6 * 10) / 40, 3: 0.6})
    # The final evaluation does not extend the rounds' history: it has keys of its own.
    assert [m.step for m in client.get_metric_history(run_id, "evaluate/valid-loss")] == [1, 2, 3]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "final/valid-loss")] == [(2, 0.25)]
    assert [m.step for m in client.get_metric_history(run_id, "consortium/final/valid_score")] == [2]
    assert [m.step for m in client.get_metric_history(run_id, "site/a/final/valid_score")] == [2]
    assert [m.step for m in client.get_metric_history(run_id, "site/a/valid_score")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "final/federated-valid-score")] == [2]
    tags = client.get_run(run_id).data.tags
    assert tags["fedmol.best-round"] == "2" and tags["fedmol.rounds-run"] == "3"
    assert float(tags["fedmol.best-valid-score"]) == pytest.approx(0.825)
    assert tags["fedmol.stop-reason"] == ("best federated validation score 0.8250 at round 2; stopped at round 3 "
                                          "after 1 rounds without improvement (patience 1)")
    assert tags["fedmol.last-round"] == "3"  # the final evaluation (of round 2's model) does not move it


def test_tracker_tags_a_round_whose_updates_were_not_aggregated(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from fedmol.server.tracking import MlflowTracker

    tracker = MlflowTracker(FederationConfig(output_dir=str(tmp_path), experiment="skipped"), run_name="t")
    why = "2 update(s) accepted, and this strategy needs 3 to outvote a poisoning site"
    tracker.on_round(RoundOutcome(1, "train", [report("a", 0.7, 30), report("b", 0.5, 10)], [], ["c"],
                                  None, None, skipped=why), None)
    tracker.on_round(RoundOutcome(2, "train", [report("a", 0.7, 30)], [], [], None, None), None)
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert tags["fedmol.skipped.round-1"] == why and "fedmol.skipped.round-2" not in tags
    assert tags["fedmol.missing.round-1.train"] == "c"
