"""keep-optimizer-state: a site's local optimiser continues across rounds (DiLoCo's inner AdamW);
local-steps: small sites run enough epochs per round."""

from __future__ import annotations

import math

import torch

from fedmol.client.site import OPTIMIZER_STATE, SiteNode, local_epochs
from fedmol.config import FederationConfig
from fedmol.server.federation import initial_shared_arrays
from tests.server.synthetic import write_sites


def _cfg(**kw) -> FederationConfig:
    return FederationConfig(
        transport_dtype="float32",  # a reply goes on as the next model, as a float32 server takes it
        n_bits=256, hidden="16", dropout=0.0, consortium_tasks="c1:classification",
        num_server_rounds=3, optimizer="adamw", lr=0.001, batch_size=64, eval_min_labels=5,
        num_threads=1, local_baseline=False, **kw)


def _steps(path) -> float:
    state = torch.load(path, weights_only=True)["state"]
    return float(next(iter(state.values()))["step"])


def test_the_site_keeps_its_optimiser_state_between_rounds_and_never_sends_it(tmp_path):
    path = write_sites(tmp_path, 1, n=200, n_bits=256)[0]
    node = SiteNode(path, "site0")
    cfg = _cfg(keep_optimizer_state=True)
    shared, _ = initial_shared_arrays(cfg)
    reply = node.train_round(cfg, shared, server_round=1, federation_id="f1")
    kept = node.private_dir("f1") / OPTIMIZER_STATE
    first = _steps(kept)
    assert first > 0
    assert not any("state" in k or "exp_avg" in k for k in reply.arrays)
    node.train_round(cfg, reply.arrays, server_round=2, federation_id="f1")
    assert _steps(kept) == 2 * first  # continued, not restarted
    # Without the setting nothing is kept.
    plain = _cfg()
    node.train_round(plain, shared, server_round=1, federation_id="f2")
    assert not (node.private_dir("f2") / OPTIMIZER_STATE).exists()


def test_local_steps_raise_the_epochs_of_a_small_site_only():
    cfg = _cfg(local_epochs=1, local_steps=20)
    assert local_epochs(cfg, 64 * 5) == 4  # 5 batches per epoch -> 4 epochs for 20 steps
    assert local_epochs(cfg, 64 * 40) == 1  # 40 batches: one epoch is enough
    assert local_epochs(_cfg(local_epochs=2), 10) == 2
    assert local_epochs(cfg, 0) == math.ceil(20 / 1)
