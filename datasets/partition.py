"""Split one prepared store into simulated sites (simulation only; every function is seeded).

All three return row indices into the store (sorted, int64) so that
``store.subset(rows, task_names)`` builds each site's store; features and folds are per-molecule,
so this equals preparing each site's own file.

* :func:`by_scaffold`: chemical-series skew. Molecules are grouped by Murcko scaffold (acyclic and
  single-ring molecules by their own SMILES, as for folds), the groups are clustered with k-means
  on their mean fingerprints (folded to 1,024 columns), and whole clusters go to sites, largest first to the
  currently smallest site. No scaffold is split across sites.
* :func:`by_label_skew`: label skew. For one task, the rows of each class (and the unlabelled
  rows) are split over sites with proportions drawn from Dirichlet(alpha); small alpha = strong
  skew. Regression tasks use above/below-median as the classes.
* :func:`by_task`: task ownership. Tasks are dealt to sites at random (disjoint sets); a site gets
  every row with at least one label for its tasks, so rows may appear at several sites.
"""

from __future__ import annotations

import numpy as np

from fedmol.datasets.store import SiteStore
from fedmol.errors import ConfigError, StoreError

__all__ = ["by_label_skew", "by_scaffold", "by_task", "scaffold_groups"]


def _check_sites(n_sites: int, n_items: int, what: str) -> None:
    if n_sites < 1:
        raise ConfigError(f"n_sites must be at least 1, not {n_sites}")
    if n_sites > n_items:
        raise ConfigError(f"cannot split {n_items} {what} over {n_sites} sites: use fewer sites")


def scaffold_groups(store: SiteStore) -> np.ndarray:
    """(n,) int64 group code per row: same Murcko scaffold = same group (needs store.compounds)."""
    if store.compounds is None or "smiles" not in store.compounds:
        raise StoreError("partitioning by scaffold needs compounds.csv with SMILES in the store")
    from rdkit import Chem, RDLogger

    from fedmol.datasets.folds import FoldAssigner, FoldSettings

    assigner = FoldAssigner(b"", FoldSettings(), subkey=b"partition")
    RDLogger.DisableLog("rdApp.*")  # a few stored SMILES of odd inorganics do not re-parse
    keys = []
    for smi in store.compounds["smiles"].astype(str):
        mol = Chem.MolFromSmiles(smi)
        keys.append("?" + smi if mol is None else assigner.basis(mol)[1])
    _, codes = np.unique(np.array(keys, dtype=object), return_inverse=True)
    return codes.astype(np.int64)


def by_scaffold(store: SiteStore, n_sites: int, seed: int, n_clusters: int | None = None) -> list[np.ndarray]:
    """Row indices per site, whole scaffold clusters per site (non-IID in chemistry)."""
    import scipy.sparse as sp
    from sklearn.cluster import KMeans

    n = store.n_compounds
    _check_sites(n_sites, n, "compounds")
    groups = scaffold_groups(store)
    n_groups = int(groups.max()) + 1 if n else 0
    _check_sites(n_sites, n_groups, "scaffold groups")
    # Mean fingerprint of each scaffold group, folded to 1,024 columns (column mod 1024): folding
    # keeps the similarity structure k-means needs and makes it fast. (n_groups, 1024) dense.
    member = sp.csr_matrix((np.ones(n), (groups, np.arange(n))), shape=(n_groups, n))
    sizes = np.asarray(member.sum(axis=1)).ravel()
    width = min(1024, store.n_features)
    fold = sp.csr_matrix((np.ones(store.n_features), (np.arange(store.n_features),
                                                      np.arange(store.n_features) % width)))
    centroids = np.asarray((sp.diags(1.0 / sizes) @ member @ store.X @ fold).todense(), dtype=np.float32)
    k = min(n_groups, n_clusters or 4 * n_sites)
    from threadpoolctl import threadpool_limits

    # one thread: the problem is small, and OpenMP threads competing with other processes
    # (a federation simulation, pytest workers) made k-means ten times slower here
    with threadpool_limits(limits=1):
        labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(centroids, sample_weight=sizes)
    cluster_sizes = np.bincount(labels, weights=sizes, minlength=k)
    site_of_cluster = np.zeros(k, dtype=np.int64)
    load = np.zeros(n_sites)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(k), -cluster_sizes))  # largest first, ties broken by the seed
    for c in order:
        s = int(np.argmin(load))
        site_of_cluster[c] = s
        load[s] += cluster_sizes[c]
    site_of_row = site_of_cluster[labels[groups]]
    return [np.flatnonzero(site_of_row == s).astype(np.int64) for s in range(n_sites)]


def by_label_skew(store: SiteStore, n_sites: int, alpha: float, seed: int,
                  task: str | None = None) -> list[np.ndarray]:
    """Row indices per site with class proportions drawn from Dirichlet(alpha) per class.

    ``task`` defaults to the trainable task with the most labels.
    """
    _check_sites(n_sites, store.n_compounds, "compounds")
    if alpha <= 0:
        raise ConfigError(f"alpha must be positive, not {alpha}")
    if not store.tasks:
        raise StoreError("the store has no tasks to skew labels by")
    if task is None:
        candidates = store.trainable_tasks() or store.tasks
        task = max(candidates, key=lambda t: t.n_labels).name
    if task not in store.task_names:
        raise ConfigError(f"unknown task {task!r}; the store has {', '.join(store.task_names)}")
    j = store.task_names.index(task)
    y = store.Y[:, j]
    if store.tasks[j].kind == "regression":
        med = np.nanmedian(y) if np.any(~np.isnan(y)) else 0.0
        cls = np.where(np.isnan(y), -1, (y > med).astype(int))
    else:
        cls = np.where(np.isnan(y), -1, (y >= 0.5).astype(int))
    rng = np.random.default_rng(seed)
    site_of_row = np.empty(store.n_compounds, dtype=np.int64)
    for c in np.unique(cls):
        rows = rng.permutation(np.flatnonzero(cls == c))
        p = rng.dirichlet(np.full(n_sites, alpha))
        cuts = np.round(np.cumsum(p)[:-1] * len(rows)).astype(int)
        for s, part in enumerate(np.split(rows, cuts)):
            site_of_row[part] = s
    return [np.flatnonzero(site_of_row == s).astype(np.int64) for s in range(n_sites)]


def by_task(store: SiteStore, n_sites: int, seed: int,
            tasks: list[str] | None = None) -> list[tuple[np.ndarray, list[str]]]:
    """(rows, task names) per site: disjoint task sets, rows with a label for the site's tasks."""
    names = list(tasks) if tasks is not None else [t.name for t in (store.trainable_tasks() or store.tasks)]
    unknown = [t for t in names if t not in store.task_names]
    if unknown:
        raise ConfigError(f"unknown tasks {unknown}; the store has {', '.join(store.task_names)}")
    _check_sites(n_sites, len(names), "tasks")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    out = []
    mask = store.mask
    for s in range(n_sites):
        own = sorted(order[s::n_sites], key=names.index)
        cols = [store.task_names.index(t) for t in own]
        rows = np.flatnonzero(mask[:, cols].any(axis=1)).astype(np.int64)
        out.append((rows, own))
    return out
