"""The membership-inference maths against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmol.models.membership import (
    balanced_in_mask,
    compound_statistics,
    evaluate_attack,
    exposure,
    lira_scores,
    tpr_at_fpr,
)


def test_perfect_separation_has_auc_1_and_tpr_1_at_every_fpr():
    r = evaluate_attack(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0]))
    assert r.auc == 1.0
    assert r.tpr_at_1pct_fpr == 1.0 and r.tpr_at_01pct_fpr == 1.0
    assert (r.n_members, r.n_nonmembers) == (3, 3)
    d = r.to_dict()
    assert set(d) == {"auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "n_members", "n_nonmembers"}


def test_reversed_scores_have_auc_0_and_no_tpr_at_low_fpr():
    r = evaluate_attack(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    assert r.auc == 0.0
    assert r.tpr_at_1pct_fpr == 0.0


def test_identical_distributions_have_auc_near_half_and_tpr_near_fpr():
    rng = np.random.default_rng(0)
    r = evaluate_attack(rng.normal(size=20_000), rng.normal(size=20_000))
    assert r.auc == pytest.approx(0.5, abs=0.01)
    assert r.tpr_at_1pct_fpr == pytest.approx(0.01, abs=0.005)
    assert r.tpr_at_01pct_fpr < 0.005


def test_tpr_at_fpr_is_interpolated_on_the_hand_computed_roc():
    # Non-members 1..4 (FPR steps of 0.25), members 2.5..5.5. ROC points (highest TPR per FPR):
    # (0, .5), (.25, .75), (.5, 1), (1, 1); AUC = 13 of 16 pairs = 0.8125.
    r = evaluate_attack(np.array([2.5, 3.5, 4.5, 5.5]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert r.auc == pytest.approx(13 / 16)
    assert r.tpr_at_1pct_fpr == pytest.approx(0.5 + 0.01 / 0.25 * 0.25)  # 0.51
    assert r.tpr_at_01pct_fpr == pytest.approx(0.5 + 0.001 / 0.25 * 0.25)  # 0.501
    assert tpr_at_fpr(r.fpr, r.tpr, 0.1) == pytest.approx(0.6)
    assert tpr_at_fpr(r.fpr, r.tpr, 0.375) == pytest.approx(0.875)
    # A vertical step: the highest TPR at that FPR counts.
    assert tpr_at_fpr(np.array([0.0, 0.0, 0.0, 1.0]), np.array([0.0, 0.2, 0.6, 1.0]), 0.0) == pytest.approx(0.6)


def test_infinite_scores_rank_at_the_ends_and_nan_is_refused():
    r = evaluate_attack(np.array([np.inf, 1.0]), np.array([-np.inf, 0.0]))
    assert r.auc == 1.0
    with pytest.raises(ValueError, match="NaN"):
        evaluate_attack(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(ValueError, match="members and non-members"):
        evaluate_attack(np.array([]), np.array([0.0]))


def test_compound_statistics_by_hand():
    p = 0.8  # a classification label predicted with probability 0.8 of its true value
    loss = -math.log(p)
    losses = np.array([[loss, np.nan], [loss, 3 * loss], [np.nan, np.nan]])
    s = compound_statistics(losses)
    assert s["loss"][0] == pytest.approx(-loss)
    assert s["loss"][1] == pytest.approx(-2 * loss)
    assert s["confidence"][0] == pytest.approx(p)
    assert s["confidence"][1] == pytest.approx((p + p ** 3) / 2)
    assert s["lira"][0] == pytest.approx(math.log(p / (1 - p)))  # the true label's logit margin
    assert np.isnan(s["loss"][2]) and np.isnan(s["confidence"][2]) and np.isnan(s["lira"][2])
    assert np.isfinite(compound_statistics(np.array([[0.0]]))["lira"]).all()  # a zero loss stays finite


def test_balanced_in_mask_puts_each_compound_in_half_the_models():
    mask = balanced_in_mask(8, 100, np.random.default_rng(0))
    assert mask.shape == (8, 100)
    assert (mask.sum(axis=0) == 4).all()
    assert 30 < mask.sum(axis=1).min() and mask.sum(axis=1).max() < 70
    with pytest.raises(ValueError):
        balanced_in_mask(1, 10, np.random.default_rng(0))


def test_lira_by_hand_and_separates_members():
    # One compound, IN references at 2 and 4 (mean 3), OUT at -1 and 1 (mean 0): per-compound sd sqrt(2) each.
    ref = np.array([[2.0], [4.0], [-1.0], [1.0]])
    ins = np.array([[True], [True], [False], [False]])
    score = lira_scores(np.array([3.0]), ref, ins, fixed_variance=False)
    assert score[0] == pytest.approx(-0.0 + 0.5 * (3.0 / math.sqrt(2)) ** 2)
    offline = lira_scores(np.array([3.0]), ref, np.zeros_like(ins))  # every reference OUT: z against them all
    assert offline[0] == pytest.approx((3.0 - 1.5) / np.std([2.0, 4.0, -1.0, 1.0], ddof=1))
    assert np.isnan(lira_scores(np.array([3.0]), ref, np.ones_like(ins))[0])  # no OUT reference: no score

    # Compounds of different difficulty: members sit 1 above their own OUT mean, non-members at it.
    rng = np.random.default_rng(1)
    n, k = 400, 16
    difficulty = rng.normal(scale=3.0, size=n)
    ins = balanced_in_mask(k, n, rng)
    ref = difficulty + ins * 1.0 + rng.normal(scale=0.3, size=(k, n))
    member = np.arange(n) < n // 2
    target = difficulty + member * 1.0 + rng.normal(scale=0.3, size=n)
    lira = evaluate_attack(*(lambda s: (s[member], s[~member]))(lira_scores(target, ref, ins)))
    plain = evaluate_attack(target[member], target[~member])
    assert lira.auc > 0.95 > 0.7 > plain.auc  # the per-compound calibration is what LiRA adds


def test_exposure_by_hand():
    refs = np.arange(1.0, 8.0)  # R = 7 reference canaries, losses 1..7: at most log2(8) = 3 bits
    e = exposure(np.array([0.5, 3.5, 7.5]), refs)
    assert e == pytest.approx([3.0, 1.0, 0.0])  # ranks 1, 4, 8
    with pytest.raises(ValueError):
        exposure(np.array([1.0]), np.array([]))
