"""Membership-inference maths: attack scores from per-label losses, attack metrics, LiRA, canary exposure.

Model-agnostic: everything here takes numpy arrays. A *score* is higher for a compound the attacker
thinks was trained on (a member). `fedmol.client.audit` computes the per-label losses of a site's
models and runs the attacks on its own store.

Per compound, from its per-label losses ``l`` (NaN where it has no label; BCE in nats for a
classification label, the censored squared error of the standardised value for a regression one):

* **loss** attack: score = -(mean of l over the compound's labels);
* **confidence** attack: score = mean of exp(-l) over its labels: for a classification label that is
  the model's probability of the true label; for a regression label exp(-squared error);
* **LiRA** statistic (Carlini et al. 2022, "Membership inference attacks from first principles"):
  the mean over its labels of the logit-scaled confidence log(c / (1 - c)), c = exp(-l), which for a
  classification label is the true label's logit margin. `lira_scores` turns the statistic of the
  target model and of reference models (trained with or without the compound) into a likelihood ratio.

Metrics (`evaluate_attack`): ROC-AUC and the TPR at a low FPR, linearly interpolated on the ROC
curve of `sklearn.metrics.roc_curve` (at an FPR the curve reaches several times, its highest TPR).

Exposure (Carlini et al. 2019, "The Secret Sharer"): a canary's rank among ``R`` reference canaries that
were not inserted (rank 1: the lowest loss), exposure = log2(R + 1) - log2(rank); at most log2(R + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["AttackResult", "compound_statistics", "evaluate_attack", "exposure", "lira_scores", "tpr_at_fpr",
           "balanced_in_mask", "FPR_LEVELS"]

FPR_LEVELS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
_MIN_LOSS = 1e-12  # a label's loss floor for log(1 - exp(-l)): a loss of exactly 0 would be +inf


@dataclass
class AttackResult:
    """One attack's ROC-AUC, TPR at 1 % and 0.1 % FPR and counts; ``fpr``/``tpr``: its ROC curve."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    n_members: int
    n_nonmembers: int
    fpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    tpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        """The audit file's attack entry (PREAMBLE contract 3)."""
        return {"auc": self.auc, "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr, "tpr_at_0.1pct_fpr": self.tpr_at_01pct_fpr,
                "n_members": self.n_members, "n_nonmembers": self.n_nonmembers}


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The TPR at FPR ``target`` on the ROC curve (``fpr`` non-decreasing, as `roc_curve` gives it),
    linearly interpolated between the curve's points; where the curve is vertical (several TPRs at
    one FPR) the highest TPR counts."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.size == 0:
        return float("nan")
    xs, start = np.unique(fpr, return_index=True)
    highest = np.maximum.reduceat(tpr, start)  # fpr is sorted: each unique value's run of points
    return float(np.interp(target, xs, highest))


