"""A site's full model in a federation: the shared trunk and consortium heads it received plus its
private heads, which never leave the site and live in its store between rounds and runs.

Layout of ``<store>/federations/<federation-id>/`` (the federation id made safe as a folder name):

* ``private_heads.pt``: the current private heads' state_dict. A site's rounds (`fedmol.client.site`)
  train and save them; after the final evaluation they are the heads of the round the server chose
  (the best round), so scoring with a site's full model (`fedmol.scoring.scorer`) pairs the
  registered shared model with its own heads.
* ``private_heads-r<r>.pt``: the heads as saved after the site's training round ``r`` (the heads
  that go with the aggregate of round ``r``, which is the server's round-``r`` model). Only the
  newest `KEPT_HEAD_ROUNDS` rounds are kept (more with a larger federation ``patience``: see
  `kept_head_rounds`); older ones are removed when a new round is saved. The final evaluation,
  which carries the chosen round, loads them (`private_heads_file`); when that round's heads are
  gone it falls back to the current ones, with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedmol.config import FederationConfig
from fedmol.datasets.store import SiteStore
from fedmol.errors import StoreError
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import ModelSpec, build_spec

__all__ = ["KEPT_HEAD_ROUNDS", "PRIVATE_HEADS", "federation_dir", "kept_head_rounds", "private_heads_file",
           "round_heads", "site_name", "split_rows", "site_spec", "site_model", "save_private_heads"]

log = logging.getLogger("fedmol.models")

PRIVATE_HEADS = "private_heads.pt"
# Rounds whose private heads a site keeps (the newest); enough for the best round of a federation
# that stops early with patience < 30, a few MB for typical private heads.
KEPT_HEAD_ROUNDS = 30
_ROUND_HEADS = re.compile(r"^private_heads-r(\d+)\.pt$")


def federation_dir(store_path: Path, federation_id: str) -> Path:
    """The folder of a site's private state in one federation: ``<store>/federations/<safe id>``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in federation_id)
    return store_path / "federations" / safe


def site_name(store: SiteStore, store_path: Path) -> str:
    """The name a site goes by: its store's ``site_name`` setting, else the store folder's name."""
    return str(store.settings.get("site_name") or store_path.name)


def fold_rows(folds: np.ndarray, split: str, test_fold: int, valid_fold: int) -> np.ndarray:
    """Row indices of ``split``: ``test`` and ``valid`` are those folds, anything else (``train``)
    every other fold."""
    if split == "test":
        return np.flatnonzero(folds == test_fold)
    if split == "valid":
        return np.flatnonzero(folds == valid_fold)
    return np.flatnonzero((folds != test_fold) & (folds != valid_fold))


def split_rows(store: SiteStore, cfg: FederationConfig, split: str) -> np.ndarray:
    """Row indices of ``split`` with the run config's test and validation folds (`fold_rows`)."""
    return fold_rows(store.folds, split, cfg.test_fold, cfg.valid_fold)


def site_spec(store: SiteStore, cfg: FederationConfig, site: str) -> ModelSpec:
    """The consortium's heads (in the consortium's order) plus a private head per kind of the
    site's own trainable tasks; raises `StoreError` when the store's features do not fit."""
    if store.n_features != cfg.n_bits:
        raise StoreError(
            f"site {site}: the store has {store.n_features}-bit features but the "
            f"consortium uses n-bits={cfg.n_bits}: prepare the data with the consortium's settings"
        )
    consortium = cfg.consortium_task_list
    shared_names = {n for n, _ in consortium}
    private = [(t.name, t.kind) for t in store.trainable_tasks() if t.name not in shared_names]
    return build_spec(cfg.n_bits, consortium, private, hidden=cfg.hidden_sizes, dropout=cfg.dropout,
                      input_transform=cfg.input_transform)


def kept_head_rounds(cfg: FederationConfig) -> int:
    """How many rounds' private heads a site keeps: `KEPT_HEAD_ROUNDS`, or ``patience + 1`` when
    larger (a federation that stops early chose a round at most ``patience`` rounds back)."""
    return max(KEPT_HEAD_ROUNDS, cfg.patience + 1)


def round_heads(store_path: Path, federation_id: str) -> dict[int, Path]:
    """The kept per-round private heads of ``federation_id``: round -> ``private_heads-r<r>.pt``."""
    folder = federation_dir(store_path, federation_id)
    if not folder.is_dir():
        return {}
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := _ROUND_HEADS.match(p.name))}
    return dict(sorted(found.items()))


def private_heads_file(store_path: Path, federation_id: str, server_round: int | None = None, *,
                       site: str = "") -> Path:
    """The private heads to load: the current ones (``server_round`` None), else those the site
    evaluated round ``server_round``'s global model with: saved after its last training round at
    or before ``server_round`` (a site not sampled for training in that round kept the earlier ones).
    When none is kept (pruned, or the site never trained) the current file, with a warning."""
    folder = federation_dir(store_path, federation_id)
    if server_round is None:
        return folder / PRIVATE_HEADS
    earlier = [r for r in round_heads(store_path, federation_id) if r <= server_round]
    if earlier:
        return folder / f"private_heads-r{earlier[-1]}.pt"
    log.warning("site %s: the private heads of round %d are no longer kept in %s (a site keeps the last "
                "rounds' only): the latest heads are used with round %d's shared model", site or "?",
                server_round, folder, server_round)
    return folder / PRIVATE_HEADS


def site_model(store: SiteStore, store_path: Path, cfg: FederationConfig, shared: Mapping[str, Tensor | np.ndarray],
               federation_id: str, *, site: str, heads_round: int | None = None) -> tuple[MultiTaskNet, bool]:
    """The site's model: the ``shared`` parameters plus its private heads of ``federation_id``:
    the current ones, or with ``heads_round`` those of that round (`private_heads_file`).

    Returns the model and ``fresh``: True when the store holds no private heads of that federation
    yet (the model's private heads, if any, are then newly initialised from ``seed``).
    """
    spec = site_spec(store, cfg, site)
    path = private_heads_file(store_path, federation_id, heads_round, site=site)
    fresh = not path.exists()
    # Every parameter is loaded below, except new private heads: only those are drawn from the seed.
    model = (MultiTaskNet(spec, seed=cfg.seed) if fresh and any(not h.shared for h in spec.heads)
             else MultiTaskNet.uninitialised(spec))
    model.load_shared_state_dict(shared)
    if not fresh:
        model.load_private_state_dict(torch.load(path, weights_only=True))
    return model, fresh


def save_private_heads(model: MultiTaskNet, store_path: Path, federation_id: str, *,
                       server_round: int | None = None, keep: int = KEPT_HEAD_ROUNDS) -> dict[str, Tensor]:
    """Write the model's private heads to the store (atomically) as the current ones; with
    ``server_round`` (a training round) also as that round's (``private_heads-r<r>.pt``), keeping the
    newest ``keep`` rounds. Returns the state written."""
    folder = federation_dir(store_path, federation_id)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.private_state_dict().items()}
    names = [PRIVATE_HEADS] if server_round is None else [f"private_heads-r{server_round}.pt", PRIVATE_HEADS]
    for name in names:
        path = folder / name
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    if server_round is not None:
        kept = round_heads(store_path, federation_id)
        for old in list(kept)[:max(len(kept) - max(keep, 1), 0)]:
            kept[old].unlink(missing_ok=True)
    return state
