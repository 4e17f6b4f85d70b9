import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, r2_score, roc_auc_score

from fedmol.models.metrics import (
    MetricThresholds,
    classification_metrics,
    expected_calibration_error,
    regression_metrics,
    summarise,
)


def _cls_arrays():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    return y, p


def test_classification_metrics_match_sklearn():
    y, p = _cls_arrays()
    y_missing = y.copy()
    y_missing[:10] = np.nan
    m = classification_metrics(y_missing, p)
    keep = slice(10, None)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y[keep], p[keep]))
    assert m["auc_pr"] == pytest.approx(average_precision_score(y[keep], p[keep]))
    assert m["brier"] == pytest.approx(brier_score_loss(y[keep], p[keep]))
    assert m["n"] == 190


def test_thresholds_decide_which_tasks_qualify():
    y = np.array([1] * 10 + [0] * 100, dtype=float)
    p = np.linspace(0, 1, 110)
    assert classification_metrics(y, p) is None  # 10 positives < 25
    assert classification_metrics(y, p, MetricThresholds(min_pos=10, min_neg=10)) is not None


def test_ece_hand_made():
    # two bins: probs 0.05 (labels 0,0) and 0.95 (labels 1,0): |0-0.05|*0.5 + |0.5-0.95|*0.5
    assert expected_calibration_error(np.array([0, 0, 1, 0]), np.array([0.05, 0.05, 0.95, 0.95])) == (
        pytest.approx(0.5 * 0.05 + 0.5 * 0.45))


def test_regression_metrics_keep_censored_points_apart():
    rng = np.random.default_rng(1)
    y = rng.normal(size=60)
    pred = y + rng.normal(scale=0.3, size=60)
    censor = np.zeros(60, dtype=np.int8)
    censor[:4] = [1, 1, -1, -1]
    pred[:4] = y[:4] + np.array([-1.0, 1.0, -1.0, 1.0])  # wrong, right, right, wrong
    m = regression_metrics(y, pred, censor)
    assert m["r2"] == pytest.approx(r2_score(y[4:], pred[4:]))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y[4:] - pred[4:]) ** 2)))
    assert m["pearson_r"] == pytest.approx(np.corrcoef(y[4:], pred[4:])[0, 1])
    assert m["n"] == 56 and m["n_censored"] == 4 and m["censored_wrong_side"] == pytest.approx(0.5)
    assert regression_metrics(y[:10], pred[:10]) is None


def test_summary_means_over_qualifying_tasks():
    per_task = {"a": {"roc_auc": 0.8}, "b": {"roc_auc": 0.6}, "r": {"r2": 0.5, "rmse": 1.0}}
    s = summarise(per_task, {"a": "classification", "b": "classification", "c": "classification",
                             "r": "regression"})
    assert s["roc_auc"] == pytest.approx(0.7) and s["n_classification"] == 2
    assert s["r2"] == pytest.approx(0.5) and s["n_regression"] == 1 and s["n_tasks"] == 4
