import numpy as np
import pytest

from fedmol.models.uncertainty import ConformalCalibration, ConformalClassifier, ConformalRegressor


def _calibrated(n, seed):
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, size=n)
    y = (rng.random(n) < p).astype(float)
    return y, p


@pytest.mark.parametrize("confidence", [0.8, 0.9])
def test_mondrian_classification_coverage_per_class(confidence):
    y_cal, p_cal = _calibrated(2000, 0)
    y_test, p_test = _calibrated(4000, 1)
    cp = ConformalClassifier.fit(y_cal, p_cal)
    sets = cp.predict_set(p_test, confidence)
    for c in (0, 1):
        covered = sets[y_test == c, c].mean()
        assert abs(covered - confidence) < 0.04, (c, covered)


@pytest.mark.parametrize("confidence", [0.8, 0.95])
def test_regression_interval_coverage(confidence):
    rng = np.random.default_rng(2)
    pred_cal, pred_test = rng.normal(size=1000), rng.normal(size=3000)
    y_cal = pred_cal + rng.normal(scale=0.5, size=1000)
    y_test = pred_test + rng.normal(scale=0.5, size=3000)
    cr = ConformalRegressor.fit(y_cal, pred_cal)
    lo, hi = cr.interval(pred_test, confidence)
    coverage = ((y_test >= lo) & (y_test <= hi)).mean()
    assert abs(coverage - confidence) < 0.03


def test_p_values_and_json_round_trip():
    y, p = _calibrated(300, 3)
    cal = ConformalCalibration(classifiers={"a": ConformalClassifier.fit(y, p)},
                               regressors={"r": ConformalRegressor.fit(p, p + 0.1, np.zeros(300))}, fold=1)
    again = ConformalCalibration.from_json(cal.to_json())
    np.testing.assert_allclose(again.classifiers["a"].p_values(p[:20]), cal.classifiers["a"].p_values(p[:20]))
    assert again.regressors["r"].half_width(0.9) == pytest.approx(cal.regressors["r"].half_width(0.9))
    pv = cal.classifiers["a"].p_values(np.array([0.0, 1.0]))
    assert pv[0, 0] > pv[0, 1] and pv[1, 1] > pv[1, 0]
    assert ((pv > 0) & (pv <= 1)).all()
    assert again.fold == 1
