"""Per-task metrics, computed only where a task has enough data to mean something.

Classification (probabilities in [0, 1]): ROC-AUC, AUC-PR (average precision), Brier score,
expected calibration error (ECE, equal-width bins). Computed where the task has at least
``min_pos`` positives and ``min_neg`` negatives (SparseChem/MELLODDY: 25/25).
Regression: RMSE, R², Pearson r over *uncensored* points (at least ``min_points``); censored
points are reported apart: how many, and the fraction whose prediction is on the wrong side.
The summary is the mean over qualifying tasks plus the count of tasks that qualified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

__all__ = ["MetricThresholds", "classification_metrics", "regression_metrics", "expected_calibration_error",
           "summarise", "DEFAULT_THRESHOLDS", "CLASSIFICATION_METRICS", "REGRESSION_METRICS"]

CLASSIFICATION_METRICS = ("roc_auc", "auc_pr", "brier", "ece")
REGRESSION_METRICS = ("rmse", "r2", "pearson_r")


@dataclass(frozen=True)
class MetricThresholds:
    """Minimum data for a task to be scored."""

    min_pos: int = 25
    min_neg: int = 25
    min_points: int = 25  # uncensored regression points
    ece_bins: int = 10

    @classmethod
    def at_least(cls, n: int) -> MetricThresholds:
        """At least ``n`` positives, negatives and uncensored points: a federation's thresholds,
        from run-config ``eval-min-labels`` (the same for every site and every baseline)."""
        return cls(min_pos=n, min_neg=n, min_points=n)


DEFAULT_THRESHOLDS = MetricThresholds()


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE: sum over equal-width probability bins of (bin share) x |mean label - mean prob|."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    bins = np.clip((y_prob * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(y_true[sel].mean() - y_prob[sel].mean())
    return float(ece)


def classification_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, thresholds: MetricThresholds = DEFAULT_THRESHOLDS
) -> dict[str, float] | None:
    """Metrics of one task over its present labels, or None when it lacks positives/negatives.

    y_true: (n,) in {0, 1} (NaN = missing, dropped); y_prob: (n,) predicted P(active).
    Returned keys: roc_auc, auc_pr, brier, ece, n, n_pos, n_neg.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    keep = ~np.isnan(y_true)
    y, p = y_true[keep], y_prob[keep]
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos < max(thresholds.min_pos, 1) or n_neg < max(thresholds.min_neg, 1):
        return None
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "auc_pr": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p, thresholds.ece_bins),
        "n": float(len(y)),
        "n_pos": float(n_pos),
        "n_neg": float(n_neg),
    }


def regression_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    censor: np.ndarray | None = None,
    thresholds: MetricThresholds = DEFAULT_THRESHOLDS,
) -> dict[str, float] | None:
    """Metrics of one regression task, or None when it has fewer than ``min_points`` exact values.

    y_true, y_pred: (n,) in task units (NaN in y_true = missing); censor: (n,) in {-1, 0, +1}.
    Returned keys: rmse, r2, pearson_r, n (uncensored), n_censored, censored_wrong_side.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    censor = np.zeros(len(y_true), dtype=np.int8) if censor is None else np.asarray(censor)
    present = ~np.isnan(y_true)
    exact = present & (censor == 0)
    cens = present & (censor != 0)
    if exact.sum() < max(thresholds.min_points, 2):
        return None
    y, p = y_true[exact], y_pred[exact]
    pearson = float(np.corrcoef(y, p)[0, 1]) if np.std(y) > 0 and np.std(p) > 0 else float("nan")
    wrong = (censor[cens] > 0) & (y_pred[cens] < y_true[cens]) | (censor[cens] < 0) & (
        y_pred[cens] > y_true[cens]
    )
    return {
        "rmse": float(math.sqrt(mean_squared_error(y, p))),
        "r2": float(r2_score(y, p)),
        "pearson_r": pearson,
        "n": float(exact.sum()),
        "n_censored": float(cens.sum()),
        "censored_wrong_side": float(wrong.mean()) if cens.any() else float("nan"),
    }


def summarise(
    per_task: Mapping[str, Mapping[str, float]], kinds: Mapping[str, str]
) -> dict[str, float]:
    """Mean of each metric over the tasks that qualified, and how many did per kind.

    Keys: ``<metric>`` (mean, NaN when no task qualified), ``n_classification``,
    ``n_regression`` (tasks scored), ``n_tasks`` (tasks in the model).
    """
    summary: dict[str, float] = {}
    for kind, names in (("classification", CLASSIFICATION_METRICS), ("regression", REGRESSION_METRICS)):
        scored = [m for t, m in per_task.items() if kinds.get(t) == kind]
        summary[f"n_{kind}"] = float(len(scored))
        for name in names:
            vals = [m[name] for m in scored if name in m and np.isfinite(m[name])]
            summary[name] = float(np.mean(vals)) if vals else float("nan")
    summary["n_tasks"] = float(len(kinds))
    return summary
