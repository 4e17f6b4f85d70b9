"""`fedmol consortium status`: per-site rows, the run's link, rejected updates and the time left, read
from an MLflow run that the server's own tracker (`fedmol.server.tracking.MlflowTracker`) wrote; and
`--watch`, which stops when the run ends or on Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from fedmol import wire
from fedmol.cli import main
from fedmol.config import FederationConfig
from fedmol.deploy import status as view
from fedmol.records import metric_record, to_array_record
from fedmol.server.rounds import RoundOutcome, SiteReport

ROUND_WALLS = [10.0, 12.0, 11.0]  # median 11 s; 7 of 10 rounds left: 77 s


@pytest.fixture(autouse=True)
def _quiet_and_wide(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("COLUMNS", "80")  # the table fits 80 columns


def _train(site: str, loss: float) -> SiteReport:
    return SiteReport(node_id=0, site=site, metrics={wire.TRAIN_LOSS: loss, wire.NUM_TRAIN_LABELS: 50.0},
                      summary={"train_seconds": 1.5, "n_train_compounds": 40})


def _evaluate(site: str, score: float) -> SiteReport:
    return SiteReport(node_id=0, site=site, metrics={wire.VALID_LOSS: 1.0 - score, wire.TEST_LOSS: 0.5},
                      summary={"valid_score": score, "valid_n_labels": 30, "valid_roc_auc": score,
                               "test_score": score - 0.1})


def logged_federation(output_dir: Path, monkeypatch, *, rounds: int = 3, uri: str = "", **changes) -> object:
    """A federation's MLflow run as the server logs it: 10 rounds at most, patience 3, ``rounds`` done by
    sites a and b (b's update rejected in round 2; c sampled in round 3's evaluation, never answered)."""
    import fedmol.server.tracking as tracking

    clock = {"now": 1000.0}  # round-wall-seconds: the tracker's monotonic clock, moved by hand
    monkeypatch.setattr(tracking, "time", types.SimpleNamespace(monotonic=lambda: clock["now"], time=time.time))
    cfg = FederationConfig(output_dir=str(output_dir), tracking_uri=uri, num_server_rounds=10, patience=3,
                           experiment="status", **changes)
    tracker = tracking.MlflowTracker(cfg, run_name="federation-f1")
    tracker.set_tag("fedmol.federation-id", "f1")
    arrays = to_array_record({"w": np.zeros(2, np.float32)})
    for rnd in range(1, rounds + 1):
        clock["now"] += ROUND_WALLS[(rnd - 1) % len(ROUND_WALLS)]
        rejected = [("b", "array 'w' holds NaN or infinite values")] if rnd == 2 else []
        reports = [_train("a", 0.5 / rnd)] + ([] if rnd == 2 else [_train("b", 0.6 / rnd)])
        tracker.on_round(RoundOutcome(rnd, "train", reports, rejected, [], metric_record({wire.TRAIN_LOSS: 0.5}),
                                      arrays), None)
        missing = ["c"] if rnd == 3 else []
        tracker.on_round(RoundOutcome(rnd, "evaluate", [_evaluate("a", 0.7 + rnd / 100), _evaluate("b", 0.6)], [],
                                      missing, metric_record({wire.VALID_LOSS: 0.3}), arrays), None)
    return tracker


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, str, str]:
    """One logged federation (mlflow.db, run id, experiment id), copied by each test (a new store costs seconds)."""
    folder = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        tracker = logged_federation(folder, mp)
    return folder / "mlflow.db", tracker.run_id, tracker.experiment_id


def federation_in(ops: Path, template: tuple[Path, str, str]) -> types.SimpleNamespace:
    """The template's run in ``ops``'s own store (the consortium's default: sqlite in its output folder)."""
    from mlflow.tracking import MlflowClient

    db, run_id, experiment_id = template
    (ops / "server").mkdir(parents=True)
    shutil.copy(db, ops / "server" / "mlflow.db")
    uri = f"sqlite:///{ops / 'server' / 'mlflow.db'}"
    return types.SimpleNamespace(uri=uri, run_id=run_id, experiment_id=experiment_id, client=MlflowClient(uri))


def _consortium(workdir: Path, *, mlflow: str | None = None) -> Path:
    workdir.mkdir(parents=True)
    (workdir / "consortium.json").write_text(json.dumps({
        "superlink": "127.0.0.1:1", "tls": False, "auth": False, "mlflow": mlflow, "sites": {},
        "output_dir": str(workdir / "server")}))
    return workdir


def _row(out: str, site: str) -> list[str]:
    """The cells of a site's row (no cell of these holds a space but "heard": "12s ago")."""
    return next(line.split() for line in out.splitlines() if line.startswith(f"{site} "))


def test_status_shows_each_site_its_rejected_updates_the_link_and_the_eta(tmp_path, monkeypatch, capsys, template):
    ops = _consortium(tmp_path / "ops")
    tracker = federation_in(ops, template)
    monkeypatch.chdir(tmp_path)
    assert main(["consortium", "status", "ops"]) == 0
    out = capsys.readouterr().out
    assert "federation f1" in out and "RUNNING" in out
    # site, round, valid, ROC-AUC, loss, rejected, missed, heard (no R²: no regression task; no final:
    # the rounds are not over)
    assert _row(out, "site") == ["site", "round", "valid", "ROC-AUC", "loss", "rejected", "missed", "heard"]
    a, b, c = _row(out, "a"), _row(out, "b"), _row(out, "c")
    assert a[:7] == ["a", "3", "0.7300", "0.7300", "0.2700", "0", "0"]
    assert b[:7] == ["b", "3", "0.6000", "0.6000", "0.4000", "1", "0"]
    assert c == ["c", "-", "-", "-", "-", "0", "1", "never"]
    assert a[7].endswith("s") and a[8] == "ago"
    # Lines longer than 80 columns are folded or wrapped: compare them without whitespace.
    flat = "".join(out.split())
    for line in [
        "federated validation score 0.6650 (latest); best 0.6650 at round 3",  # (0.73 x 30 + 0.6 x 30) / 60
        "rejected updates: 1", "round 2: b: array 'w' holds NaN or infinite values",
        "round 3 of at most 10 · 11.0 s per round (median of 3; last 11.0 s)",
        "about 1 min 17 s left for 7 more rounds", "patience 3 may stop it sooner",
        f"run: http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}",
        f"serve the UI with: mlflow ui --backend-store-uri sqlite:///{ops / 'server' / 'mlflow.db'}",
    ]:
        assert "".join(line.split()) in flat, line


def test_a_finished_run_shows_no_time_left_and_what_was_kept(tmp_path, monkeypatch, capsys, template):
    ops = _consortium(tmp_path / "ops")
    tracker = federation_in(ops, template)
    tracker.client.set_tag(tracker.run_id, "fedmol.stop-reason",
                           "best federated validation score 0.6650 at round 3; ran all 3 rounds")
    tracker.client.set_terminated(tracker.run_id, "FINISHED")
    assert main(["consortium", "status", str(ops)]) == 0
    out = capsys.readouterr().out
    flat = "".join(out.split())
    assert "FINISHED" in out and "leftfor" not in flat
    assert "kept:bestfederatedvalidationscore0.6650atround3" in flat


def test_the_link_of_a_tracking_server_is_its_ui_page():
    assert view.run_link("http://10.0.0.5:5000/", "3", "abc") == "http://10.0.0.5:5000/#/experiments/3/runs/abc"
    assert view.ui_hint("http://10.0.0.5:5000") == ""
    assert view.rejected_sites("a: bad; shape; b-2: x: y; aggregate: NaN") == ["a", "b-2", "aggregate"]


def test_status_without_a_tracking_store_says_so_and_creates_none(tmp_path, monkeypatch):
    ops = _consortium(tmp_path / "ops")
    assert main(["consortium", "status", str(ops)]) == 2
    assert not (ops / "server" / "mlflow.db").exists()


def test_watch_refreshes_until_the_run_ends(tmp_path, monkeypatch, capsys, template):
    ops = _consortium(tmp_path / "ops")
    tracker = federation_in(ops, template)
    reads, done = [], threading.Event()
    real_read = view.read_status
    monkeypatch.setattr(view, "read_status", lambda *a: reads.append(1) or real_read(*a))

    def end_the_run() -> None:
        while len(reads) < 2 and not done.wait(0.05):  # watched twice while RUNNING
            pass
        tracker.client.set_terminated(tracker.run_id, "FINISHED")
        if not done.wait(30):  # watch should stop by itself; if not, stop it (the test then fails below)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=end_the_run, daemon=True).start()
    try:
        assert main(["consortium", "status", str(ops), "--watch", "--interval", "0.2"]) == 0
    finally:
        done.set()
    out = capsys.readouterr().out
    assert "the run is FINISHED: stopped watching." in out and len(reads) >= 3


def test_watch_stops_on_ctrl_c_with_exit_status_0(tmp_path, monkeypatch, capsys, template):
    ops = _consortium(tmp_path / "ops")
    federation_in(ops, template)  # stays RUNNING
    watching = threading.Event()
    real_read = view.read_status
    monkeypatch.setattr(view, "read_status", lambda *a: watching.set() or real_read(*a))

    def ctrl_c() -> None:
        if watching.wait(30):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    started = time.monotonic()
    assert main(["consortium", "status", str(ops), "--watch", "--interval", "0.2"]) == 0
    assert "stopped watching; the federation goes on." in capsys.readouterr().out
    assert time.monotonic() - started < 30


def test_watch_keeps_the_last_view_when_a_read_fails_and_stops_after_max_updates(tmp_path, monkeypatch, template):
    from rich.console import Console

    tracker = federation_in(tmp_path, template)
    client = view.client_for(tracker.uri)
    calls = []

    def read() -> view.FederationStatus:
        calls.append(1)
        if len(calls) >= 3:  # the server goes away after the second read
            raise ConnectionError("tracking server away")
        return view.read_status(client, tracker.run_id)

    console = Console(record=True, width=200)
    st = view.watch(read, interval=0.0, console=console, max_updates=4, sleep=lambda s: None)
    assert len(calls) == 4 and st.running
    assert "could not read the run (tracking server away)" in console.export_text()


@pytest.mark.slow
def test_status_reads_a_tracking_server_and_links_its_ui(tmp_path, monkeypatch, capsys):
    from fedmol.deploy.launcher import LocalMlflowServer

    server = LocalMlflowServer(tmp_path / "mlflow").start()
    try:
        ops = _consortium(tmp_path / "ops", mlflow=server.uri)
        tracker = logged_federation(ops / "server", monkeypatch, uri=server.uri)
        assert main(["consortium", "status", str(ops)]) == 0
        out = capsys.readouterr().out
        assert _row(out, "b")[:7] == ["b", "3", "0.6000", "0.6000", "0.4000", "1", "0"]
        flat = "".join(out.split())
        assert f"run:{server.uri}/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}" in flat
        assert "mlflowui" not in flat and "about1min17sleft" in flat
    finally:
        server.stop()


def test_under_site_dp_the_most_rounds_are_dp_num_server_rounds(tmp_path, monkeypatch):
    """dp="site-dp-sgd" runs at most dp-num-server-rounds (the sites' noise plan), not num-server-rounds:
    the status's rounds left and time left count those."""
    tracker = logged_federation(tmp_path, monkeypatch, dp="site-dp-sgd", dp_epsilon=8.0, dp_num_server_rounds=6)
    st = view.read_status(tracker.client, tracker.run_id)
    assert st.max_rounds == 6 and st.last_round == 3
    plain = logged_federation(tmp_path / "plain", monkeypatch)
    assert view.read_status(plain.client, plain.run_id).max_rounds == 10
    plain.client.delete_tag(plain.run_id, view.MAX_ROUNDS_TAG)  # a run of an older fedmol: num-server-rounds
    assert view.read_status(plain.client, plain.run_id).max_rounds == 10
    tracker.client.delete_tag(tracker.run_id, view.MAX_ROUNDS_TAG)
    assert view.read_status(tracker.client, tracker.run_id).max_rounds == 10
