"""The deployment engine for real, on loopback: SuperLink with TLS and SuperNode authentication,
one SuperNode (+ warm site worker) per site, a real `mlflow server`, all as separate processes.

One consortium serves every test of this module (start-up costs ~20-40 s); the tests run in order.
Every process is stopped at the end; every wait is bounded.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedmol.deploy.consortium import LocalConsortium
from fedmol.deploy.launcher import LaunchError, LocalSuperNode
from fedmol.deploy.pki import make_site_key
from tests.server.synthetic import write_sites

pytestmark = pytest.mark.slow

TASKS = "c1:classification,c2:classification"


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    paths = write_sites(root / "sites", 3, n=300, n_bits=512)
    cons = LocalConsortium(root / "work", {f"site{i}": p for i, p in enumerate(paths)})
    cons.up()
    try:
        cons.wait_for_nodes(3, timeout=90)
        yield cons
    finally:
        cons.down()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(root) in " ".join(p.info["cmdline"] or []) and p.pid != psutil.Process().pid]


def _cfg(cons: LocalConsortium, **kw):
    base = dict(num_server_rounds=2, n_bits=512, hidden="32", consortium_tasks=TASKS, num_threads=1,
                round_timeout=60.0, model_name="fedmol-deploy", experiment="deploy",
                finetune_epochs=0, local_baseline=False)  # site-side extras: tests/client, test_demo
    return cons.config(**{**base, **kw})


def _outputs(cons: LocalConsortium) -> dict:
    return json.loads((cons.output_dir / "last_federation.json").read_text())


def _client(cons: LocalConsortium):
    from mlflow.tracking import MlflowClient

    return MlflowClient(cons.mlflow.uri)


def test_unregistered_site_is_refused_and_the_run_completes_with_mlflow_server(consortium):
    intruder_key, _ = make_site_key(consortium.workdir / "intruder", "intruder")  # never admitted
    intruder = LocalSuperNode(consortium.link, consortium.stores["site0"], "intruder",
                              private_key=intruder_key, warm=False).start()
    try:
        lines: list[str] = []
        code = consortium.run(_cfg(consortium, run_name="honest"), on_line=lines.append, timeout=600)
        assert code == 0, "\n".join(lines[-30:])
        intruder.proc.wait(timeout=60)
        assert intruder.proc.returncode != 0
        # Flower's exit code for a SuperNode the SuperLink would not activate (failed authentication).
        assert "Exit Code: 305" in intruder.log_path.read_text()
    finally:
        intruder.stop()
    out = _outputs(consortium)
    client = _client(consortium)
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/train-loss")]
    assert steps == [1, 2], sorted(run.data.metrics)
    assert {"site/site0/train/train-loss", "site/site2/evaluate/test-loss"} <= set(run.data.metrics)
    assert run.data.metrics["train/sites-answered"] == 3
    versions = client.search_model_versions("name='fedmol-deploy'")
    assert out["model_uri"] in {f"models:/fedmol-deploy/{v.version}" for v in versions}


def test_a_site_killed_during_a_round_is_recorded_and_the_run_completes(consortium):
    cfg = _cfg(consortium, min_sites=2, round_timeout=25.0, run_name="site-killed")
    victim = consortium.nodes["site2"]

    def kill_in_round_2() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = list((consortium.output_dir / "checkpoints").glob("*/state.json"))
            fresh = [s for s in states if s.stat().st_mtime > started]
            if fresh and json.loads(fresh[0].read_text())["server_round"] >= 1:
                victim.stop(timeout=2)
                return
            time.sleep(0.05)

    started = time.time()
    killer = threading.Thread(target=kill_in_round_2, daemon=True)
    killer.start()
    lines: list[str] = []
    code = consortium.run(cfg, on_line=lines.append, timeout=600)
    killer.join(timeout=5)
    assert code == 0, "\n".join(lines[-30:])
    run = _client(consortium).get_run(_outputs(consortium)["mlflow_run_id"])
    missing = {k: v for k, v in run.data.tags.items() if k.startswith("fedmol.missing.round-2")}
    assert missing and all("site2" in v for v in missing.values()), run.data.tags
    assert run.data.metrics["train/sites-answered"] == 2
    consortium.start_site("site2")  # back for the next tests
    consortium.wait_for_nodes(3, timeout=90)


def test_serverapp_killed_after_round_1_is_resumed_in_the_same_mlflow_run(consortium):
    cfg = _cfg(consortium, run_name="resumed")
    started = time.time()

    def kill_serverapp() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = [s for s in (consortium.output_dir / "checkpoints").glob("*/state.json")
                      if s.stat().st_mtime > started]
            if states and json.loads(states[0].read_text())["server_round"] >= 1:
                for proc in psutil.Process(consortium.link.proc.pid).children(recursive=True):
                    try:
                        if "flwr-serverapp" in " ".join(proc.cmdline()):
                            proc.kill()
                    except psutil.Error:
                        pass
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_serverapp, daemon=True)
    killer.start()
    try:
        consortium.run(cfg, timeout=120)  # ends when the run is marked failed, or by our timeout
    except LaunchError:
        pass
    killer.join(timeout=5)
    latest = (consortium.output_dir / "checkpoints" / "LATEST").read_text().strip()
    state = json.loads((consortium.output_dir / "checkpoints" / latest / "state.json").read_text())
    assert state["server_round"] == 1
    lines: list[str] = []
    code = consortium.run(cfg.replace(resume="latest"), on_line=lines.append, timeout=600)
    assert code == 0, "\n".join(lines[-30:])
    out = _outputs(consortium)
    assert out["mlflow_run_id"] == state["mlflow_run_id"]
    history = _client(consortium).get_metric_history(out["mlflow_run_id"], "train/train-loss")
    assert sorted(m.step for m in history) == [1, 2]


@pytest.mark.parametrize("drill, strategy", [("nan", "fedavg"), ("scale:1000", "fedmedian")])
def test_a_poisoning_site_is_rejected_or_outvoted(consortium, drill, strategy):
    honest_ckpt = _final_arrays(consortium, "honest")
    consortium.start_site("site2", fault_drill=drill)
    try:
        consortium.wait_for_nodes(3, timeout=90)
        code = consortium.run(_cfg(consortium, strategy=strategy, run_name=f"drill-{drill}"), timeout=600)
        assert code == 0
        out = _outputs(consortium)
        run = _client(consortium).get_run(out["mlflow_run_id"])
        if drill == "nan":
            assert "site2" in run.data.tags["fedmol.rejected.round-1"]
            assert "NaN" in run.data.tags["fedmol.rejected.round-1"]
        attacked = _arrays(Path(out["model_dir"]).parent)
        for name, honest in honest_ckpt.items():
            # The global model stays at the honest run's scale (a x1000 update would blow it up).
            assert np.isfinite(attacked[name]).all()
            assert np.abs(attacked[name]).max() < 10 * max(np.abs(honest).max(), 1e-3)
        loss = run.data.metrics["evaluate/test-loss"]
        honest_loss = _client(consortium).get_run(_run_id(consortium, "honest")).data.metrics["evaluate/test-loss"]
        assert loss < honest_loss * 1.5
    finally:
        consortium.start_site("site2")
        consortium.wait_for_nodes(3, timeout=90)


def _run_id(cons: LocalConsortium, name: str) -> str:
    client = _client(cons)
    exp = client.get_experiment_by_name("deploy")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'")
    return runs[0].info.run_id


def _final_arrays(cons: LocalConsortium, name: str) -> dict[str, np.ndarray]:
    run = _client(cons).get_run(_run_id(cons, name))
    fed = run.data.tags["fedmol.federation-id"]
    return _arrays(cons.output_dir / "federations" / fed)


def _arrays(federation_dir: Path) -> dict[str, np.ndarray]:
    fed = federation_dir.name
    with np.load(federation_dir.parent.parent / "checkpoints" / fed / "global.npz") as g:
        return {k: g[k] for k in g.files}
