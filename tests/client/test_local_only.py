"""A site's local-only model for the federation-gain report: trained once, cached in its store by
the store's content and the recipe, reported beside the federated scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedmol.client.local_only as local_only_module
from fedmol import wire
from fedmol.client.local_only import LOCAL_ONLY_DIR, cached_local_only
from fedmol.client.site import SiteNode
from fedmol.config import FederationConfig
from fedmol.datasets.store import SiteStore
from fedmol.server.federation import initial_shared_arrays
from tests.server.synthetic import write_sites

CFG = FederationConfig(n_bits=64, hidden="8", dropout=0.0, consortium_tasks="c1:classification",
                       num_server_rounds=1, local_epochs=1, eval_min_labels=3, num_threads=1, device="cpu",
                       finetune_epochs=0, register_model=False)


@pytest.fixture()
def trainings(monkeypatch):
    """Counts the local-only trainings (the real function still runs)."""
    calls: list[int] = []
    real = local_only_module.local_only
    monkeypatch.setattr(local_only_module, "local_only", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_cache_is_reused_for_the_same_store_and_recipe_and_retrained_when_either_changes(tmp_path, trainings):
    path = write_sites(tmp_path, 1, n=150, n_bits=64)[0]
    store = SiteStore.load(path)

    first, cached = cached_local_only(store, path, CFG)
    assert not cached and len(trainings) == 1
    folder = path / LOCAL_ONLY_DIR / first.key
    assert {"meta.json", "weights.pt", "spec.json"} <= {p.name for p in folder.iterdir()}
    assert first.recipe in first.validation and set(first.validation) == {"adam", "federation"}
    assert set(first.results) == {"valid", "test"}

    # Same store, same recipe; settings of the federation only (not of the local model) changed: reused.
    again, cached = cached_local_only(SiteStore.load(path), path,
                                      CFG.replace(round_timeout=5.0, run_name="other", output_dir=str(tmp_path / "o"),
                                                  tracking_uri="sqlite:///x.db", finetune_epochs=3))
    assert cached and len(trainings) == 1
    assert again.key == first.key and again.recipe == first.recipe
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(first.to_dict(), sort_keys=True)  # NaN-safe

    # Another recipe: trained again, in a folder of its own.
    other, cached = cached_local_only(store, path, CFG.replace(hidden="12"))
    assert not cached and len(trainings) == 2 and other.key != first.key
    other_lr, cached = cached_local_only(store, path, CFG.replace(lr=0.01))
    assert not cached and len(trainings) == 3 and other_lr.key not in (first.key, other.key)

    # Another store content (one label changed, saved over the same folder): trained again.
    Y = store.Y.copy()
    row = int(np.flatnonzero(~np.isnan(Y[:, 0]))[0])
    Y[row, 0] = 1.0 - Y[row, 0]
    SiteStore(X=store.X, Y=Y, censor=store.censor, folds=store.folds, tasks=store.tasks,
              settings=store.settings).save(path)
    changed, cached = cached_local_only(SiteStore.load(path), path, CFG)
    assert not cached and len(trainings) == 4 and changed.key != first.key
    assert len([p for p in (path / LOCAL_ONLY_DIR).iterdir() if not p.name.startswith(".")]) == 4


def test_each_evaluation_reports_the_local_only_scores_under_the_same_labels(tmp_path, trainings):
    path = write_sites(tmp_path, 1, n=150, n_bits=64)[0]
    shared, _ = initial_shared_arrays(CFG)
    node = SiteNode(path, "site0")  # private task names not allowed out
    for rnd in (1, 2):
        reply = node.evaluate_round(CFG, shared, server_round=rnd, federation_id="fid")
    assert len(trainings) == 1  # the first evaluation trained it; the second reused it
    tm = json.loads(reply.report[wire.REP_TASK_METRICS])
    summary = json.loads(reply.report[wire.REP_SUMMARY])
    assert {"valid", "test", "valid-local", "test-local"} <= set(tm)
    # c2 and p_reg are private here: their names stay at the site, in both models' metrics
    assert set(tm["test-local"]) == set(tm["test"]) == {"c1", "private:cla:0", "private:reg:0"}
    assert all("roc_auc" in m or "r2" in m for m in tm["test-local"].values())
    assert {"valid_local_score", "test_local_score", "local_only_seconds"} <= set(summary)
    assert summary["local_only_recipe"] in ("adam", "federation")
    ledger = (path / "outbox.jsonl").read_text()
    assert all(not {"c2", "p_reg"} & set(tasks) for tasks in tm.values())
    assert "p_reg" not in ledger and "p_reg" not in json.dumps(reply.report)

    # A new process of the same site (a fresh SiteNode) reads the model from the store.
    fresh = SiteNode(path, "site0", report_task_names=True)
    tm = json.loads(fresh.evaluate_round(CFG, shared, server_round=3, federation_id="fid")
                    .report[wire.REP_TASK_METRICS])
    assert len(trainings) == 1 and set(tm["test-local"]) == {"c1", "c2", "p_reg"}

    off = SiteNode(path, "site0").evaluate_round(CFG.replace(local_baseline=False), shared, server_round=1,
                                                  federation_id="fid2")
    assert not {"valid-local", "test-local"} & set(json.loads(off.report[wire.REP_TASK_METRICS]))
    assert "test_local_score" not in json.loads(off.report[wire.REP_SUMMARY])
