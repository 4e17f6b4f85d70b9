"""The server's final federation-gain table: per site and task, local-only, federated and personalised."""

from __future__ import annotations

import json

import pytest

from fedmol.config import FederationConfig
from fedmol.models.report import GainTable
from fedmol.server.federation import FinalReport, gain_metrics, write_federated_table
from fedmol.server.rounds import RoundOutcome, SiteReport


def _auc(v: float) -> dict[str, float]:
    return {"roc_auc": v, "n": 40.0}


def _report(site: str, splits: dict[str, dict[str, dict[str, float]]], personalised: int | None = None) -> SiteReport:
    summary = {} if personalised is None else {"personalised": personalised}
    return SiteReport(node_id=hash(site) % 1000, site=site, metrics={}, task_metrics=splits, summary=summary)


def _final() -> FinalReport:
    final = FinalReport()
    acme = {"test": {"c1": _auc(0.80), "private:cla:0": _auc(0.70)},  # the personalised model
            "test-federated": {"c1": _auc(0.75), "private:cla:0": _auc(0.66)},
            "test-local": {"c1": _auc(0.70), "private:cla:0": _auc(0.68)},
            "valid": {"c1": _auc(0.9)}}
    zeta = {"test": {"c1": _auc(0.60), "private:reg:0": {"r2": 0.40, "n": 30.0}},  # kept the federated model
            "test-federated": {"c1": _auc(0.60), "private:reg:0": {"r2": 0.40, "n": 30.0}},
            "test-local": {"c1": _auc(0.65), "private:reg:0": {"r2": 0.30, "n": 30.0}}}
    final.on_round(RoundOutcome(1, "train", [], [], [], None), None)  # type: ignore[arg-type]  # ignored
    final.on_round(RoundOutcome(3, "evaluate", [_report("acme", acme, 1), _report("zeta", zeta, 0)], [], [], None),
                   None)  # type: ignore[arg-type]
    return final


def test_final_table_has_local_only_federated_and_personalised_columns_per_site(tmp_path):
    cfg = FederationConfig(table_name="unit")
    path = write_federated_table(cfg, _final(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"federated_table.json", "federated_table.md",
                                                     "federated_table.png"}
    assert (tmp_path / "federated_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads(path.read_text())
    values = d["values"]
    assert set(values["local"]) == set(values["federated"]) == {"acme", "zeta"}
    assert set(values["personalised"]) == {"acme"}  # zeta kept the federated model
    assert values["federated"]["acme"] == {"c1": 0.75, "private:cla:0": 0.66}  # the plain shared model
    assert values["personalised"]["acme"] == {"c1": 0.80, "private:cla:0": 0.70}
    assert values["local"]["zeta"] == {"c1": 0.65, "private:reg:0": 0.30}
    # Pairs won against local-only: federated 1 (acme c1) + 1 (zeta r2) of 4; the sites' own models
    # (personalised at acme, federated at zeta) 2 + 1 of 4.
    assert d["pairs_against_local"]["federated"] == {"pairs": 4, "won": 2, "lost": 2, "tied": 0}
    assert d["pairs_against_local"]["personalised"] == {"pairs": 2, "won": 2, "lost": 0, "tied": 0}
    assert d["pairs_against_local"]["site model"] == {"pairs": 4, "won": 3, "lost": 1, "tied": 0}
    # ROC-AUC and R² apart; every approach's site means over the tasks it shares with the others there.
    by = d["summary_by_metric"]
    assert by["roc_auc"]["local"]["acme"] == pytest.approx(0.69)
    assert by["roc_auc"]["federated"]["acme"] == pytest.approx(0.705)
    assert by["roc_auc"]["personalised"]["acme"] == pytest.approx(0.75)
    assert by["roc_auc"]["federated"]["zeta"] == pytest.approx(0.60)  # no personalised value at zeta
    assert by["r2"]["federated"]["zeta"] == pytest.approx(0.40)
    md = (tmp_path / "federated_table.md").read_text()
    assert "| site | tasks | local | federated | personalised |" in md
    assert "(site, task) pairs won against local-only: federated 1/3" in md  # the ROC-AUC section

    metrics = gain_metrics(GainTable.from_json(path))
    assert metrics["gain/pairs-won/federated"] == 2 and metrics["gain/pairs/site-model"] == 4
    assert metrics["gain/roc_auc/local"] == pytest.approx((0.69 + 0.65) / 2)


def test_without_local_only_scores_the_table_still_has_the_federated_column(tmp_path):
    final = FinalReport()
    final.on_round(RoundOutcome(2, "evaluate", [_report("acme", {"test": {"c1": _auc(0.7)}})], [], [], None),
                   None)  # type: ignore[arg-type]
    table = GainTable.from_json(write_federated_table(FederationConfig(), final, tmp_path))
    assert table.approaches == ["federated"] and table.values["federated"]["acme"] == {"c1": 0.7}
    assert table.pair_counts() == {} and table.pairs_line() == ""
