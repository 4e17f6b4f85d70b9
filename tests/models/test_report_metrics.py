"""A `score` table holding ROC-AUC and R² reports each metric on its own."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from fedmol.models.report import GainTable


def _mixed() -> GainTable:
    base = GainTable("demo", "score")
    base.add("local", "a", {"logS": 0.5}, {"logS": "r2"})
    base.add("local", "c", {"soluble": 0.8, "logP": 0.3}, {"soluble": "roc_auc", "logP": "r2"})
    base.add("pooled", "a", {"logS": 0.7}, {"logS": "r2"})
    base.add("pooled", "c", {"soluble": 0.9, "logP": 0.5}, {"soluble": "roc_auc", "logP": "r2"})
    fed = GainTable.from_site_metrics("demo", "federated", {
        "a": {"logS": {"r2": 0.6, "rmse": 1.0}},
        "c": {"soluble": {"roc_auc": 0.85, "pr_auc": 0.5}, "logP": {"r2": 0.4}},
    }, metric="score")
    return base.merge(fed)


def test_a_mixed_score_table_splits_by_metric(tmp_path: Path) -> None:
    table = _mixed()
    assert table.mixed and table.metrics == ["r2", "roc_auc"]
    parts = table.by_metric()
    assert set(parts) == {"r2", "roc_auc"}
    r2, auc = parts["r2"], parts["roc_auc"]
    assert r2.metric == "r2" and auc.metric == "roc_auc" and not r2.mixed
    assert r2.sites == ["a", "c"] and auc.sites == ["c"]
    assert r2.summary()["federated"]["c"] == pytest.approx(0.4)  # logP only, not (0.85 + 0.4) / 2
    assert r2.summary()["pooled"]["mean_over_sites"] == pytest.approx(0.6)
    assert auc.summary()["local"]["mean_over_sites"] == pytest.approx(0.8)
    d = table.to_dict()
    assert "summary" not in d
    assert d["summary_by_metric"]["roc_auc"]["federated"]["mean_over_sites"] == pytest.approx(0.85)
    assert d["summary_by_metric"]["r2"]["federated"]["mean_over_sites"] == pytest.approx(0.5)
    table.to_json(tmp_path / "t.json")
    again = GainTable.from_json(tmp_path / "t.json")
    assert again.task_metrics == table.task_metrics and again.mixed
    md = table.markdown()
    assert "# r2 on demo" in md and "# roc_auc on demo" in md and "# score on demo" not in md
    assert "| c | 1 | 0.800 | 0.850 | 0.900 |" in md  # the roc_auc overview: soluble alone
    out = io.StringIO()
    table.print(Console(file=out, width=120))
    assert "r2 on demo" in out.getvalue() and "roc_auc on demo" in out.getvalue()


def test_a_table_of_one_metric_is_unchanged() -> None:
    fed = GainTable.from_site_metrics("tox21", "federated", {"s": {"t1": {"roc_auc": 0.7}, "t2": {"roc_auc": 0.9}}},
                                      metric="score")
    assert not fed.mixed and fed.by_metric() == {"score": fed}
    d = fed.to_dict()
    assert d["summary"]["federated"]["s"] == pytest.approx(0.8) and "summary_by_metric" not in d
    assert json.loads(json.dumps(d))["task_metrics"] == {"s": {"t1": "roc_auc", "t2": "roc_auc"}}
    old = GainTable("tox21", "roc_auc")  # tables written before task_metrics: one metric, the table's
    old.add("local", "s", {"t1": 0.5})
    assert old.metrics == ["roc_auc"] and not old.mixed


def test_a_table_with_nothing_scored_draws_no_plot_and_warns_nothing(tmp_path: Path) -> None:
    import warnings

    empty = GainTable("x", "roc_auc")  # e.g. a federation whose test folds had no task above eval-min-labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" would fail here
        assert empty.plot(tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()
    empty.add("federated", "s1", {"a": 0.7}, {"a": "roc_auc"})
    assert empty.plot(tmp_path / "one.png") == tmp_path / "one.png" and (tmp_path / "one.png").stat().st_size > 0
