"""Round hooks: MLflow tracking and checkpoints, written once and plugged into `HookedStrategy`.

One MLflow run per federation. A resumed federation reopens the same run (its id is in the
checkpoint). Only aggregates are logged: per-round means, per-site means and counts, under the
sites' names; never a structure or a per-compound value.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from fedmol.config import FederationConfig
from fedmol.server.checkpoint import Checkpoint
from fedmol.server.rounds import RoundBook, RoundOutcome
from fedmol.server.strategies import strategy_state

log = logging.getLogger("fedmol.server")

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")


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
        rnd, phase = outcome.server_round, outcome.phase
        metrics: dict[str, float] = {}
        if outcome.metrics is not None:
            for k, v in outcome.metrics.items():
                if not isinstance(v, list):
                    metrics[metric_key(phase, k)] = float(v)
        if phase == "train":  # wall time from the previous aggregation (or the start) to this one
            now = time.monotonic()
            metrics["round-wall-seconds"] = now - self._last_aggregation
            self._last_aggregation = now
        metrics[metric_key(phase, "sites-answered")] = len(outcome.reports)
        metrics[metric_key(phase, "sites-missing")] = len(outcome.missing)
        metrics[metric_key(phase, "updates-rejected")] = len(outcome.rejected)
        for rep in outcome.reports:
            for k, v in rep.metrics.items():
                metrics[metric_key("site", rep.site, phase, k)] = v
            for k, v in rep.summary.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    metrics[metric_key("site", rep.site, k)] = float(v)
        # Consortium-level means over the sites' own means (each site a vote).
        for key in _summary_keys(outcome):
            vals = [float(r.summary[key]) for r in outcome.reports
                    if isinstance(r.summary.get(key), (int, float)) and math.isfinite(float(r.summary[key]))]
            if vals:
                metrics[metric_key("consortium", key)] = sum(vals) / len(vals)
        self.log_metrics(metrics, step=rnd)
        if outcome.missing:
            self.set_tag(f"fedmol.missing.round-{rnd}.{phase}", ",".join(outcome.missing))
        if outcome.rejected:
            self.set_tag(f"fedmol.rejected.round-{rnd}",
                         "; ".join(f"{s}: {r}" for s, r in outcome.rejected)[:4900])
        self.set_tag("fedmol.last-round", str(rnd))


def _summary_keys(outcome: RoundOutcome) -> list[str]:
    keys: set[str] = set()
    for rep in outcome.reports:
        keys.update(k for k, v in rep.summary.items() if k.startswith(("valid", "test")) and
                    isinstance(v, (int, float)) and not isinstance(v, bool))
    return sorted(keys)


class Checkpointer:
    """Saves the global model and server-optimiser state after each completed round."""

    def __init__(self, cfg: FederationConfig, federation_id: str, mlflow_run_id: str) -> None:
        self.root = cfg.output_path
        self.federation_id = federation_id
        self.mlflow_run_id = mlflow_run_id
        self.last_path: Path | None = None

    def on_round(self, outcome: RoundOutcome, strategy: RoundBook) -> None:
        # After the evaluation when it has its own message; with evaluate-in-train right after
        # aggregation (round r's evaluation then comes with round r+1, also after a resume).
        if outcome.phase != ("train" if strategy.evaluate_in_train else "evaluate") or strategy.last_arrays is None:
            return
        ckpt = Checkpoint(
            federation_id=self.federation_id,
            server_round=outcome.server_round,
            mlflow_run_id=self.mlflow_run_id,
            reference_hash=strategy.expected_fingerprint,
            sites=sorted(set(strategy.site_names.values())),
            arrays={k: v.numpy() for k, v in strategy.last_arrays.items()},
            strategy_state=strategy_state(strategy.inner),
        )
        self.last_path = ckpt.save(self.root)
        log.info("round %d: checkpoint written to %s", outcome.server_round, self.last_path)
