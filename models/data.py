"""From a site store to tensors: sparse fingerprint batches and per-head label blocks.

`TaskData` aligns a store's label columns to a `ModelSpec`'s heads by task name (a consortium
task the site lacks becomes an all-missing column). `iter_batches` yields seeded, shuffled
mini-batches; on CUDA they go through pinned memory with ``non_blocking`` copies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fedmol.config import InputTransform
from fedmol.errors import InputError
from fedmol.models.spec import ModelSpec

if TYPE_CHECKING:  # a store's pandas is not needed to build batches from its arrays
    from fedmol.datasets.store import SiteStore

__all__ = ["SparseBatch", "LabelBatch", "HeadLabels", "TaskData", "transform_features", "iter_batches",
           "iter_feature_batches"]


@dataclass(frozen=True)
class SparseBatch:
    """B rows of a CSR matrix in ``EmbeddingBag`` form.

    indices: (nnz,) int64 feature (bit) positions, row after row.
    offsets: (B,) int64 start of each row in ``indices``.
    weights: (nnz,) float32 value of each entry (1.0 for binary fingerprints).
    """

    indices: Tensor
    offsets: Tensor
    weights: Tensor

    @property
    def size(self) -> int:
        return int(self.offsets.shape[0])

    @classmethod
    def from_csr(cls, X: sp.csr_matrix) -> SparseBatch:
        """Wrap a CSR block (B, n_features) whose values are already transformed."""
        return cls(
            indices=torch.from_numpy(X.indices.astype(np.int64, copy=False)),
            offsets=torch.from_numpy(X.indptr[:-1].astype(np.int64, copy=False)),
            weights=torch.from_numpy(X.data.astype(np.float32, copy=False)),
        )

    def to(self, device: torch.device) -> SparseBatch:
        if device.type == "cpu":
            return self
        pin = device.type == "cuda"
        return SparseBatch(*(_move(t, device, pin) for t in (self.indices, self.offsets, self.weights)))


@dataclass(frozen=True)
class LabelBatch:
    """Labels of one head for B rows: values (B, t) float32 (0 where missing, task units),
    mask (B, t) bool (True = label present), censor (B, t) int8 (-1 '<', 0 exact, +1 '>')."""

    values: Tensor
    mask: Tensor
    censor: Tensor

    def to(self, device: torch.device) -> LabelBatch:
        if device.type == "cpu":
            return self
        pin = device.type == "cuda"
        return LabelBatch(*(_move(t, device, pin) for t in (self.values, self.mask, self.censor)))


def _move(t: Tensor, device: torch.device, pin: bool) -> Tensor:
    if pin:
        t = t.pin_memory()
    return t.to(device, non_blocking=pin)


@dataclass(frozen=True)
class HeadLabels:
    """Labels of one head for n rows: values (n, t) float32 with NaN where missing; censor (n, t) int8."""

    values: np.ndarray
    censor: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return ~np.isnan(self.values)

    def batch(self, rows: np.ndarray) -> LabelBatch:
        v = self.values[rows]
        m = ~np.isnan(v)
        return LabelBatch(
            values=torch.from_numpy(np.where(m, v, 0.0).astype(np.float32)),
            mask=torch.from_numpy(m),
            censor=torch.from_numpy(self.censor[rows].astype(np.int8)),
        )


def transform_features(X: sp.csr_matrix, transform: InputTransform) -> sp.csr_matrix:
    """Stored feature values -> input weights: binary (1.0), log1p(count), or unchanged.

    Returns a new float32 CSR matrix with sorted indices and no explicit zeros; X is not modified.
    """
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.eliminate_zeros()
    X.sort_indices()
    if transform == "binary":
        X.data[:] = 1.0
    elif transform == "log1p":
        X.data = np.log1p(np.abs(X.data)).astype(np.float32)
    elif transform != "none":
        raise InputError(f"unknown input transform {transform!r}: use binary, log1p or none")
    return X


@dataclass(frozen=True)
class TaskData:
    """Features and per-head labels of n compounds, aligned to a spec.

    X: (n, n_features) float32 CSR, values already transformed per ``spec.input_transform``.
    heads: head name -> `HeadLabels` with one column per task of that head, in spec order.
    rows: (n,) the store rows these compounds came from (for reporting).
    """

    spec: ModelSpec
    X: sp.csr_matrix
    heads: dict[str, HeadLabels]
    rows: np.ndarray

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @classmethod
    def from_arrays(
        cls,
        spec: ModelSpec,
        X: sp.csr_matrix,
        Y: np.ndarray,
        censor: np.ndarray | None,
        task_names: Sequence[str],
        rows: np.ndarray | None = None,
        *,
        exclude_tasks: Sequence[str] = (),
    ) -> TaskData:
        """Align label columns ``task_names`` of Y (n_all, T) to the spec's heads.

        rows: which rows of X/Y to take (all when None). Tasks of the spec missing from
        ``task_names``, or listed in ``exclude_tasks``, become all-missing columns.
        """
        n_all = X.shape[0]
        rows = np.arange(n_all) if rows is None else np.asarray(rows, dtype=np.int64)
        if X.shape[1] != spec.n_features:
            raise InputError(
                f"the features have {X.shape[1]} bits but the model expects {spec.n_features}: "
                "prepare the data with the consortium's fingerprint settings"
            )
        if Y.shape != (n_all, len(task_names)):
            raise InputError(f"labels {Y.shape} do not match {n_all} rows x {len(task_names)} tasks")
        censor = np.zeros(Y.shape, dtype=np.int8) if censor is None else censor
        index = {name: i for i, name in enumerate(task_names)}
        excluded = set(exclude_tasks)
        heads: dict[str, HeadLabels] = {}
        for head in spec.heads:
            values = np.full((len(rows), head.n_tasks), np.nan, dtype=np.float32)
            cens = np.zeros((len(rows), head.n_tasks), dtype=np.int8)
            for j, task in enumerate(head.tasks):
                col = index.get(task)
                if col is None or task in excluded:
                    continue
                values[:, j] = Y[rows, col]
                if head.kind == "regression":
                    cens[:, j] = censor[rows, col]
            if head.kind == "classification":
                present = ~np.isnan(values)
                bad = present & (values != 0.0) & (values != 1.0)
                if bad.any():
                    raise InputError(
                        f"head {head.name!r} has classification labels other than 0/1 "
                        f"(e.g. {values[bad][:3].tolist()})"
                    )
            heads[head.name] = HeadLabels(values=values, censor=cens)
        return cls(spec=spec, X=transform_features(X[rows], spec.input_transform), heads=heads, rows=rows)

    @classmethod
    def from_store(
        cls, store: SiteStore, spec: ModelSpec, rows: np.ndarray | None = None, *, trainable_only: bool = True
    ) -> TaskData:
        """Rows of a site store aligned to ``spec``.

        trainable_only: labels of tasks the store's catalogue marks as not trainable (below the
        quorums) are treated as missing, so the site does not train a head column on them.
        """
        tasks = store.tasks
        exclude = [t.name for t in tasks if not t.trainable] if trainable_only else []
        return cls.from_arrays(
            spec, store.X, store.Y, store.censor, [t.name for t in tasks], rows,
            exclude_tasks=exclude,
        )

    def n_labels(self) -> int:
        """Number of present labels over all heads."""
        return int(sum(h.mask.sum() for h in self.heads.values()))

    def target_stats(self, head_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (n_tasks,) of a regression head's uncensored labels; (0, 1) for empty tasks."""
        head = self.heads[head_name]
        exact = np.where(head.censor == 0, head.values, np.nan)
        mean = np.zeros(exact.shape[1], dtype=np.float32)
        std = np.ones(exact.shape[1], dtype=np.float32)
        for j in range(exact.shape[1]):
            col = exact[:, j][~np.isnan(exact[:, j])]
            if col.size >= 2:
                mean[j] = col.mean()
                std[j] = max(float(col.std()), 1e-6)
            elif col.size == 1:
                mean[j] = col[0]
        return mean, std


def iter_batches(
    data: TaskData,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | Sequence[int] = 0,
    device: torch.device | None = None,
) -> Iterator[tuple[SparseBatch, dict[str, LabelBatch]]]:
    """Mini-batches of (features, labels per head); the order is a function of ``seed`` only."""
    device = device or torch.device("cpu")
    order = np.arange(data.n)
    if shuffle:
        order = np.random.default_rng(seed).permutation(data.n)
    for start in range(0, data.n, batch_size):
        rows = np.sort(order[start : start + batch_size]) if shuffle else order[start : start + batch_size]
        batch = SparseBatch.from_csr(data.X[rows]).to(device)
        labels = {name: h.batch(rows).to(device) for name, h in data.heads.items()}
        yield batch, labels


def iter_feature_batches(
    X: sp.csr_matrix, batch_size: int, device: torch.device | None = None
) -> Iterator[SparseBatch]:
    """Batches of an already transformed CSR matrix in row order (for prediction)."""
    device = device or torch.device("cpu")
    for start in range(0, X.shape[0], batch_size):
        yield SparseBatch.from_csr(X[start : start + batch_size]).to(device)
