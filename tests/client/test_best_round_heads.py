"""The final evaluation of the server's chosen (best) round pairs that round's shared model with the
private heads the site kept from that training round, not its latest ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from fedmol import wire
from fedmol.client import site as site_module
from fedmol.client.site import SiteNode
from fedmol.config import FederationConfig
from fedmol.models.network import MultiTaskNet
from fedmol.models.site_model import (
    PRIVATE_HEADS,
    federation_dir,
    kept_head_rounds,
    round_heads,
    save_private_heads,
    site_model,
    site_spec,
)
from fedmol.server.federation import initial_shared_arrays
from tests.server.synthetic import synthetic_store, write_sites

FID = "fed-best"


def _cfg(**kw) -> FederationConfig:
    base = dict(n_bits=256, hidden="32", dropout=0.0, consortium_tasks="c1:classification", num_server_rounds=3,
                local_epochs=2, lr=0.1, optimizer="sgd", batch_size=32, eval_min_labels=5, num_threads=1,
                patience=0, head_epochs=0, finetune_epochs=2, finetune_lr=0.01, finetune_patience=1,
                local_baseline=False, register_model=True, report_task_names=True, seed=1)
    return FederationConfig(**{"transport_dtype": "float32", **base, **kw})


def _heads(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("head_epochs", [0, 2])
def test_final_evaluation_of_round_1_uses_round_1_heads(tmp_path, monkeypatch, head_epochs):
    cfg = _cfg(head_epochs=head_epochs)
    node = SiteNode(write_sites(tmp_path, 1, n=300, n_bits=256)[0], "site0", report_task_names=True)
    folder = node.private_dir(FID)
    shared, _ = initial_shared_arrays(cfg)
    models, heads, scores = {}, {}, {}
    for r in (1, 2, 3):  # each round's "aggregate" is this one site's update
        shared = node.train_round(cfg, shared, server_round=r, federation_id=FID).arrays
        models[r] = shared
        heads[r] = _heads(folder / f"private_heads-r{r}.pt")
        assert _same(heads[r], _heads(folder / PRIVATE_HEADS))  # saved as the current ones too
        plain = node.evaluate_round(cfg, shared, server_round=r, federation_id=FID, final=False)
        scores[r] = json.loads(plain.report[wire.REP_SUMMARY])["valid_score"]
    assert set(round_heads(node.store_path, FID)) == {1, 2, 3}
    assert heads[1] and not _same(heads[1], heads[3])  # the heads moved on after round 1

    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_finetune = SiteNode.finetune

    def finetune(self, model, *a, **k):
        seen["finetune"] = {k_: v.detach().clone() for k_, v in model.private_state_dict().items()}
        return real_finetune(self, model, *a, **k)

    def publish(model, **kw):
        seen["registered"] = {k_: v.detach().clone() for k_, v in model.private_state_dict().items()}
        seen["personalised"] = bool(kw["facts"]["personalised"])
        return "models:/fake/1"

    monkeypatch.setattr(SiteNode, "finetune", finetune)
    monkeypatch.setattr(site_module, "publish_site_model", publish)
    # The server chose round 1: its model, and the final message says round 1.
    final = node.evaluate_round(cfg, models[1], server_round=1, federation_id=FID, final=True)
    summary = json.loads(final.report[wire.REP_SUMMARY])
    if head_epochs == 0:  # no refit: the very tensors saved after training round 1
        assert _same(seen["finetune"], heads[1])
    else:  # round 1's heads refitted as in round 1's own evaluation (same trunk, same seed)
        assert not _same(seen["finetune"], heads[1]) and not _same(seen["finetune"], heads[3])
    # ... so the final evaluation scores the chosen model as its own round did, not with round 3's heads
    assert summary["valid_federated_score"] == pytest.approx(scores[1], abs=1e-9)
    # The current heads are now the chosen round's (fedmol score --site-store pairs them with the shared model)
    assert _same(_heads(folder / PRIVATE_HEADS), seen["finetune"])
    # The site's registered model: round 1's heads, or their fine-tuned copy where the site personalised
    if not seen["personalised"]:
        assert _same(seen["registered"], seen["finetune"])
    else:
        assert not _same(seen["registered"], heads[3])
        assert (folder / "personalised.pt").exists()
    # The kept rounds are untouched by the final evaluation
    assert all(_same(_heads(folder / f"private_heads-r{r}.pt"), heads[r]) for r in (1, 2, 3))


def test_kept_rounds_are_bounded_and_a_missing_round_falls_back_to_the_latest(tmp_path, caplog):
    cfg = FederationConfig(
        transport_dtype="float32",  # a reply goes on as the next model, as a float32 server takes it
        n_bits=128, hidden="8", consortium_tasks="c1:classification", seed=3)
    store = synthetic_store(60, 128, [("c1", "classification"), ("p", "regression")], seed=0, site_name="acme")
    shared = MultiTaskNet(site_spec(store, cfg, "acme"), seed=0).shared_state_dict()
    model, _ = site_model(store, tmp_path, cfg, shared, FID, site="acme")
    saved = {}
    for r in (1, 2, 3, 5):  # the site was not sampled for training in round 4
        with torch.no_grad():
            model.heads["private_regression"].linear.weight.add_(1.0)
        state = save_private_heads(model, tmp_path, FID, server_round=r, keep=3)
        saved[r] = {k: v.clone() for k, v in state.items()}  # (the state shares the model's storage)
    folder = federation_dir(tmp_path, FID)
    assert sorted(p.name for p in folder.glob("private_heads-r*.pt")) == [
        "private_heads-r2.pt", "private_heads-r3.pt", "private_heads-r5.pt"]

    def heads_of(r: int | None) -> dict[str, torch.Tensor]:
        return site_model(store, tmp_path, cfg, shared, FID, site="acme", heads_round=r)[0].private_state_dict()

    assert _same(heads_of(2), saved[2]) and _same(heads_of(3), saved[3])
    assert _same(heads_of(4), saved[3])  # round 4's evaluation saw the heads of its last training, round 3
    assert _same(heads_of(None), saved[5])
    with caplog.at_level(logging.WARNING, logger="fedmol.models"):
        assert _same(heads_of(1), saved[5])  # pruned: the latest, said out loud
    assert "private heads of round 1 are no longer kept" in caplog.text
    # A federation that stops early keeps at least patience + 1 rounds, so its best round is there.
    assert kept_head_rounds(cfg) == 30 and kept_head_rounds(cfg.replace(patience=40)) == 41
