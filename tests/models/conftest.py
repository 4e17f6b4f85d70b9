"""Small synthetic data for the models tests, generated from a seed (no files, no network)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

N_BITS = 1024


def make_fingerprints(n: int, n_bits: int = N_BITS, on_bits: int = 20, seed: int = 0) -> sp.csr_matrix:
    """(n, n_bits) float32 CSR with ``on_bits`` distinct random bits set per row."""
    rng = np.random.default_rng(seed)
    cols = np.stack([rng.choice(n_bits, size=on_bits, replace=False) for _ in range(n)])
    rows = np.repeat(np.arange(n), on_bits)
    data = np.ones(n * on_bits, dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols.ravel())), shape=(n, n_bits), dtype=np.float32)


def make_labels(X: sp.csr_matrix, seed: int = 0, missing: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Two learnable classification tasks and one regression task (with some censored values).

    Returns Y (n, 3) float32 with NaN for missing labels, censor (n, 3) int8.
    """
    rng = np.random.default_rng(seed)
    n, n_bits = X.shape
    w = rng.normal(size=(n_bits, 3)).astype(np.float32)
    z = np.asarray(X @ w)
    Y = np.empty((n, 3), dtype=np.float32)
    Y[:, 0] = (z[:, 0] > np.median(z[:, 0])).astype(np.float32)
    Y[:, 1] = (z[:, 1] > np.quantile(z[:, 1], 0.7)).astype(np.float32)
    Y[:, 2] = 6.0 + 0.5 * z[:, 2]
    censor = np.zeros((n, 3), dtype=np.int8)
    cens = rng.random(n) < 0.1
    censor[cens, 2] = np.where(rng.random(cens.sum()) < 0.5, 1, -1)
    Y[rng.random((n, 3)) < missing] = np.nan
    return Y, censor


TASKS = [("act_a", "classification"), ("act_b", "classification"), ("pic50", "regression")]


@pytest.fixture
def synthetic_store():
    """A SiteStore with 500 compounds, 1024 bits, 3 tasks, 5 folds."""
    from fedmol.datasets.store import SiteStore
    from fedmol.datasets.tasks import TaskInfo

    X = make_fingerprints(500, seed=1)
    Y, censor = make_labels(X, seed=2)
    folds = (np.arange(500) % 5).astype(np.int16)
    tasks = []
    for j, (name, kind) in enumerate(TASKS):
        col = Y[:, j]
        present = ~np.isnan(col)
        tasks.append(TaskInfo(
            name=name, kind=kind, n_labels=int(present.sum()),
            n_pos=int((col == 1).sum()) if kind == "classification" else 0,
            n_neg=int((col == 0).sum()) if kind == "classification" else 0,
            n_censored=int((censor[:, j] != 0).sum()) if kind == "regression" else 0,
        ))
    return SiteStore(X=X, Y=Y, censor=censor, folds=folds, tasks=tasks,
                     settings={"input_transform": "binary", "folds": {"n_folds": 5}})
