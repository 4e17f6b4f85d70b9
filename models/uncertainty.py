"""Per-prediction uncertainty: split-conformal calibration on a validation fold (MC dropout, the
other half, is `fedmol.models.training.predict` with ``mc_samples``).

Conformal objects keep the calibration set's nonconformity scores (sorted), so they answer at
any confidence later and serialise to plain JSON.

* Classification, Mondrian (class-conditional): the score of class c for probability p is
  ``1 - p`` for c = 1 and ``p`` for c = 0; the p-value of class c for a new compound is
  ``(#{calibration compounds of class c with score >= its score} + 1) / (n_c + 1)``. The
  prediction set at confidence 1 - eps holds every class with p-value > eps; coverage holds per
  class (Vovk et al. 2005; Norinder et al. 2014 for QSAR).
* Regression: absolute residuals of exact (uncensored) calibration points; the interval at
  confidence 1 - eps is ``prediction ± q`` with q the ceil((n + 1)(1 - eps))-th smallest residual.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmol.models.data import TaskData
from fedmol.models.network import MultiTaskNet

if TYPE_CHECKING:
    from fedmol.models.training import Predictions

__all__ = ["ConformalClassifier", "ConformalRegressor", "ConformalCalibration", "calibrate"]

_DECIMALS = 6  # scores are stored rounded: JSON stays small and exact enough for p-values


@dataclass
class ConformalClassifier:
    """Mondrian conformal predictor for one binary task: sorted calibration scores per class."""

    scores0: np.ndarray  # (n_0,) sorted scores (= p) of calibration negatives
    scores1: np.ndarray  # (n_1,) sorted scores (= 1 - p) of calibration positives

    @classmethod
    def fit(cls, y_true: np.ndarray, y_prob: np.ndarray) -> ConformalClassifier:
        """y_true: (n,) in {0, 1} (NaN dropped); y_prob: (n,) predicted P(active)."""
        y_true = np.asarray(y_true, dtype=np.float64)
        y_prob = np.asarray(y_prob, dtype=np.float64)
        keep = ~np.isnan(y_true)
        y, p = y_true[keep], y_prob[keep]
        return cls(scores0=np.sort(np.round(p[y == 0], _DECIMALS)),
                   scores1=np.sort(np.round(1.0 - p[y == 1], _DECIMALS)))

    def p_values(self, y_prob: np.ndarray) -> np.ndarray:
        """(n, 2) p-values of class 0 and class 1 for predicted probabilities (n,)."""
        p = np.round(np.asarray(y_prob, dtype=np.float64), _DECIMALS)
        out = np.empty((len(p), 2))
        alphas = (p, np.round(1.0 - p, _DECIMALS))  # score of class 0, of class 1
        for c, (scores, alpha) in enumerate(zip((self.scores0, self.scores1), alphas, strict=True)):
            n_ge = len(scores) - np.searchsorted(scores, alpha, side="left")
            out[:, c] = (n_ge + 1) / (len(scores) + 1)
        return out

    def predict_set(self, y_prob: np.ndarray, confidence: float = 0.8) -> np.ndarray:
        """(n, 2) bool: is class 0 / class 1 in the prediction set at ``confidence``."""
        return self.p_values(y_prob) > (1.0 - confidence)

    def to_dict(self) -> dict[str, Any]:
        return {"scores0": self.scores0.tolist(), "scores1": self.scores1.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalClassifier:
        return cls(scores0=np.asarray(d["scores0"], dtype=np.float64),
                   scores1=np.asarray(d["scores1"], dtype=np.float64))


@dataclass
class ConformalRegressor:
    """Split-conformal intervals for one regression task from sorted absolute residuals."""

    residuals: np.ndarray  # (n,) sorted |y - prediction| of exact calibration points, task units

    @classmethod
    def fit(
        cls, y_true: np.ndarray, y_pred: np.ndarray, censor: np.ndarray | None = None
    ) -> ConformalRegressor:
        y_true = np.asarray(y_true, dtype=np.float64)
        y_pred = np.asarray(y_pred, dtype=np.float64)
        keep = ~np.isnan(y_true)
        if censor is not None:
            keep &= np.asarray(censor) == 0
        return cls(residuals=np.sort(np.round(np.abs(y_true[keep] - y_pred[keep]), _DECIMALS)))

    def half_width(self, confidence: float = 0.8) -> float:
        """q: the ceil((n + 1) confidence)-th smallest residual (inf when n is too small)."""
        n = len(self.residuals)
        k = math.ceil((n + 1) * confidence)
        return float(self.residuals[k - 1]) if 1 <= k <= n else float("inf")

    def interval(self, y_pred: np.ndarray, confidence: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) (n,) each, in task units."""
        q = self.half_width(confidence)
        y_pred = np.asarray(y_pred, dtype=np.float64)
        return y_pred - q, y_pred + q

    def to_dict(self) -> dict[str, Any]:
        return {"residuals": self.residuals.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalRegressor:
        return cls(residuals=np.asarray(d["residuals"], dtype=np.float64))


@dataclass
class ConformalCalibration:
    """Conformal predictors per task, fitted on one fold; JSON-serialisable."""

    classifiers: dict[str, ConformalClassifier] = field(default_factory=dict)
    regressors: dict[str, ConformalRegressor] = field(default_factory=dict)
    fold: int | None = None

    def to_json(self) -> str:
        return json.dumps({
            "method": "split-conformal (Mondrian for classification)",
            "fold": self.fold,
            "classification": {t: c.to_dict() for t, c in self.classifiers.items()},
            "regression": {t: r.to_dict() for t, r in self.regressors.items()},
        })

    @classmethod
    def from_json(cls, text: str) -> ConformalCalibration:
        d = json.loads(text)
        return cls(
            classifiers={t: ConformalClassifier.from_dict(v) for t, v in d.get("classification", {}).items()},
            regressors={t: ConformalRegressor.from_dict(v) for t, v in d.get("regression", {}).items()},
            fold=d.get("fold"),
        )


def calibrate(model: MultiTaskNet, data: TaskData, *, fold: int | None = None, min_per_class: int = 1,
              batch_size: int = 1024) -> ConformalCalibration:
    """Fit conformal predictors for every task with labels in ``data`` (a `TaskData`, the
    validation fold). A classification task needs ``min_per_class`` labels of each class."""
    # Imported here, not at the top: training brings scikit-learn (its metrics), and loading a model
    # to score (fedmol.models.io reads ConformalCalibration) should not pay for it.
    from fedmol.models.training import predict, single_threaded_blas

    preds = predict(model, data.X, batch_size=batch_size, transformed=True)
    with single_threaded_blas():
        return _fit_calibration(model, data, preds, fold, min_per_class)


def _fit_calibration(model: MultiTaskNet, data: TaskData, preds: Predictions, fold: int | None,
                     min_per_class: int) -> ConformalCalibration:
    cal = ConformalCalibration(fold=fold)
    for head in model.spec.heads:
        labels = data.heads[head.name]
        for j, task in enumerate(head.tasks):
            y = labels.values[:, j]
            if head.kind == "classification":
                if (y == 1).sum() >= min_per_class and (y == 0).sum() >= min_per_class:
                    cal.classifiers[task] = ConformalClassifier.fit(y, preds[task])
            elif ((labels.censor[:, j] == 0) & ~np.isnan(y)).sum() >= 1:
                cal.regressors[task] = ConformalRegressor.fit(y, preds[task], labels.censor[:, j])
    return cal
