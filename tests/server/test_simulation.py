"""A real 3-site federation in Flower's simulation engine on a small Tox21 subset.

One federation is started, its simulation process is killed after round 1 (the ServerApp dies
with it), and a new Flower run resumes it from the checkpoint. Then everything the issue asks is
checked on what the sites and the server left on disk and in MLflow.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from fedmol.config import FederationConfig
from fedmol.deploy import launcher
from fedmol.deploy.launcher import LocalSuperLink, flwr_run

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CONSORTIUM = ["NR-AhR", "SR-p53"]
PRIVATE = ["SR-ARE", "SR-MMP", "SR-ARE"]  # per site; one name at two sites is two private assays
N_SITES, ROWS_PER_SITE, N_BITS = 3, 450, 2048


def _kill_after_round_1(link: LocalSuperLink, server_dir: Path, timeout: float = 600) -> None:
    """Kill the simulation (ServerApp and ClientApps) as soon as round 1's checkpoint exists,
    and the `flwr run` that streams it; the SuperLink and its SuperExec live on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = list((server_dir / "checkpoints").glob("*/state.json"))
        if states and json.loads(states[0].read_text())["server_round"] >= 1:
            break
        time.sleep(0.02)
    for proc in psutil.Process(link.proc.pid).children(recursive=True):
        if "flwr-simulation" in " ".join(_cmdline(proc)):
            for victim in [*proc.children(recursive=True), proc]:
                victim.kill()
    for proc in psutil.Process().children(recursive=True):
        if " run " in " ".join(_cmdline(proc)) and "flwr" in " ".join(_cmdline(proc)):
            proc.kill()


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # zombies and processes that just ended
        return []


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.keys import generate_key_file, load_key
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec

    root = tmp_path_factory.mktemp("fed")
    key_path = generate_key_file(root / "consortium.key")
    key = load_key(key_path)
    df = pd.read_csv(DATA / "tox21.csv.gz").head(N_SITES * ROWS_PER_SITE)
    smiles_by_site = {}
    for i in range(N_SITES):
        part = df.iloc[i * ROWS_PER_SITE:(i + 1) * ROWS_PER_SITE]
        tasks = (*CONSORTIUM, PRIVATE[i])
        settings = PrepareSettings(table=TableSpec(smiles_col="smiles", id_col="mol_id", task_cols=tasks),
                                   featurize=FeaturizeSettings(n_bits=N_BITS))
        res = prepare_frame(part.reset_index(drop=True), key, None, settings, workers=1)
        res.store.settings["site_name"] = f"site{i}"
        res.store.save(root / "sites" / f"site-{i}")
        smiles_by_site[i] = set(part["smiles"]) | set(res.store.compounds["smiles"])

    cfg = FederationConfig(
        num_server_rounds=2, min_sites=N_SITES, n_bits=N_BITS, hidden="64", local_epochs=1,
        consortium_tasks=",".join(f"{t}:classification" for t in CONSORTIUM),
        sim_store_dir=str(root / "sites"), output_dir=str(root / "server"), num_threads=1,
        model_name="fedmol-test", experiment="fedmol-test",
        eval_min_labels=3,  # folds of ~90 compounds: a quorum the tasks meet, so the table has scores
        finetune_epochs=0, local_baseline=False,  # the site model and the local-only column: tests/client
    )
    sim = {"num-supernodes": N_SITES, "client-resources-num-cpus": 1}
    lines: list[str] = []
    with LocalSuperLink(root / "flower") as link:
        watcher = threading.Thread(target=_kill_after_round_1, args=(link, root / "server"), daemon=True)
        watcher.start()
        # The killed run's status is asked once, not awaited (flwr_run would wait up to 30 s for a run the
        # SuperLink still thinks is running): the resume below needs only the checkpoint.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(launcher, "run_status", functools.partial(launcher.run_status, wait=0))
            first_code = flwr_run(link, cfg.to_run_config(), federation_config=sim, on_line=lines.append,
                                  timeout=600)
        watcher.join(timeout=5)
        states = sorted((root / "server" / "checkpoints").glob("*/state.json"))
        assert states, "no checkpoint after the killed run:\n" + "\n".join(lines[-60:])
        ckpt_state = json.loads(states[0].read_text())
        code = flwr_run(link, cfg.replace(resume="latest").to_run_config(), federation_config=sim,
                        on_line=lines.append, timeout=600)
    assert first_code != 0, "the first run should have been killed after round 1"
    assert code == 0, "\n".join(lines[-40:])
    outputs = json.loads((root / "server" / "last_federation.json").read_text())
    return {"root": root, "cfg": cfg, "key": key_path, "outputs": outputs, "ckpt_after_kill": ckpt_state,
            "smiles": smiles_by_site, "log": lines}


