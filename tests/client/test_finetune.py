"""Personalisation (run-config finetune-epochs): only in the final evaluation, nothing new leaves the site."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmol import wire
from fedmol.client.site import SiteNode
from fedmol.config import FederationConfig
from fedmol.server.federation import initial_shared_arrays
from tests.server.synthetic import write_sites


@pytest.fixture()
def site_and_cfg(tmp_path):
    path = write_sites(tmp_path, 1, n=300, n_bits=256)[0]
    cfg = FederationConfig(n_bits=256, hidden="32", dropout=0.0, consortium_tasks="c1:classification",
                           num_server_rounds=2, local_epochs=1, lr=0.05, eval_min_labels=5, num_threads=1,
                           finetune_epochs=4, finetune_lr=0.003, finetune_patience=2, report_task_names=True)
    node = SiteNode(path, "site0", report_task_names=True)
    shared, _ = initial_shared_arrays(cfg)
    shared = node.train_round(cfg, shared, server_round=1, federation_id="fid").arrays
    return node, cfg, shared


def _ledger(node: SiteNode) -> list[dict]:
    return [json.loads(line) for line in node.ledger_path.read_text().splitlines()]


def test_finetuning_happens_only_in_the_final_round_and_sends_nothing_new(site_and_cfg, monkeypatch):
    node, cfg, shared = site_and_cfg
    calls = []
    real = SiteNode.finetune
    monkeypatch.setattr(SiteNode, "finetune", lambda self, *a, **k: calls.append(a[-1]) or real(self, *a, **k))
    before = {k: v.copy() for k, v in shared.items()}

    mid = node.evaluate_round(cfg, shared, server_round=1, federation_id="fid")  # not final (embedded evaluation)
    assert calls == []
    assert "test-federated" not in json.loads(mid.report[wire.REP_TASK_METRICS])
    assert not (node.private_dir("fid") / "personalised.pt").exists()

    heads_before = torch.load(node.private_dir("fid") / "private_heads.pt", weights_only=True)
    final = node.evaluate_round(cfg, shared, server_round=2, federation_id="fid")  # server_round == num rounds
    assert calls == [2]
    assert final.arrays is None  # an evaluate reply carries no arrays, fine-tuned or not
    tm = json.loads(final.report[wire.REP_TASK_METRICS])
    assert set(tm) == {"valid", "test", "valid-federated", "test-federated"}
    assert set(tm["test"]) == set(tm["test-federated"])
    summary = json.loads(final.report[wire.REP_SUMMARY])
    assert summary["finetune_epochs_run"] >= 1 and "test_federated_score" in summary
    # Fine-tuning changed the model the site reports (valid loss can only go down: best epoch kept).
    assert summary["finetune_valid_loss_after"] <= summary["finetune_valid_loss_before"]
    assert summary["finetune_best_epoch"] > 0  # this synthetic site gains from fine-tuning
    assert tm["test"] != tm["test-federated"]
    # The received arrays were not modified in place, the personalised model stays on disk at the site,
    # and the private heads kept for scoring with the shared trunk are not the fine-tuned ones.
    assert all(np.array_equal(before[k], shared[k]) for k in shared)
    personalised = torch.load(node.private_dir("fid") / "personalised.pt", weights_only=True)
    assert any(k.startswith(wire.TRUNK_PREFIX) for k in personalised)
    heads_after = torch.load(node.private_dir("fid") / "private_heads.pt", weights_only=True)
    assert heads_after.keys() == heads_before.keys()
    k = next(iter(heads_after))
    assert not torch.equal(heads_after[k], personalised[k])
    # The ledger: the evaluate replies sent no arrays and the same metric names as without fine-tuning.
    entries = [e for e in _ledger(node) if e["phase"] == "evaluate"]
    assert [e["arrays"] for e in entries] == [[], []]
    assert entries[0]["metric_names"] == entries[1]["metric_names"]


def test_finetuning_is_off_by_default_and_final_can_be_given(site_and_cfg, monkeypatch):
    node, cfg, shared = site_and_cfg
    called = []
    monkeypatch.setattr(SiteNode, "finetune", lambda self, *a, **k: called.append(1) or {})
    node.evaluate_round(cfg.replace(finetune_epochs=0), shared, server_round=2, federation_id="fid")
    node.evaluate_round(cfg, shared, server_round=2, federation_id="fid", final=False)
    assert called == []
    node.evaluate_round(cfg, shared, server_round=1, federation_id="fid", final=True)
    assert called == [1]


def test_finetune_keeps_the_received_model_when_no_epoch_beats_it_on_validation(site_and_cfg):
    node, cfg, shared = site_and_cfg
    model, _ = node.build_model(cfg, shared, "fid")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    out = node.finetune(model, cfg.replace(finetune_lr=50.0, finetune_epochs=1), 2)  # a step that can only hurt
    assert out["finetune_best_epoch"] == 0
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
