"""The task catalogue: which label columns are trainable and evaluable, and why not.

Quorums follow MELLODDY: a classification task trains with >= 25 actives and >= 25 inactives and
is evaluated only if every evaluation fold holds >= 10 actives and >= 10 inactives; a regression
task trains with >= 50 labels of which >= 25 are exact (uncensored) and is evaluated only if every
evaluation fold holds >= ``min_fold_regression`` exact values. A task that does not train is not
evaluated either. Excluded tasks stay in the label matrix with ``trainable=False`` and a reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from fedmol.config import TaskKind

__all__ = ["TaskInfo", "QuorumSettings", "build_catalogue", "reason_kinds"]


@dataclass(frozen=True)
class TaskInfo:
    """One column of the label matrix and whether it meets the quorums."""

    name: str
    kind: TaskKind
    source: str = ""  # the input column (or long-format task) it came from
    threshold: float | None = None  # classification made from a value: 1 if value >= threshold
    n_labels: int = 0
    n_pos: int = 0  # classification only
    n_neg: int = 0
    n_censored: int = 0  # regression only
    trainable: bool = True
    evaluable: bool = True
    reason: str = ""  # why not trainable / not evaluable; empty when both hold

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskInfo:
        return cls(**d)


@dataclass(frozen=True)
class QuorumSettings:
    """Minimum label counts. ``eval_folds`` None means every fold is an evaluation fold."""

    min_actives: int = 25
    min_inactives: int = 25
    min_fold_actives: int = 10
    min_fold_inactives: int = 10
    min_regression: int = 50
    min_uncensored: int = 25
    min_fold_regression: int = 10
    eval_folds: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_folds"] = list(self.eval_folds) if self.eval_folds is not None else None
        return d


def build_catalogue(Y: np.ndarray, censor: np.ndarray, folds: np.ndarray, tasks: list[TaskInfo],
                    quorum: QuorumSettings | None = None, n_folds: int = 5) -> list[TaskInfo]:
    """Recompute counts, trainable/evaluable and the reason of every task.

    Y (n, T) float32 with NaN for missing (classification labels are 0.0/1.0); censor (n, T) int8
    in {-1, 0, +1}; folds (n,) ints 0..n_folds-1; ``tasks`` gives name/kind/source/threshold of
    each column. Returns a new list of TaskInfo, one per column, in the same order.
    """
    quorum = quorum or QuorumSettings()
    if Y.shape[1] != len(tasks):
        raise ValueError(f"Y has {Y.shape[1]} columns but {len(tasks)} tasks were given")
    eval_folds = list(range(n_folds)) if quorum.eval_folds is None else list(quorum.eval_folds)
    folds = np.asarray(folds, dtype=np.int64)
    out: list[TaskInfo] = []
    for j, task in enumerate(tasks):
        y = Y[:, j]
        present = ~np.isnan(y)
        if task.kind == "classification":
            out.append(_classification(task, y, present, folds, eval_folds, quorum))
        else:
            out.append(_regression(task, present, censor[:, j], folds, eval_folds, quorum))
    return out


def _classification(task: TaskInfo, y: np.ndarray, present: np.ndarray, folds: np.ndarray,
                    eval_folds: list[int], q: QuorumSettings) -> TaskInfo:
    pos = present & (y >= 0.5)
    neg = present & (y < 0.5)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    reasons = []
    if n_pos < q.min_actives:
        reasons.append(f"{n_pos} actives < {q.min_actives}")
    if n_neg < q.min_inactives:
        reasons.append(f"{n_neg} inactives < {q.min_inactives}")
    trainable = not reasons
    evaluable = trainable
    if trainable:
        short = []
        for f in eval_folds:
            fp, fn = int((pos & (folds == f)).sum()), int((neg & (folds == f)).sum())
            if fp < q.min_fold_actives or fn < q.min_fold_inactives:
                short.append(f"fold {f}: {fp}/{fn}")
        if short:
            evaluable = False
            reasons.append(
                f"not evaluable, actives/inactives below {q.min_fold_actives}/{q.min_fold_inactives} "
                f"in {'; '.join(short)}"
            )
    return replace(task, n_labels=int(present.sum()), n_pos=n_pos, n_neg=n_neg, n_censored=0,
                   trainable=trainable, evaluable=evaluable, reason="; ".join(reasons))


def _regression(task: TaskInfo, present: np.ndarray, censor: np.ndarray, folds: np.ndarray,
                eval_folds: list[int], q: QuorumSettings) -> TaskInfo:
    n = int(present.sum())
    censored = present & (censor != 0)
    exact = present & (censor == 0)
    n_cens, n_exact = int(censored.sum()), int(exact.sum())
    reasons = []
    if n < q.min_regression:
        reasons.append(f"{n} values < {q.min_regression}")
    if n_exact < q.min_uncensored:
        reasons.append(f"{n_exact} uncensored values < {q.min_uncensored}")
    trainable = not reasons
    evaluable = trainable
    if trainable:
        short = [f"fold {f}: {int((exact & (folds == f)).sum())}" for f in eval_folds
                 if int((exact & (folds == f)).sum()) < q.min_fold_regression]
        if short:
            evaluable = False
            reasons.append(f"not evaluable, uncensored values below {q.min_fold_regression} in "
                           f"{'; '.join(short)}")
    return replace(task, n_labels=n, n_pos=0, n_neg=0, n_censored=n_cens,
                   trainable=trainable, evaluable=evaluable, reason="; ".join(reasons))


def reason_kinds(reason: str) -> list[str]:
    """A task's ``reason`` as kinds without its counts, to count tasks per kind of reason.

    "12 actives < 25; 30 inactives < 25" -> ["actives < 25", "inactives < 25"];
    "not evaluable, actives/inactives below 10/10 in fold 0: 8/15; fold 4: 12/9" ->
    ["not evaluable: actives/inactives below 10/10 in some fold"]. An empty reason has no kind.
    """
    head, sep, tail = reason.partition("not evaluable, ")
    kinds = [re.sub(r"^\d+ ", "", part.strip()) for part in head.split(";") if part.strip()]
    if sep:
        kinds.append(f"not evaluable: {tail.split(' in fold')[0]} in some fold")
    return kinds
