"""Best-round selection and early stopping of a federation.

Every round the sites evaluate the global model they received on their validation folds
(`fedmol.client.site.SiteNode.evaluate_round`: summary ``valid_score``, the mean ROC-AUC / R² over
the site's scored tasks, and ``valid_n_labels``). The **federated validation score** of a round is
the mean of the sites' ``valid_score`` weighted by their number of validation labels; a site whose
score is missing or NaN (no task had enough labels to be scored) is left out, so it cannot poison
the mean.

`BestRound` is a round hook (`fedmol.server.rounds.RoundHook`) that keeps the best round's global
model (a copy of its arrays): that model, not the last round's, is the one evaluated for the last
time at the sites, saved and registered. Ties go to the earlier round. With ``patience`` > 0 it
says when the federation should stop: after ``patience`` evaluated rounds without a better score.
``num-server-rounds`` is then a maximum. The final evaluation (``wire.CFG_FINAL``) is never a
candidate: it re-evaluates (and lets the sites personalise) the chosen model.

Its state (scores, best round, the stop) travels in the checkpoint, so a resumed federation keeps
the best round found before the interruption (`fedmol.server.checkpoint.Checkpoint`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmol import wire
from fedmol.records import from_array_record
from fedmol.server.rounds import RoundBook, RoundOutcome, SiteReport

log = logging.getLogger("fedmol.server")

VALID_SCORE = "valid_score"  # summary key of a site's evaluation: its validation score
VALID_LABELS = "valid_n_labels"  # summary key: its number of validation labels (the weight)


@dataclass(frozen=True)
class FederatedScore:
    """The federated validation score of one evaluation, and what it rests on."""

    score: float | None  # None when no site reported a finite validation score
    labels: float  # the validation labels behind it (the sum of the weights)
    sites: tuple[str, ...]  # the sites whose score counted


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def site_weight(report: SiteReport) -> float:
    """A site's weight in the federated validation score: its number of validation labels.

    Sites that do not report ``valid_n_labels`` (older sites) are weighted by their evaluation
    labels (``wire.NUM_EVAL_LABELS``: validation + test, proportional when the folds are alike),
    or equally when they report neither.
    """
    for value in (report.summary.get(VALID_LABELS), report.metrics.get(wire.NUM_EVAL_LABELS)):
        n = _number(value)
        if n is not None and n > 0:
            return n
    return 1.0


def federated_valid_score(reports: Iterable[SiteReport]) -> FederatedScore:
    """The label-weighted mean of the sites' validation scores; sites without one are skipped."""
    total, labels, sites = 0.0, 0.0, []
    for rep in reports:
        score = _number(rep.summary.get(VALID_SCORE))
        if score is None:
            continue
        weight = site_weight(rep)
        total += weight * score
        labels += weight
        sites.append(rep.site)
    return FederatedScore(total / labels if labels > 0 else None, labels, tuple(sites))


