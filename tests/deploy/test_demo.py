"""`fedmol demo`: stores, baselines, a Flower simulation, the table, the registry; its fixed key."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedmol.cli import main
from fedmol.datasets.keys import load_key
from fedmol.datasets.store import SiteStore
from fedmol.deploy.demo import DEMO_KEY_HEX, SITES, DemoOptions, prepare_sites, run_demo, write_demo_key
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


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rounds", "2", "--local-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "federation_gain.json").read_text())
    assert set(table["values"]) == {"local", "federated", "pooled"}
    for approach in ("local", "federated", "pooled"):
        assert set(table["values"][approach]) == {"pharma-a", "pharma-b", "biotech-c", "institute-d"}
    # R² and ROC-AUC apart: biotech-c's class is the only ROC-AUC, no mean mixes the two
    by_metric = table["summary_by_metric"]
    assert set(by_metric) == {"r2", "roc_auc"} and "summary" not in table
    assert set(by_metric["roc_auc"]["pooled"]) == {"biotech-c", "mean_over_sites"}
    assert set(by_metric["r2"]["pooled"]) == {"pharma-a", "pharma-b", "institute-d", "mean_over_sites"}
    assert "r2 on demo" in printed and "roc_auc on demo" in printed
    assert "the federation's recipe (sgd" in table["notes"]["baselines"]
    assert load_key(out / "consortium.key") == bytes.fromhex(DEMO_KEY_HEX)
    outputs = json.loads((out / "server" / "last_federation.json").read_text())
    assert outputs["model_uri"] == "models:/fedmol-demo/1"
    for site in range(4):
        assert (out / "sites" / f"site-{site}" / "outbox.jsonl").exists()
