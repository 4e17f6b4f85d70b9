from __future__ import annotations

import numpy as np
import pytest

from fedmol.datasets.partition import by_label_skew, by_scaffold, by_task, scaffold_groups
from fedmol.errors import ConfigError


def _check_partition(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))  # disjoint and covering
    assert all(len(p) > 0 for p in parts)


def test_by_scaffold_is_seeded_disjoint_and_keeps_scaffolds_whole(solubility_store) -> None:
    store = solubility_store
    parts = by_scaffold(store, 3, seed=0)
    _check_partition(parts, store.n_compounds)
    again = by_scaffold(store, 3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    groups = scaffold_groups(store)
    site = np.empty(store.n_compounds, dtype=int)
    for s, rows in enumerate(parts):
        site[rows] = s
    for g in np.unique(groups):
        assert len(np.unique(site[groups == g])) == 1
    other = by_scaffold(store, 3, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_by_label_skew(solubility_store) -> None:
    store = solubility_store
    parts = by_label_skew(store, 4, alpha=0.3, seed=7, task="soluble")
    _check_partition(parts, store.n_compounds)
    again = by_label_skew(store, 4, alpha=0.3, seed=7, task="soluble")
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    j = store.task_names.index("soluble")
    rates = [np.nanmean(store.Y[p, j]) for p in parts if len(p) > 20]
    assert max(rates) - min(rates) > 0.1  # skewed
    sub = store.subset(parts[0])
    assert sub.n_compounds == len(parts[0]) and sub.tasks[j].n_labels == len(parts[0])
    with pytest.raises(ConfigError):
        by_label_skew(store, 4, alpha=0, seed=0)


def test_by_task(solubility_store) -> None:
    store = solubility_store
    parts = by_task(store, 2, seed=3)
    tasks = [t for _, ts in parts for t in ts]
    assert sorted(tasks) == sorted(store.task_names) and len(set(tasks)) == len(tasks)
    again = by_task(store, 2, seed=3)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(parts, again, strict=True))
    for rows, own in parts:
        cols = [store.task_names.index(t) for t in own]
        assert np.array_equal(rows, np.flatnonzero(store.mask[:, cols].any(axis=1)))
        site = store.subset(rows, own)
        assert site.task_names == own
    with pytest.raises(ConfigError):
        by_task(store, 3, seed=0)  # only two tasks
