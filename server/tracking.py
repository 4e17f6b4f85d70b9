"""Round hooks: MLflow tracking and checkpoints, written once and plugged into `HookedStrategy`.

One MLflow run per federation. A resumed federation reopens the same run (its id is in the
checkpoint). Only aggregates are logged: per-round means, per-site means and counts, under the
sites' names; never a structure or a per-compound value.

Per round (step = round): ``train/*`` and ``evaluate/*`` (the aggregated metrics), ``site/<site>/...``,
``consortium/<summary key>`` (mean over sites) and ``federated-valid-score`` (the label-weighted
validation score that best-round selection ranks rounds by, `fedmol.server.selection`). The final
evaluation of the chosen model (personalised at the sites) is logged once, at the chosen round's
step, under ``final/*``, ``site/<site>/final/...`` and ``consortium/final/<summary key>``
(``final/federated-valid-score``: with personalisation off, the chosen round's score again). Tags
``fedmol.best-round``, ``fedmol.best-valid-score``, ``fedmol.rounds-run`` and ``fedmol.stop-reason``
say which round's model was kept and why.

Differential privacy (`fedmol.privacy`): tags ``fedmol.dp`` (the mode), ``fedmol.dp-target-epsilon``,
``fedmol.dp-delta`` and ``fedmol.dp-accountant`` (central modes: ``fedmol.dp-noise-multiplier``); per
training round ``site/<site>/dp/epsilon-spent`` (site-dp-sgd: what each site reported, metric
``dp_epsilon_spent``; central DP: the server's account of each site) and ``dp/epsilon-spent``, the
maximum over sites: the federation's figure.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fedmol.config import CENTRAL_DP_MODES, FederationConfig
from fedmol.privacy import ACCOUNTANT, EPSILON_SPENT
from fedmol.records import from_array_record
from fedmol.server.checkpoint import Checkpoint
from fedmol.server.rounds import RoundBook, RoundOutcome
from fedmol.server.selection import BestRound, federated_valid_score
from fedmol.server.strategies import central_noise_multiplier, strategy_state

log = logging.getLogger("fedmol.server")

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")
MAX_ROUNDS_TAG = "fedmol.max-rounds"  # `FederationConfig.max_rounds`; `fedmol consortium status` reads it


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric key from parts joined with '/'."""
    return "/".join("".join(c if c in _SAFE else "_" for c in p) for p in parts)