def test_resumed_run_continues_at_round_2_in_the_same_mlflow_run(federation):
    from mlflow.tracking import MlflowClient

    assert federation["ckpt_after_kill"]["server_round"] == 1
    outputs = federation["outputs"]
    assert outputs["mlflow_run_id"] == federation["ckpt_after_kill"]["mlflow_run_id"]
    assert outputs["federation_id"] == federation["ckpt_after_kill"]["federation_id"]
    client = MlflowClient(outputs["tracking_uri"])
    history = client.get_metric_history(outputs["mlflow_run_id"], "train/train-loss")
    assert sorted(m.step for m in history) == [1, 2]  # round 1 before the kill, round 2 after resume
    run = client.get_run(outputs["mlflow_run_id"])
    assert run.data.tags.get("fedmol.resumed") == "true"
    assert [m.step for m in client.get_metric_history(outputs["mlflow_run_id"], "evaluate/test-loss")] == [1, 2]
    per_site = [k for k in run.data.metrics if k.startswith("site/site0/")]
    assert per_site, "per-site metrics are logged under the site's name"


def test_no_private_head_ever_left_a_site(federation):
    root = federation["root"]
    for i in range(N_SITES):
        entries = [json.loads(x) for x in (root / "sites" / f"site-{i}" / "outbox.jsonl").read_text().splitlines()]
        assert {e["phase"] for e in entries} == {"train", "evaluate"}
        names = {a["name"] for e in entries for a in e["arrays"]}
        assert names and all(n.startswith(("trunk.", "heads.consortium_")) for n in names), names
        # Shapes: nothing shaped like a private head (its last dimension is the trunk width x 1 task);
        # int8's per-row scales and its zlib-packed bytes (flat uint8) have shapes of their own.
        heads = [a for e in entries for a in e["arrays"] if a["name"].startswith("heads.")
                 and not a["name"].endswith("#int8-scale") and a["dtype"] != "uint8"]
        assert heads and all(a["shape"][0] != 1 for a in heads)
    # The server's final model holds no private head either.
    ckpt = next((root / "server" / "checkpoints").glob("*/global.npz"))
    with np.load(ckpt) as g:
        assert g.files and not [k for k in g.files if "private" in k]


def test_private_heads_changed_between_rounds(federation):
    root = federation["root"]
    for i in range(N_SITES):
        history_files = list((root / "sites" / f"site-{i}" / "federations").glob("*/history.jsonl"))
        rows = [json.loads(x) for x in history_files[0].read_text().splitlines()]
        by_round = {r["round"]: r["private_sha256"] for r in rows}
        assert set(by_round) >= {1, 2}
        assert by_round[1] != by_round[2]
        assert all(r["names"] and all(n.startswith("heads.private_") for n in r["names"]) for r in rows)


def test_no_site_smiles_in_server_artifacts(federation):
    root = federation["root"] / "server"
    texts = []
    for path in root.rglob("*"):
        textual = path.suffix in (".json", ".md", ".txt", ".yaml", ".MLmodel", "")
        if path.is_file() and textual and path.stat().st_size < 5e6:
            texts.append(path.read_text(errors="ignore"))
    blob = "\n".join(texts)
    smiles = set().union(*federation["smiles"].values())
    leaked = [s for s in smiles if len(s) > 8 and s in blob]
    assert not leaked, leaked[:5]


def test_registered_model_loads_in_a_fresh_process_and_predicts(federation):
    outputs = federation["outputs"]
    code = f"""
import mlflow, pandas as pd
mlflow.set_tracking_uri({outputs['tracking_uri']!r})
m = mlflow.pyfunc.load_model({outputs['model_uri']!r}, model_config={{"key_file": {str(federation['key'])!r}}})
out = m.predict(pd.DataFrame({{"smiles": ["CCO", "c1ccccc1O", "not a smiles"]}}))
print(out.to_json(orient="records"))
"""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 3
    for task in CONSORTIUM:
        assert 0.0 <= rows[0][task] <= 1.0 and 0.0 <= rows[1][task] <= 1.0
        assert rows[2][task] is None
    assert rows[2]["error"] and not rows[0]["error"]


def test_final_table_has_federated_scores_per_site(federation):
    table = json.loads(Path(federation["outputs"]["table"]).read_text())
    sites = table["values"]["federated"]
    assert set(sites) == {f"site{i}" for i in range(N_SITES)}
    assert all(sites.values()), sites  # every site has scored tasks


def test_the_saved_model_is_the_best_round_of_the_resumed_federation(federation):
    """Best-round selection across the kill and the resume: round 1's score was recorded after the
    resume (its evaluation travels with round 2's training), round 2's by its own evaluation."""
    from mlflow.tracking import MlflowClient

    outputs = federation["outputs"]
    scores = {m.step: m.value for m in MlflowClient(outputs["tracking_uri"]).get_metric_history(
        outputs["mlflow_run_id"], "federated-valid-score")}
    assert sorted(scores) == [1, 2]
    best = 1 if scores[1] >= scores[2] else 2
    meta = json.loads((Path(outputs["model_dir"]) / "meta.json").read_text())
    assert (outputs["best_round"], meta["best_round"], meta["rounds_run"]) == (best, best, 2)
