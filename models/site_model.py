"""A site's full model in a federation: the shared trunk and consortium heads it received plus its
private heads, which never leave the site and live in its store between rounds and runs.

Layout: ``<store>/federations/<federation-id>/private_heads.pt``, the private heads' state_dict
(the federation id made safe as a folder name). A site's rounds (`fedmol.client.site`) train and
save them; scoring with a site's full model (`fedmol.scoring.scorer`) loads them.
"""

from __future__ import annotations

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

__all__ = ["PRIVATE_HEADS", "federation_dir", "site_name", "split_rows", "site_spec", "site_model",
           "save_private_heads"]

PRIVATE_HEADS = "private_heads.pt"


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


def site_model(store: SiteStore, store_path: Path, cfg: FederationConfig, shared: Mapping[str, Tensor | np.ndarray],
               federation_id: str, *, site: str) -> tuple[MultiTaskNet, bool]:
    """The site's model: the ``shared`` parameters plus its private heads of ``federation_id``.

    Returns the model and ``fresh``: True when the store holds no private heads of that federation
    yet (the model's private heads, if any, are then newly initialised from ``seed``).
    """
    model = MultiTaskNet(site_spec(store, cfg, site), seed=cfg.seed)
    model.load_shared_state_dict(shared)
    path = federation_dir(store_path, federation_id) / PRIVATE_HEADS
    fresh = not path.exists()
    if not fresh:
        model.load_private_state_dict(torch.load(path, weights_only=True))
    return model, fresh


def save_private_heads(model: MultiTaskNet, store_path: Path, federation_id: str) -> dict[str, Tensor]:
    """Write the model's private heads to the store (atomically); returns the state written."""
    folder = federation_dir(store_path, federation_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PRIVATE_HEADS
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().cpu() for k, v in model.private_state_dict().items()}
    torch.save(state, tmp)
    tmp.replace(path)
    return state
