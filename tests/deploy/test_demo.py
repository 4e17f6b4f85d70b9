"""`fedmol demo` end to end (short): stores, baselines, a Flower simulation, the table, the registry."""

import json

import pytest

from fedmol.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rounds", "2", "--local-epochs", "1"]) == 0
    table = json.loads((out / "federation_gain.json").read_text())
    assert set(table["values"]) == {"local", "federated", "pooled"}
    for approach in ("local", "federated", "pooled"):
        assert set(table["values"][approach]) == {"pharma-a", "pharma-b", "biotech-c", "institute-d"}
    outputs = json.loads((out / "server" / "last_federation.json").read_text())
    assert outputs["model_uri"] == "models:/fedmol-demo/1"
    for site in range(4):
        assert (out / "sites" / f"site-{site}" / "outbox.jsonl").exists()
