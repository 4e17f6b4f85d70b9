"""Small synthetic site stores for federation tests that do not need RDKit.

Features are random sparse bit vectors; labels follow a fixed linear rule over a few bits, so a
model can learn them and sites share the same underlying relation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fedmol.datasets.store import SiteStore
from fedmol.datasets.tasks import TaskInfo


def synthetic_store(n: int, n_bits: int, tasks: list[tuple[str, str]], *, seed: int,
                    site_name: str = "", reference_hash: str = "ref-0") -> SiteStore:
    rng = np.random.default_rng(seed)
    rule = np.random.default_rng(12345).normal(size=(n_bits, len(tasks)))  # same at every site
    on = 20
    cols = np.concatenate([rng.choice(n_bits, on, replace=False) for _ in range(n)])
    rows = np.repeat(np.arange(n), on)
    X = sp.csr_matrix((np.ones(n * on, np.float32), (rows, cols)), shape=(n, n_bits))
    score = np.asarray(X @ rule)
    Y = np.empty((n, len(tasks)), np.float32)
    infos = []
    for j, (name, kind) in enumerate(tasks):
        if kind == "classification":
            Y[:, j] = (score[:, j] > np.median(score[:, j])).astype(np.float32)
            infos.append(TaskInfo(name=name, kind="classification", n_labels=n,
                                  n_pos=int(Y[:, j].sum()), n_neg=int(n - Y[:, j].sum())))
        else:
            Y[:, j] = score[:, j] + rng.normal(scale=0.1, size=n)
            infos.append(TaskInfo(name=name, kind="regression", n_labels=n))
    Y[rng.random(Y.shape) < 0.1] = np.nan
    folds = rng.integers(0, 5, size=n).astype(np.int16)
    return SiteStore(X=X, Y=Y, censor=np.zeros(Y.shape, np.int8), folds=folds, tasks=infos,
                     settings={"site_name": site_name, "reference_hash": reference_hash,
                               "key_fingerprint": "kf-test",
                               "featurize": {"radius": 2, "n_bits": n_bits}})


def write_sites(root: Path, n_sites: int = 3, *, n: int = 240, n_bits: int = 512) -> list[Path]:
    """site-0..site-{n-1} under root: consortium tasks c1, c2 everywhere, one private task each."""
    paths = []
    for i in range(n_sites):
        private = ("p_reg", "regression") if i % 2 == 0 else ("p_clf", "classification")
        store = synthetic_store(n, n_bits, [("c1", "classification"), ("c2", "classification"), private],
                                seed=i, site_name=f"site{i}")
        paths.append(store.save(root / f"site-{i}"))
    return paths