class MlflowTracker:
    """Logs a federation into one MLflow run (created, or reopened when resuming)."""

    def __init__(self, cfg: FederationConfig, *, run_id: str = "", run_name: str = "") -> None:
        self.cfg = cfg
        self._last_aggregation = time.monotonic()
        self.uri = cfg.resolved_tracking_uri
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            artifact_location = None
            if not self.uri.startswith(("http://", "https://")):
                artifact_location = (cfg.output_path / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(cfg.experiment, artifact_location=artifact_location)
        else:
            experiment_id = exp.experiment_id
        self.experiment_id = experiment_id
        if run_id:
            self.run_id = run_id
            self.client.set_terminated(run_id, status="RUNNING")
            self.client.set_tag(run_id, "fedmol.resumed", "true")
        else:
            run = self.client.create_run(experiment_id, run_name=run_name or cfg.run_name or None,
                                         tags={"fedmol.kind": "federation"})
            self.run_id = run.info.run_id
            params = {k: str(v)[:500] for k, v in cfg.to_run_config().items()}
            self.log_params(params)
        # The most rounds (num-server-rounds, or dp-num-server-rounds under site DP): what status counts down.
        tags = {**dp_tags(cfg), MAX_ROUNDS_TAG: str(cfg.max_rounds)}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    # -- generic logging -------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifact_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    # -- the round hook ----------------------------------------------------------------------
    def on_round(self, outcome: RoundOutcome, strategy: RoundBook) -> None:
        rnd = outcome.server_round
        phase = "final" if outcome.final else outcome.phase  # the final evaluation has keys of its own
        summary = ("final",) if outcome.final else ()  # site/<site>/final/<key>, consortium/final/<key>
        metrics: dict[str, float] = {}
        if outcome.metrics is not None:
            for k, v in outcome.metrics.items():
                if not isinstance(v, list):
                    metrics[metric_key(phase, k)] = float(v)
        if phase == "train":  # wall time from the previous aggregation (or the start) to this one
            now = time.monotonic()
            metrics["round-wall-seconds"] = now - self._last_aggregation
            if outcome.download_bytes is not None:  # the model as it travelled to each site
                metrics["download-bytes-per-site"] = float(outcome.download_bytes)
            self._last_aggregation = now
        if outcome.phase == "evaluate":  # final/federated-valid-score: the chosen model's, evaluated again
            score = federated_valid_score(outcome.reports).score
            if score is not None:
                metrics[metric_key(*(("final",) if outcome.final else ()), "federated-valid-score")] = score
        if phase == "train":
            metrics.update(_dp_metrics(outcome, strategy))
        metrics[metric_key(phase, "sites-answered")] = len(outcome.reports)
        metrics[metric_key(phase, "sites-missing")] = len(outcome.missing)
        metrics[metric_key(phase, "updates-rejected")] = len(outcome.rejected)
        for rep in outcome.reports:
            for k, v in rep.metrics.items():
                metrics[metric_key("site", rep.site, phase, k)] = v
            for k, v in rep.summary.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    metrics[metric_key("site", rep.site, *summary, k)] = float(v)
        # Consortium-level means over the sites' own means (each site a vote).
        for key in _summary_keys(outcome):
            vals = [float(r.summary[key]) for r in outcome.reports
                    if isinstance(r.summary.get(key), (int, float)) and math.isfinite(float(r.summary[key]))]
            if vals:
                metrics[metric_key("consortium", *summary, key)] = sum(vals) / len(vals)
        self.log_metrics(metrics, step=rnd)
        if outcome.missing:
            self.set_tag(f"fedmol.missing.round-{rnd}.{phase}", ",".join(outcome.missing))
        if outcome.rejected:
            self.set_tag(f"fedmol.rejected.round-{rnd}",
                         "; ".join(f"{s}: {r}" for s, r in outcome.rejected)[:4900])
        if outcome.skipped:
            self.set_tag(f"fedmol.skipped.round-{rnd}", outcome.skipped[:4900])
        if not outcome.final:
            self.set_tag("fedmol.last-round", str(rnd))

    def log_selection(self, selection: BestRound, *, rounds_run: int, reason: str) -> None:
        """Which round's model the federation kept, and why (tags: a resumed run may change them)."""
        self.client.log_batch(self.run_id, tags=[
            RunTag("fedmol.best-round", str(selection.best_round if selection.best_round is not None else "")),
            RunTag("fedmol.best-valid-score",
                   "" if selection.best_score is None else f"{selection.best_score:.6g}"),
            RunTag("fedmol.rounds-run", str(rounds_run)),
            RunTag("fedmol.stop-reason", reason[:4900]),
        ])


def dp_tags(cfg: FederationConfig) -> dict[str, str]:
    """The run's DP mode and budget, as MLflow tags."""
    if cfg.dp == "off":
        return {"fedmol.dp": "off"}
    tags = {"fedmol.dp": cfg.dp, "fedmol.dp-target-epsilon": f"{cfg.dp_epsilon:g}",
            "fedmol.dp-delta": f"{cfg.dp_delta:g}", "fedmol.dp-accountant": ACCOUNTANT}
    if cfg.dp in CENTRAL_DP_MODES:
        tags["fedmol.dp-noise-multiplier"] = f"{central_noise_multiplier(cfg):.6g}"
    return tags


def _dp_metrics(outcome: RoundOutcome, strategy: RoundBook) -> dict[str, float]:
    """Each site's epsilon spent so far and the maximum over sites (site-dp-sgd: as the sites
    report it; central DP: the strategy's account)."""
    spent = {rep.site: float(rep.metrics[EPSILON_SPENT]) for rep in outcome.reports if EPSILON_SPENT in rep.metrics}
    account = getattr(getattr(strategy, "inner", None), "epsilon_by_site", None)
    if callable(account):
        spent.update(account())
    out = {metric_key("site", site, "dp", "epsilon-spent"): eps for site, eps in spent.items()}
    if spent:
        out["dp/epsilon-spent"] = max(spent.values())
    return out


def _summary_keys(outcome: RoundOutcome) -> list[str]:
    keys: set[str] = set()
    for rep in outcome.reports:
        keys.update(k for k, v in rep.summary.items() if k.startswith(("valid", "test")) and
                    isinstance(v, (int, float)) and not isinstance(v, bool))
    return sorted(keys)


class Checkpointer:
    """Saves the global model, server-optimiser state and best-round selection after each
    completed round. Put ``selection`` before this hook, so that a round's score is in its checkpoint."""

    def __init__(self, cfg: FederationConfig, federation_id: str, mlflow_run_id: str, *,
                 selection: BestRound | None = None) -> None:
        self.root = cfg.output_path
        self.federation_id = federation_id
        self.mlflow_run_id = mlflow_run_id
        self.selection = selection
        # The best round whose model is on disk (a resumed run finds its predecessor's file there).
        self._best_written = None if selection is None else selection.best_round
        self.last_path: Path | None = None

    def on_round(self, outcome: RoundOutcome, strategy: RoundBook) -> None:
        # After the evaluation when it has its own message; with evaluate-in-train right after
        # aggregation (round r's evaluation then comes with round r+1, also after a resume).
        if outcome.final or outcome.phase != ("train" if strategy.evaluate_in_train else "evaluate"):
            return
        self.write(strategy, outcome.server_round)

    def write(self, strategy: RoundBook, server_round: int) -> None:
        """A checkpoint of ``strategy``'s global model as the state after ``server_round``."""
        if strategy.last_arrays is None:
            return
        selection = self.selection
        best = None
        if selection is not None and selection.best_round != self._best_written:
            best = selection.best_arrays  # a new best round: its model is written once
        ckpt = Checkpoint(
            federation_id=self.federation_id,
            server_round=server_round,
            mlflow_run_id=self.mlflow_run_id,
            reference_hash=strategy.expected_fingerprint,
            sites=sorted(set(strategy.site_names.values())),
            arrays=from_array_record(strategy.last_arrays),
            strategy_state=strategy_state(strategy.inner),
            selection={} if selection is None else selection.state(),
            best_arrays=best,
        )
        self.last_path = ckpt.save(self.root)
        if selection is not None:
            self._best_written = selection.best_round
        log.info("round %d: checkpoint written to %s", server_round, self.last_path)
