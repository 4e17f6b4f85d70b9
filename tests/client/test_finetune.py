"""Personalisation (run-config finetune-epochs): only in the final evaluation, decided by the site on its
validation score, nothing new leaves the site."""

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
    cfg = FederationConfig(
        transport_dtype="float32",  # a reply goes on as the next model, as a float32 server takes it
        n_bits=256, hidden="32", dropout=0.0, consortium_tasks="c1:classification",
        num_server_rounds=2, local_epochs=1, lr=0.05, eval_min_labels=5, num_threads=1,
        finetune_epochs=4, finetune_lr=0.003, finetune_patience=2, report_task_names=True,
        register_model=False)  # the site's own registry: tests/client/test_site_registry.py
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
    assert {"valid", "test", "valid-federated", "test-federated"} <= set(tm)  # (and the local-only baseline)
    assert set(tm["test"]) == set(tm["test-federated"])
    summary = json.loads(final.report[wire.REP_SUMMARY])
    assert summary["finetune_epochs_run"] >= 1 and "test_federated_score" in summary
    # Fine-tuning changed the model the site reports: the site chose it on its validation score.
    assert summary["personalised"] == 1 and summary["finetune_decided_by"] == 1
    assert summary["finetune_valid_score_after"] > summary["finetune_valid_score_before"]
    assert summary["valid_score"] == pytest.approx(summary["finetune_valid_score_after"])
    assert summary["valid_federated_score"] == pytest.approx(summary["finetune_valid_score_before"])
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
    monkeypatch.setattr(SiteNode, "finetune", lambda self, *a, **k: called.append(1) or {"personalised": 0})
    off = node.evaluate_round(cfg.replace(finetune_epochs=0), shared, server_round=2, federation_id="fid")
    assert json.loads(off.report[wire.REP_SUMMARY])["personalised"] == 0  # a final round says so
    mid = node.evaluate_round(cfg, shared, server_round=2, federation_id="fid", final=False)
    assert "personalised" not in json.loads(mid.report[wire.REP_SUMMARY])
    assert called == []
    node.evaluate_round(cfg, shared, server_round=1, federation_id="fid", final=True)
    assert called == [1]


def test_finetune_keeps_the_received_model_when_no_epoch_beats_it_on_validation(site_and_cfg):
    node, cfg, shared = site_and_cfg
    model, _ = node.build_model(cfg, shared, "fid")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    out = node.finetune(model, cfg.replace(finetune_lr=50.0, finetune_epochs=1), 2)  # a step that can only hurt
    assert out["personalised"] == 0 and out["finetune_best_epoch"] == 0
    assert out["finetune_valid_score_after"] == out["finetune_valid_score_before"]
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_a_final_round_where_finetuning_cannot_help_reports_the_federated_model(site_and_cfg):
    node, cfg, shared = site_and_cfg
    before = {k: v.copy() for k, v in shared.items()}
    reply = node.evaluate_round(cfg.replace(finetune_lr=50.0, finetune_epochs=1), shared, server_round=2,
                                federation_id="fid")
    summary = json.loads(reply.report[wire.REP_SUMMARY])
    tm = json.loads(reply.report[wire.REP_TASK_METRICS])
    assert summary["personalised"] == 0
    assert summary["valid_score"] == summary["valid_federated_score"]
    assert tm["test"] == tm["test-federated"]  # the model the site uses is the federated one
    assert not (node.private_dir("fid") / "personalised.pt").exists()
    assert all(np.array_equal(before[k], shared[k]) for k in shared)  # the shared model is untouched


def test_the_decision_is_the_validation_score_not_the_loss(site_and_cfg, monkeypatch):
    """Fine-tuning that lowers the validation loss but not the score is not kept (and the reverse is)."""
    import fedmol.client.site as site_module
    from fedmol.models.training import EvalResult

    node, cfg, shared = site_and_cfg

    def result(score: float, loss: float) -> EvalResult:
        return EvalResult(per_task={"c1": {"roc_auc": score}}, summary={}, loss=loss, n_labels=10,
                          kinds={"c1": "classification"})

    for before, after, expected in ((result(0.70, 0.50), result(0.69, 0.30), 0),
                                    (result(0.70, 0.50), result(0.71, 0.60), 1)):
        answers = iter([before, after])
        monkeypatch.setattr(site_module, "evaluate", lambda *a, answers=answers, **k: next(answers))
        model, _ = node.build_model(cfg, shared, "fid")
        start = {k: v.clone() for k, v in model.state_dict().items()}
        out = node.finetune(model, cfg, 2)
        assert out["personalised"] == expected and out["finetune_decided_by"] == 1
        unchanged = all(torch.equal(start[k], v) for k, v in model.state_dict().items())
        assert unchanged == (expected == 0)


def test_without_a_qualifying_validation_task_the_loss_decides(site_and_cfg):
    node, cfg, shared = site_and_cfg
    model, _ = node.build_model(cfg, shared, "fid")
    out = node.finetune(model, cfg.replace(eval_min_labels=10**6), 2)  # no task has enough labels to score
    assert out["finetune_decided_by"] == 0 and "finetune_valid_score_before" not in out
    assert out["personalised"] == int(out["finetune_valid_loss_after"] < out["finetune_valid_loss_before"])
    assert out["finetune_valid_loss_after"] <= out["finetune_valid_loss_before"]