class BestRound:
    """Keeps the best round's global model by federated validation score; says when to stop.

    ``patience`` 0 never stops (the federation runs every round it was given). A round whose score
    is None (no site could score) is no improvement. When no round was ever scored there is no
    best round: `chosen` then falls back to the last model, as before best-round selection.
    """

    def __init__(self, patience: int = 0) -> None:
        if patience < 0:
            raise ValueError("patience must be >= 0")
        self.patience = patience
        self.scores: dict[int, float | None] = {}  # evaluated round -> federated validation score
        self.best_round: int | None = None
        self.best_score: float | None = None
        self.best_arrays: dict[str, np.ndarray] | None = None
        self.stopped_at: int | None = None  # the evaluated round after which the federation stopped

    # -- the round hook ----------------------------------------------------------------------
    def on_round(self, outcome: RoundOutcome, strategy: RoundBook) -> None:
        if outcome.phase != "evaluate" or outcome.final:
            return
        fed = federated_valid_score(outcome.reports)
        arrays = None if outcome.arrays is None else from_array_record(outcome.arrays)
        improved = self.observe(outcome.server_round, fed.score, arrays)
        if fed.score is None:
            log.info("round %d: no site reported a validation score", outcome.server_round)
        else:
            log.info("round %d: federated validation score %.4f over %d sites (%d labels)%s",
                     outcome.server_round, fed.score, len(fed.sites), fed.labels,
                     " - best so far" if improved else
                     f" - best {self.best_score:.4f} at round {self.best_round}")

    def observe(self, server_round: int, score: float | None, arrays: dict[str, np.ndarray] | None) -> bool:
        """Record one evaluated round; True when it is the new best (strictly better: ties keep
        the earlier round). ``arrays``: the global model that was evaluated (copied when kept, unless
        read-only: a record's kept arrays, `fedmol.records.from_array_record`, never change)."""
        score = _number(score)
        self.scores[server_round] = score
        if score is None or (self.best_score is not None and not score > self.best_score):
            return False
        if arrays is None:
            log.warning("round %d: best validation score but no model to keep", server_round)
            return False
        self.best_round, self.best_score = server_round, score
        self.best_arrays = {k: np.array(v, copy=True) if v.flags.writeable else v for k, v in arrays.items()}
        return True

    # -- the decision ------------------------------------------------------------------------
    @property
    def last_evaluated(self) -> int:
        return max(self.scores, default=0)

    @property
    def rounds_without_improvement(self) -> int:
        """Evaluated rounds after the best one (0 before any round was scored)."""
        return 0 if self.best_round is None else self.last_evaluated - self.best_round

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.best_round is not None and self.rounds_without_improvement >= self.patience

    def stop(self) -> None:
        """The federation stops here (called by the round loop when it acts on `should_stop`)."""
        self.stopped_at = self.last_evaluated

    def chosen(self, last_round: int, last_arrays: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        """The round and model to finish with: the best round's, or the last model when no round
        was ever scored."""
        if self.best_round is None or self.best_arrays is None:
            return last_round, last_arrays
        return self.best_round, self.best_arrays

    def reason(self, max_rounds: int, *, discarded_round: int | None = None) -> str:
        """Which round was chosen and why, in words (MLflow tag ``fedmol.stop-reason``)."""
        if self.best_round is None or self.best_score is None:
            head = "no site reported a validation score in any round: the last round's model is kept"
        else:
            head = f"best federated validation score {self.best_score:.4f} at round {self.best_round}"
        if self.stopped_at is None:
            return f"{head}; ran all {max_rounds} rounds"
        tail = (f"; stopped at round {self.stopped_at} after {self.stopped_at - (self.best_round or 0)} rounds "
                f"without improvement (patience {self.patience})")
        if discarded_round is not None:
            tail += f"; round {discarded_round}'s training, which carried that evaluation, was discarded"
        return head + tail

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-able state (the best arrays travel apart, `fedmol.server.checkpoint.Checkpoint`)."""
        return {"patience": self.patience, "scores": {str(k): v for k, v in sorted(self.scores.items())},
                "best_round": self.best_round, "best_score": self.best_score, "stopped_at": self.stopped_at}

    def restore(self, state: dict[str, Any], best_arrays: dict[str, np.ndarray] | None) -> None:
        """Continue from a checkpoint's `state` (the patience of the new run config stays)."""
        if not state:
            return
        self.scores = {int(k): _number(v) for k, v in dict(state.get("scores", {})).items()}
        self.stopped_at = state.get("stopped_at")
        best_round = state.get("best_round")
        if best_round is not None and best_arrays is None:
            log.warning("the checkpoint names round %s as the best but holds no copy of its model: "
                        "best-round selection starts afresh", best_round)
            return
        self.best_round, self.best_score = best_round, _number(state.get("best_score"))
        self.best_arrays = best_arrays
