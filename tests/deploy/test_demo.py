"""`fedmol demo`: stores, baselines, a Flower simulation, the table, the registry; its fixed key."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedmol.cli import main
from fedmol.config import FederationConfig
from fedmol.datasets.keys import load_key
from fedmol.datasets.store import SiteStore
from fedmol.deploy.demo import (
    DEMO_KEY_HEX,
    SITES,
    DemoOptions,
    next_steps,
    prepare_sites,
    run_demo,
    table_notes,
    write_demo_key,
)
from fedmol.errors import InputError


def test_the_demo_key_makes_the_same_stores_every_time(tmp_path: Path) -> None:
    """The key decides folds and feature positions: with the fixed demo key two preparations agree."""
    key = write_demo_key(tmp_path / "demo.key")
    assert load_key(key) == bytes.fromhex(DEMO_KEY_HEX) and key.stat().st_mode & 0o077 == 0
    runs = [prepare_sites(DemoOptions(out=tmp_path / f"run{i}", n_bits=256), key) for i in range(2)]
    for site in SITES:
        one, two = (SiteStore.load(r[site]) for r in runs)
        assert np.array_equal(one.folds, two.folds) and (one.X != two.X).nnz == 0
        assert np.array_equal(one.Y, two.Y, equal_nan=True)


def test_a_key_file_inside_the_recreated_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    key = write_demo_key(out / "mine.key")
    with pytest.raises(InputError, match="inside --out"):
        run_demo(DemoOptions(out=out, key_file=key))
    assert key.exists()  # nothing was removed


def _outputs(tmp_path: Path, stores: dict[str, Path]) -> dict:
    """The server's outputs as run_federation writes them, and the sites' records of their own models."""
    from fedmol.client.site_registry import SITE_MODEL_RECORD
    from fedmol.models.site_model import federation_dir

    for site, store in stores.items():
        folder = federation_dir(store, "fed-1")
        folder.mkdir(parents=True)
        (folder / SITE_MODEL_RECORD).write_text(json.dumps({
            "model_uri": f"models:/fedmol-site-{site}/1", "tracking_uri": f"sqlite:///{store}/mlflow.db"}))
    return {"federation_id": "fed-1", "mlflow_run_id": "r1", "tracking_uri": "sqlite:///server/mlflow.db",
            "model_dir": str(tmp_path / "server" / "model"), "model_uri": "models:/fedmol-demo/1",
            "best_round": 2, "rounds_run": 4,
            "stop_reason": "best federated validation score 0.5000 at round 2; ran all 4 rounds"}


def test_the_demo_points_a_headless_federation_to_the_sites_own_models(tmp_path: Path) -> None:
    stores = {site: tmp_path / "sites" / site for site in ("biotech-c", "institute-d")}
    outputs = _outputs(tmp_path, stores)
    key = tmp_path / "consortium.key"
    cfg = FederationConfig(consortium_tasks="logS:regression")
    lines = next_steps(cfg, outputs, stores, key)
    assert lines[0] == f"Model kept: round 2 of 4 rounds run ({outputs['stop_reason']})"
    assert f"Score molecules:   fedmol score INPUT.csv --model {outputs['model_dir']} --key-file {key} " \
           "--out predictions.csv" in lines
    assert "institute-d's own model: models:/fedmol-site-institute-d/1 in sqlite:///" \
           f"{stores['institute-d']}/mlflow.db" in lines
    # Every task private: the shared model is a trunk without heads, so the demo never suggests it for scoring.
    headless = next_steps(cfg.replace(consortium_tasks=""), outputs, stores, key)
    assert not [line for line in headless if f"--model {outputs['model_dir']}" in line]
    assert any("has no heads" in line for line in headless)
    assert (f"Score with biotech-c's own model (its private tasks too): fedmol score INPUT.csv --model "
            f"models:/fedmol-site-biotech-c/1 --tracking-uri sqlite:///{stores['biotech-c']}/mlflow.db "
            f"--key-file {key} --out predictions.csv") in headless
    assert any("no site registered its own model" in line
               for line in next_steps(cfg.replace(consortium_tasks=""), outputs, {}, key))


def test_the_demo_table_notes_say_where_each_column_comes_from() -> None:
    cfg = FederationConfig(num_server_rounds=4, local_epochs=2, optimizer="sgd", lr=0.05, batch_size=32)
    notes = table_notes(cfg, {"stop_reason": "best federated validation score 0.5 at round 2"}, None)
    assert notes["key"] == "the public demo key" and "personalised" not in notes
    assert "trained by the site in the federation" in notes["local"] and "trained by the demo" in notes["pooled"]
    assert "federation: sgd, lr 0.05, batch 32, at most 8 epochs" in notes["baselines"]
    assert "adam: adam, lr 0.001" in notes["baselines"]
    assert notes["federation"] == "best federated validation score 0.5 at round 2"
    assert "personalised" in table_notes(cfg, {}, Path("k.key"), personalised=True)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rounds", "2", "--local-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "federation_gain.json").read_text())
    assert {"local", "federated", "pooled"} <= set(table["values"]) <= {"local", "federated", "pooled", "personalised"}
    for approach in ("local", "federated", "pooled"):
        assert set(table["values"][approach]) == {"pharma-a", "pharma-b", "biotech-c", "institute-d"}
    # Local-only, federated (and personalised) are the federation's own: the demo trains only the pooled model.
    outputs = json.loads((out / "server" / "last_federation.json").read_text())
    federated = json.loads(Path(outputs["table"]).read_text())
    for approach in set(federated["values"]):
        assert table["values"][approach] == federated["values"][approach], approach
    assert "pooled" not in federated["values"]
    assert table["notes"]["baseline recipes (chosen on the validation fold)"].startswith("pooled: ")
    assert table["notes"]["federation"] == outputs["stop_reason"]
    assert f"Model kept: round {outputs['best_round']} of {outputs['rounds_run']} rounds run" in printed
    assert "pharma-a's own model: models:/fedmol-site-pharma-a/1 in sqlite:///" in printed
    # R² and ROC-AUC apart: biotech-c's class is the only ROC-AUC, no mean mixes the two
    by_metric = table["summary_by_metric"]
    assert set(by_metric) == {"r2", "roc_auc"} and "summary" not in table
    assert set(by_metric["roc_auc"]["pooled"]) == {"biotech-c", "mean_over_sites"}
    assert set(by_metric["r2"]["pooled"]) == {"pharma-a", "pharma-b", "institute-d", "mean_over_sites"}
    assert "r2 on demo" in printed and "roc_auc on demo" in printed
    assert "the recipe better on the validation fold" in table["notes"]["baselines"]
    assert load_key(out / "consortium.key") == bytes.fromhex(DEMO_KEY_HEX)
    assert outputs["model_uri"] == "models:/fedmol-demo/1"
    for site in range(4):
        assert (out / "sites" / f"site-{site}" / "outbox.jsonl").exists()
