from __future__ import annotations

import numpy as np

from fedmol.datasets.labels import apply_threshold
from fedmol.datasets.tasks import QuorumSettings, TaskInfo, build_catalogue

N_FOLDS = 5


def _classification_column(n_pos_per_fold: list[int], n_neg_per_fold: list[int]) -> tuple[np.ndarray, ...]:
    y, folds = [], []
    for f, (p, n) in enumerate(zip(n_pos_per_fold, n_neg_per_fold, strict=True)):
        y += [1.0] * p + [0.0] * n
        folds += [f] * (p + n)
    return np.array(y, dtype=np.float32), np.array(folds)


def test_classification_quorums() -> None:
    cases = {
        "ok": ([10] * 5, [10] * 5, True, True),  # 50/50, 10/10 per fold
        "few_actives": ([4] * 5, [20] * 5, False, False),  # 20 actives < 25
        "few_inactives": ([20] * 5, [4] * 5, False, False),
        "thin_fold": ([12, 12, 12, 12, 3], [10] * 5, True, False),  # trains, fold 4 has 3 actives
    }
    for name, (pos, neg, trainable, evaluable) in cases.items():
        y, folds = _classification_column(pos, neg)
        cat = build_catalogue(y[:, None], np.zeros((len(y), 1), np.int8), folds,
                              [TaskInfo(name, "classification")], None, N_FOLDS)
        t = cat[0]
        assert (t.trainable, t.evaluable) == (trainable, evaluable), (name, t)
        assert t.n_pos == sum(pos) and t.n_neg == sum(neg) and t.n_labels == len(y)
        assert bool(t.reason) == (not (trainable and evaluable)), t.reason
    # only fold 0 evaluated: the thin fold no longer matters
    y, folds = _classification_column([12, 12, 12, 12, 3], [10] * 5)
    t = build_catalogue(y[:, None], np.zeros((len(y), 1), np.int8), folds, [TaskInfo("t", "classification")],
                        QuorumSettings(eval_folds=(0,)), N_FOLDS)[0]
    assert t.trainable and t.evaluable


def test_regression_quorums_count_censored_values() -> None:
    n = 60
    folds = np.arange(n) % N_FOLDS
    y = np.linspace(4, 9, n).astype(np.float32)[:, None]
    Y = np.hstack([y, y, y[:, :1].copy()])
    censor = np.zeros((n, 3), np.int8)
    censor[:40, 1] = -1  # task 1: only 20 exact values
    Y[45:, 2] = np.nan  # task 2: 45 values < 50
    tasks = [TaskInfo(f"r{j}", "regression") for j in range(3)]
    cat = build_catalogue(Y, censor, folds, tasks, None, N_FOLDS)
    assert cat[0].trainable and cat[0].evaluable and cat[0].n_censored == 0
    assert not cat[1].trainable and "20 uncensored" in cat[1].reason and cat[1].n_censored == 40
    assert not cat[2].trainable and "45 values < 50" in cat[2].reason


def test_threshold_with_censoring() -> None:
    value = np.array([5.0, 7.0, 8.0, 5.0, 7.0, 5.0, np.nan])
    censor = np.array([0, 0, 1, 1, -1, -1, 0], dtype=np.int8)
    label, ambiguous = apply_threshold(value, censor, 6.0)
    # 5 -> 0, 7 -> 1, >8 -> 1, >5 ambiguous, <7 ambiguous, <5 -> 0, missing stays missing
    assert np.array_equal(label, [0, 1, 1, np.nan, np.nan, 0, np.nan], equal_nan=True)
    assert ambiguous.tolist() == [False, False, False, True, True, False, False]
