"""Masked losses: a missing label never contributes, censored values only penalise one side.

Each function returns the *sum* of per-label losses and the number of labels that counted, so
that a trainer can weigh several heads by their labels (every label counts once) and a
federation can report how much data a round saw. ``mean`` = sum / max(count, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_bce", "censored_mse", "LossSum"]


@dataclass(frozen=True)
class LossSum:
    """Sum of per-label losses (scalar Tensor) and the count of labels that counted (scalar Tensor)."""

    total: Tensor
    count: Tensor

    def mean(self) -> Tensor:
        return self.total / self.count.clamp(min=1.0)


def masked_bce(
    logits: Tensor, labels: Tensor, mask: Tensor, task_weights: Tensor | None = None
) -> LossSum:
    """Binary cross-entropy over present labels.

    logits, labels: (B, t) float; labels in {0, 1} (any value where ``mask`` is False).
    mask: (B, t) bool, True where the label is present.
    task_weights: optional (t,) non-negative weight per task column (e.g. to balance tasks).
    Returns (sum of weighted BCE in nats, number of present labels).
    """
    m = mask.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    if task_weights is not None:
        loss = loss * task_weights.to(loss.dtype)
    loss = torch.where(mask, loss, torch.zeros_like(loss))
    return LossSum(loss.sum(), m.sum())


def censored_mse(
    pred: Tensor, target: Tensor, mask: Tensor, censor: Tensor, task_weights: Tensor | None = None
) -> LossSum:
    """Squared error with censored targets.

    pred, target: (B, t) float, same (standardised) units.
    mask: (B, t) bool, True where a target is present.
    censor: (B, t) int: 0 exact; +1 for '>' (true value above target: penalised only when
        pred < target); -1 for '<' (true value below target: penalised only when pred > target).
    Returns (sum of squared errors, number of present targets).
    """
    diff = pred - target.to(pred.dtype)
    above = censor > 0
    below = censor < 0
    diff = torch.where(above, diff.clamp(max=0.0), diff)
    diff = torch.where(below, diff.clamp(min=0.0), diff)
    loss = diff * diff
    if task_weights is not None:
        loss = loss * task_weights.to(loss.dtype)
    loss = torch.where(mask, loss, torch.zeros_like(loss))
    return LossSum(loss.sum(), mask.to(pred.dtype).sum())
