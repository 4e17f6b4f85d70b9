"""`fedmol simulate` over a folder of site stores with any names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmol.cli import main
from fedmol.client.site import site_for
from fedmol.config import FederationConfig
from fedmol.datasets.store import store_folders
from tests.server.synthetic import synthetic_store

TASKS = [("c1", "classification"), ("c2", "classification")]


def _stores(root: Path, names: list[str], n: int = 120, n_bits: int = 256) -> None:
    for i, name in enumerate(names):
        synthetic_store(n, n_bits, TASKS, seed=i).save(root / name)  # no site_name: the folder names the site


def test_store_folders_are_the_store_subfolders_in_natural_order(tmp_path: Path) -> None:
    _stores(tmp_path, ["site-10", "site-2", "beta", "Acme"], n=30, n_bits=32)
    (tmp_path / "notes").mkdir()  # not a store
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "features.npz").write_bytes(b"")  # an incomplete store is not a store either
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in store_folders(tmp_path)] == ["Acme", "beta", "site-2", "site-10"]
    assert store_folders(tmp_path / "missing") == []
    cfg = FederationConfig(sim_store_dir=str(tmp_path))
    assert [site_for({"partition-id": i}, cfg).name for i in range(4)] == ["Acme", "beta", "site-2", "site-10"]
    from fedmol.errors import ConfigError

    with pytest.raises(ConfigError, match="partition 4, but sim-store-dir .* holds 4 site stores"):
        site_for({"partition-id": 4}, cfg)


def test_simulate_without_stores_says_what_a_store_folder_is(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["simulate", str(tmp_path / "empty")]) != 0
    err = capsys.readouterr().err
    assert "holds no site store" in err and "fedmol prepare" in err
    assert main(["simulate", str(tmp_path / "nowhere")]) != 0
    assert "is not a folder" in capsys.readouterr().err


def test_simulate_help_names_the_run_config_table(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["simulate", "--help"]) == 0
    assert "Every KEY is a key of [tool.flwr.app.config] in pyproject.toml." in capsys.readouterr().out


def test_the_gain_report_prints_local_only_against_federated_per_site(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from fedmol.deploy.report import print_gain_report
    from fedmol.models.report import GainTable

    table = GainTable("unit", "score")
    for site, (local, fed) in {"acme": (0.60, 0.70), "zeta": (0.72, 0.68)}.items():
        table.add("local", site, {"c1": local, "c2": local}, {"c1": "roc_auc", "c2": "roc_auc"})
        table.add("federated", site, {"c1": fed, "c2": local}, {"c1": "roc_auc", "c2": "roc_auc"})
    path = table.to_json(tmp_path / "federations" / "f1" / "federated_table.json")
    reason = "best federated validation score 0.6900 at round 3; stopped at round 5 after 2 rounds without improvement"
    (tmp_path / "last_federation.json").write_text(json.dumps({"table": str(path), "mlflow_run_id": "r1",
                                                               "best_round": 3, "rounds_run": 5,
                                                               "stop_reason": reason}))
    assert print_gain_report(tmp_path) == path
    printed = capsys.readouterr().out
    assert f"Model kept: round 3 of 5 rounds run ({reason})" in printed  # one line, not wrapped
    for text in ("roc_auc", "local", "federated", "federated won", "acme", "zeta", "0.660", "0.675", "1/2",
                 "pairs won against local-only: federated 1/4"):
        assert text in printed, text
    # A run that wrote nothing new: the last federation's table is not passed off as this one's.
    assert print_gain_report(tmp_path, since=(tmp_path / "last_federation.json").stat().st_mtime + 10) is None
    assert "no federation-gain table" in capsys.readouterr().out


@pytest.mark.slow
def test_simulate_names_sites_after_their_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _stores(tmp_path / "stores", ["zeta-pharma", "acme"])
    out = tmp_path / "server"
    code = main(["simulate", str(tmp_path / "stores"), "--out", str(out),
                 "--set", "num-server-rounds=1", "--set", "n-bits=256", "--set", "hidden=16",
                 "--set", "num-threads=1", "--set", "consortium-tasks=c1:classification,c2:classification",
                 "--set", "register-model=false", "--set", "eval-min-labels=2"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "2 sites: acme, zeta-pharma" in printed
    outputs = json.loads((out / "last_federation.json").read_text())
    table = json.loads(Path(outputs["table"]).read_text())
    assert set(table["values"]["federated"]) == {"acme", "zeta-pharma"}
    # The federation-gain report: each site's local-only model (trained once, cached in its store) beside
    # the federated model, per site and task, printed at the end.
    assert set(table["values"]["local"]) == {"acme", "zeta-pharma"}
    assert set(table["values"]["local"]["acme"]) == set(table["values"]["federated"]["acme"])
    assert table["pairs_against_local"]["federated"]["pairs"] >= 2
    assert Path(outputs["table"]).with_suffix(".png").exists()
    assert "Federation gain" in printed and "federated won" in printed and "pairs won against local-only" in printed
    assert f"Model kept: round 1 of 1 rounds run ({outputs['stop_reason']})" in printed
    for site in ("acme", "zeta-pharma"):
        assert len(list((tmp_path / "stores" / site / "local_only").glob("*/meta.json"))) == 1
