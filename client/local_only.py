"""A site's local-only model, trained once and kept in its store: what its federated scores are
compared with in the federation-gain report.

``<store>/local_only/<key>/`` holds the model as `fedmol.models.io.save_model` writes it
(``spec.json``, ``weights.pt``) and its metrics on the site's validation and test folds in
``meta.json`` (`fedmol.models.baselines.LocalOnly.to_dict`). The key
(`fedmol.models.baselines.local_only_key`) hashes the store's content and the recipe (model spec,
training settings, folds, ``eval-min-labels``, seed): a later federation with the same store and
recipe reuses the folder; a changed store or recipe trains a new model in a new folder. Nothing
here leaves the site; the site reports aggregate metrics only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fedmol.config import FederationConfig
from fedmol.datasets.store import SiteStore
from fedmol.errors import TrainingDiverged
from fedmol.models.baselines import LocalOnly, local_only, local_only_key, store_content_hash
from fedmol.models.io import save_model
from fedmol.models.training import EvalResult

__all__ = ["LOCAL_ONLY_DIR", "LocalOnlyBaseline", "cached_local_only", "load_cached"]

log = logging.getLogger("fedmol.client")

LOCAL_ONLY_DIR = "local_only"


def load_cached(store_path: Path, key: str) -> LocalOnly | None:
    """The local-only result cached under ``key`` in the store, or None (absent or unreadable)."""
    meta = Path(store_path) / LOCAL_ONLY_DIR / key / "meta.json"
    if not meta.exists():
        return None
    try:
        return LocalOnly.from_dict(json.loads(meta.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable local-only cache %s (%s): training again", meta, exc)
        return None


def _save(store_path: Path, result: LocalOnly) -> Path:
    """Write the result (and its model) under ``local_only/<key>/``, atomically (a folder renamed into place)."""
    root = Path(store_path) / LOCAL_ONLY_DIR
    final = root / result.key
    tmp = root / f".tmp-{result.key}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = result.to_dict()
    if result.model is not None:
        save_model(tmp, result.model, meta=meta)
    else:
        tmp.mkdir(parents=True)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=float) + "\n")
    try:
        tmp.rename(final)
    except OSError:  # another process of this site got there first: its copy is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_local_only(store: SiteStore, store_path: Path, cfg: FederationConfig, *,
                      content_hash: str | None = None) -> tuple[LocalOnly, bool]:
    """The site's local-only model for ``cfg``: from the store's cache when the key matches, else
    trained (`fedmol.models.baselines.local_only`) and cached. Returns (result, from the cache)."""
    key = local_only_key(store, cfg, content_hash=content_hash)
    cached = load_cached(store_path, key)
    if cached is not None:
        return cached, True
    result = local_only(store, cfg)
    result.key = key
    _save(store_path, result)
    return result, False


class LocalOnlyBaseline:
    """One site's local-only baseline as its evaluations use it: looked up once per recipe and
    process (the store's content hash too), trained at the first evaluation that needs it."""

    def __init__(self, store_path: Path, site: str = "") -> None:
        self.store_path = Path(store_path)
        self.site = site
        self._content_hash: str | None = None
        self._known: dict[str, LocalOnly | None] = {}  # key -> result (None: every recipe diverged)

    def results(self, store: SiteStore, cfg: FederationConfig) -> tuple[dict[str, EvalResult], dict[str, Any]]:
        """(split -> `EvalResult` for ``valid-local`` and ``test-local``, summary entries). Empty
        when the local-only model could not be trained (every recipe diverged: logged once)."""
        t0 = time.perf_counter()
        if self._content_hash is None:
            self._content_hash = store_content_hash(store)
        key = local_only_key(store, cfg, content_hash=self._content_hash)
        if key not in self._known:
            try:
                result, cached = cached_local_only(store, self.store_path, cfg, content_hash=self._content_hash)
            except TrainingDiverged as exc:
                log.warning("site %s: no local-only baseline in the report: %s", self.site, exc)
                self._known[key] = None
            else:
                self._known[key] = result
                where = self.store_path / LOCAL_ONLY_DIR / key
                if cached:
                    log.info("site %s: local-only model read from %s", self.site, where)
                else:
                    log.info("site %s: local-only model trained in %.1f s (recipe %s; validation score per "
                             "recipe %s), cached in %s", self.site, result.seconds, result.recipe,
                             result.validation, where)
        known = self._known[key]
        if known is None:
            return {}, {}
        summary: dict[str, Any] = {"local_only_seconds": time.perf_counter() - t0,
                                   "local_only_recipe": known.recipe}
        return {f"{split}-local": r for split, r in known.results.items()}, summary