def evaluate_attack(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> AttackResult:
    """ROC-AUC, TPR at 1 % and 0.1 % FPR of scores that are higher for members.

    Non-finite scores: +inf ranks above every finite score, -inf below; NaN raises ValueError.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    m = np.asarray(member_scores, dtype=np.float64).ravel()
    n = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if m.size == 0 or n.size == 0:
        raise ValueError(f"an attack needs members and non-members: got {m.size} and {n.size}")
    scores = np.concatenate([m, n])
    if np.isnan(scores).any():
        raise ValueError("attack scores hold NaN")
    finite = scores[np.isfinite(scores)]
    hi, lo = (finite.max(), finite.min()) if finite.size else (1.0, 0.0)
    scores = np.where(scores == np.inf, hi + 1.0, np.where(scores == -np.inf, lo - 1.0, scores))
    y = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    fpr, tpr, _ = roc_curve(y, scores)
    return AttackResult(auc=float(roc_auc_score(y, scores)),
                        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, FPR_LEVELS["tpr_at_1pct_fpr"]),
                        tpr_at_01pct_fpr=tpr_at_fpr(fpr, tpr, FPR_LEVELS["tpr_at_0.1pct_fpr"]),
                        n_members=int(m.size), n_nonmembers=int(n.size), fpr=fpr, tpr=tpr)


def compound_statistics(losses: np.ndarray) -> dict[str, np.ndarray]:
    """Per-compound attack statistics from per-label losses (n, L), NaN where a compound has no label.

    Returns ``loss`` (the loss attack's score: minus the mean loss), ``confidence`` (mean exp(-loss))
    and ``lira`` (mean logit-scaled confidence), each (n,); NaN for a compound without labels.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(f"losses must be (compounds, labels), got shape {losses.shape}")
    present = ~np.isnan(losses)
    count = present.sum(axis=1)
    safe = np.where(present, np.maximum(losses, 0.0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_loss = safe.sum(axis=1) / count
        conf = np.where(present, np.exp(-safe), 0.0).sum(axis=1) / count
        clipped = np.maximum(safe, _MIN_LOSS)
        logit = np.where(present, -clipped - np.log(-np.expm1(-clipped)), 0.0)  # log c - log(1 - c)
        lira = logit.sum(axis=1) / count
    none = count == 0
    return {"loss": np.where(none, np.nan, -mean_loss), "confidence": np.where(none, np.nan, conf),
            "lira": np.where(none, np.nan, lira)}


def balanced_in_mask(n_models: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n_models, n) bool: which reference models train on which compound; each compound is IN for
    exactly ``n_models // 2`` models (LiRA's balanced assignment), each model on about half of them."""
    if n_models < 2:
        raise ValueError("LiRA needs at least 2 reference models (one IN and one OUT per compound)")
    order = np.argsort(rng.random((n_models, n)), axis=0)
    return order < n_models // 2


def lira_scores(target: np.ndarray, reference: np.ndarray, reference_in: np.ndarray, *,
                fixed_variance: bool = True) -> np.ndarray:
    """LiRA's likelihood ratio per compound (higher: more likely a member).

    target: (n,) the audited model's statistic (`compound_statistics`'s ``lira``).
    reference: (K, n) the reference models' statistics; reference_in: (K, n) True where reference
    model k trained on compound i.
    Online LiRA where a compound has IN and OUT references: log N(x; mu_in, s_in) - log N(x; mu_out, s_out);
    offline (OUT references only): the one-sided z = (x - mu_out) / s_out. ``fixed_variance``: one
    standard deviation per side over all compounds (LiRA's choice for few reference models), else per
    compound (at least 2 references per side). NaN where a compound has no OUT reference.
    """
    x = np.asarray(target, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    ins = np.asarray(reference_in, dtype=bool)
    if ref.shape != ins.shape or ref.shape[1:] != x.shape:
        raise ValueError(f"reference {ref.shape}, reference_in {ins.shape} and target {x.shape} do not match")
    out = ~ins & np.isfinite(ref)
    ins = ins & np.isfinite(ref)

    def side(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = mask.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = np.where(mask, ref, 0.0).sum(axis=0) / k
            dev = np.where(mask, ref - mu, 0.0)
            if fixed_variance:
                dof = int(k.sum()) - int((k > 0).sum())
                # One reference per compound and side leaves no spread to pool: the spread over compounds.
                pooled = (float(np.sqrt((dev ** 2).sum() / dof)) if dof > 0
                          else float(np.std(ref[mask])) if mask.any() else 1.0)
                sd = np.full(x.shape, pooled)
            else:
                sd = np.sqrt((dev ** 2).sum(axis=0) / np.maximum(k - 1, 1))
        return mu, np.maximum(sd, 1e-6), k

    mu_out, sd_out, k_out = side(out)
    mu_in, sd_in, k_in = side(ins)
    z_out = (x - mu_out) / sd_out
    z_in = (x - mu_in) / sd_in
    online = -0.5 * z_in ** 2 - np.log(sd_in) + 0.5 * z_out ** 2 + np.log(sd_out)
    scores = np.where(k_in > 0, online, z_out)
    return np.where(k_out > 0, scores, np.nan)


def exposure(canary_losses: np.ndarray, reference_losses: np.ndarray) -> np.ndarray:
    """Each canary's exposure among the reference canaries (losses of canaries not trained on):
    rank = 1 + the number of references with a lower loss; exposure = log2(R + 1) - log2(rank)."""
    c = np.asarray(canary_losses, dtype=np.float64).ravel()
    r = np.sort(np.asarray(reference_losses, dtype=np.float64).ravel())
    if r.size == 0:
        raise ValueError("exposure needs reference canaries")
    rank = 1 + np.searchsorted(r, c, side="left")
    return np.log2(r.size + 1) - np.log2(rank)
