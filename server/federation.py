"""A federation from start (or resume) to the registered model; the body of the ServerApp."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.models.network import MultiTaskNet
from fedmol.models.report import GainTable
from fedmol.models.spec import ModelSpec, build_spec
from fedmol.records import from_array_record, to_array_record
from fedmol.server.checkpoint import Checkpoint, resolve_resume
from fedmol.server.registry import register_model, save_shared_model
from fedmol.server.rounds import FederationStopped, HookedStrategy, RoundBook, RoundHook, RoundOutcome
from fedmol.server.secagg import run_secure_rounds
from fedmol.server.selection import BestRound
from fedmol.server.strategies import make_strategy, restore_strategy_state, robust_quorum, strategy_state
from fedmol.server.tracking import Checkpointer, MlflowTracker
from fedmol.transport import download_dtype, fallback_note, transport_label

log = logging.getLogger("fedmol.server")


def initial_shared_arrays(cfg: FederationConfig) -> tuple[dict[str, np.ndarray], ModelSpec]:
    """The shared part of a fresh model (trunk + consortium heads) and its spec, seeded."""
    spec = build_spec(cfg.n_bits, cfg.consortium_task_list, [], hidden=cfg.hidden_sizes,
                      dropout=cfg.dropout, input_transform=cfg.input_transform,
                      allow_no_heads=True)  # only the trunk is shared when every task is private
    model = MultiTaskNet(spec, seed=cfg.seed)
    return {k: v.detach().cpu().numpy() for k, v in model.shared_state_dict().items()}, spec


@dataclass
class FinalReport:
    """Collects the last evaluation's per-site metrics for the federation-gain table.

    ``rows``: site -> task -> metrics on the test fold (the model each site reports as ``test``);
    ``splits``: site -> split (``test``, ``test-local``, ``test-federated``, ...) -> task -> metrics;
    ``personalised``: site -> whether it kept its fine-tuned model (summary ``personalised``).
    """

    rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    splits: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    personalised: dict[str, bool] = field(default_factory=dict)

    def on_round(self, outcome: RoundOutcome, strategy: RoundBook) -> None:
        if outcome.phase != "evaluate":
            return
        self.rows = {r.site: r.task_metrics.get("test", {}) for r in outcome.reports}
        self.splits = {r.site: dict(r.task_metrics) for r in outcome.reports}
        self.personalised = {r.site: bool(r.summary.get("personalised", False)) for r in outcome.reports}

    def table(self, dataset: str) -> GainTable:
        """Per site and task on the test fold: ``local`` (the site's local-only model, when it
        reported one), ``federated`` (the shared model with the site's private heads) and
        ``personalised`` (where the site kept its fine-tuned model)."""
        table = GainTable(dataset, "score")
        for site, splits in self.splits.items():
            plain = splits.get("test-federated", splits.get("test", {}))
            parts = {"local": splits.get("test-local", {}), "federated": plain}
            if self.personalised.get(site) and "test-federated" in splits:
                parts["personalised"] = splits.get("test", {})
            for approach, per_task in parts.items():
                picked = {t: v for t, m in per_task.items() if (v := _score_of(m)) is not None}
                if picked:
                    table.add(approach, site, picked, {t: "roc_auc" if "roc_auc" in per_task[t] else "r2"
                                                       for t in picked})
        return table


def run_federation(grid: Grid, context: Context) -> dict[str, Any]:
    """Run (or resume) the federation described by the run config; return where things are."""
    cfg = FederationConfig.from_run_config(dict(context.run_config))
    cfg.output_path.mkdir(parents=True, exist_ok=True)

    arrays, spec = initial_shared_arrays(cfg)
    start_round, federation_id, mlflow_run_id, reference = 0, "", "", ""
    ckpt: Checkpoint | None = None
    if cfg.resume:
        ckpt = Checkpoint.load(resolve_resume(cfg.resume, cfg.output_path))
        arrays, start_round = ckpt.arrays, ckpt.server_round
        federation_id, mlflow_run_id, reference = ckpt.federation_id, ckpt.mlflow_run_id, ckpt.reference_hash
        log.info("resuming federation %s after round %d", federation_id, start_round)
    federation_id = federation_id or uuid.uuid4().hex[:12]

    tracker = MlflowTracker(cfg, run_id=mlflow_run_id, run_name=cfg.run_name or f"federation-{federation_id}")
    tracker.set_tag("fedmol.federation-id", federation_id)
    tracker.set_tag(f"fedmol.flower-run.{context.run_id}", f"from round {start_round + 1}")
    if note := fallback_note(cfg):  # secure aggregation: the sites send float32 (`fedmol.transport`)
        log.warning(note)
    tracker.set_tag("fedmol.transport", transport_label(cfg))
    if not mlflow_run_id:
        tracker.log_artifact_text(spec.to_json(), "model_spec.json")

    inner = make_strategy(cfg)
    if ckpt is not None:
        restore_strategy_state(inner, ckpt.strategy_state)
    # Best-round selection: the best round's model is the one evaluated last, saved and registered;
    # with `patience` it also stops the federation early.
    selection = BestRound(cfg.patience)
    if ckpt is not None:
        selection.restore(ckpt.selection, ckpt.best_arrays)
    final = FinalReport()
    checkpointer = Checkpointer(cfg, federation_id, tracker.run_id, selection=selection)
    hooks: list[RoundHook] = [selection, tracker, checkpointer, final]
    hooked = HookedStrategy(inner, hooks, round_offset=start_round, total_rounds=cfg.max_rounds,
                            expected_fingerprint=reference, evaluate_in_train=cfg.evaluate_in_train,
                            should_stop=lambda: selection.should_stop, download_dtype=download_dtype(cfg),
                            min_updates=robust_quorum(cfg))
    hooked.last_arrays = to_array_record(arrays)
    try:
        strategy, discarded = _run_rounds(grid, context, cfg, hooked, selection, hooks, arrays,
                                          start_round=start_round, federation_id=federation_id,
                                          reference=reference, tracker=tracker)
        checkpointer.write(strategy, strategy.last_round)  # the selection's last state (a stop included)
    except BaseException:
        tracker.finish("FAILED")  # a resume (resume="latest") reopens the same run
        raise
    assert strategy.last_arrays is not None
    chosen_round, chosen = selection.chosen(strategy.last_round, from_array_record(strategy.last_arrays))
    reason = selection.reason(cfg.max_rounds, discarded_round=discarded)
    tracker.log_selection(selection, rounds_run=strategy.last_round, reason=reason)
    log.info("federation %s: %s", federation_id, reason)

    outputs: dict[str, Any] = {"federation_id": federation_id, "mlflow_run_id": tracker.run_id,
                               "tracking_uri": tracker.uri, "best_round": selection.best_round,
                               "rounds_run": strategy.last_round, "stop_reason": reason}
    out_dir = cfg.output_path / "federations" / federation_id
    out_dir.mkdir(parents=True, exist_ok=True)
    if final.splits:
        table_path = write_federated_table(cfg, final, out_dir)
        for path in sorted(out_dir.glob("federated_table.*")):
            tracker.log_artifact(path, "tables")
        tracker.log_metrics(gain_metrics(GainTable.from_json(table_path)), step=strategy.last_round)
        outputs["table"] = str(table_path)
    model_dir = out_dir / "model"
    save_shared_model(model_dir, spec, chosen,  # the best round's model, not the last round's
                      meta={"federation_id": federation_id, "rounds": strategy.last_round,
                            "max_rounds": cfg.max_rounds, "rounds_run": strategy.last_round,
                            "best_round": chosen_round, "best_valid_score": selection.best_score,
                            "selection": reason,
                            "reference_hash": strategy.expected_fingerprint,
                            "key_fingerprint": strategy.key_fingerprint,
                            "prep_settings": strategy.prep_settings,
                            "run_config": cfg.to_run_config()})
    outputs["model_dir"] = str(model_dir)
    if cfg.register_model:
        outputs["model_uri"] = register_model(tracker, model_dir, cfg.model_name)
    tracker.finish()
    (out_dir / "outputs.json").write_text(json.dumps(outputs, indent=2))
    (cfg.output_path / "last_federation.json").write_text(json.dumps(outputs, indent=2))
    log.info("federation %s done: %s", federation_id, outputs)
    return outputs


def _run_rounds(grid: Grid, context: Context, cfg: FederationConfig, hooked: HookedStrategy,
                selection: BestRound, hooks: list[RoundHook], arrays: dict[str, np.ndarray], *,
                start_round: int, federation_id: str, reference: str,
                tracker: MlflowTracker) -> tuple[RoundBook, int | None]:
    """The rounds, until the last one or an early stop (`BestRound.should_stop`), then the final
    evaluation (``wire.CFG_FINAL``: the sites personalise) of the chosen round's model, once.
    Returns what ran the rounds (``hooked``, or `SecureFedAvg` with secure aggregation) and the
    round whose training was discarded by an early stop (evaluate-in-train), if any."""
    remaining = cfg.max_rounds - start_round
    if selection.stopped_at is not None:
        log.info("the federation stopped early after round %d: no more rounds", selection.stopped_at)
        remaining = 0
    elif remaining <= 0:
        log.info("nothing to do: the checkpoint already has all %d rounds", cfg.max_rounds)
    if cfg.secure_aggregation:  # Flower's SecAgg+ on its legacy path; the same hooks
        if remaining <= 0:  # its final evaluation runs inside Flower's legacy loop, which has no round left
            log.warning("a finished secure-aggregation federation: the final evaluation is not repeated")
            return hooked, None
        tracker.set_tag("fedmol.secure-aggregation", "SecAgg+: the server saw only the sum of the updates")
        return run_secure_rounds(grid, context, cfg, arrays, hooks, federation_id=federation_id,
                                 round_offset=start_round, expected_fingerprint=reference, selection=selection,
                                 resumed_state=strategy_state(hooked.inner)), None
    round_config = ConfigRecord({wire.CFG_FEDERATION_ID: federation_id})
    discarded = None
    assert hooked.last_arrays is not None
    if remaining > 0:
        try:
            hooked.start(grid=grid, initial_arrays=hooked.last_arrays, num_rounds=remaining, timeout=cfg.round_timeout,
                         train_config=round_config, evaluate_config=ConfigRecord(dict(round_config)))
        except FederationStopped as stop:
            selection.stop()
            discarded = stop.discarded_round
            log.info("round %d: no better federated validation score for %d rounds: the federation stops",
                     stop.evaluated_round, selection.patience)
    if selection.stopped_at is None and selection.last_evaluated < hooked.last_round:
        # A resumed federation whose last round was trained but never evaluated.
        hooked.evaluate_model(grid, hooked.last_arrays, model_round=hooked.last_round,
                              config=ConfigRecord(dict(round_config)), timeout=cfg.round_timeout)
    chosen_round, chosen = selection.chosen(hooked.last_round, from_array_record(hooked.last_arrays))
    log.info("final evaluation of round %d's model", chosen_round)
    hooked.final_evaluation(grid, to_array_record(chosen), model_round=chosen_round,
                            config=ConfigRecord(dict(round_config)), timeout=cfg.round_timeout)
    return hooked, discarded


def write_federated_table(cfg: FederationConfig, final: FinalReport, out_dir: Path) -> Path:
    """The federation-gain table of the last evaluation (`FinalReport.table`: local-only, federated
    and personalised per site and task on the test fold, in the baselines' table format) as
    ``federated_table.json`` (returned), ``.md`` and ``.png`` (when matplotlib is there)."""
    table = final.table(cfg.table_name)
    path = out_dir / "federated_table.json"
    table.to_json(path)
    table.to_markdown(path.with_suffix(".md"))
    try:
        table.plot(path.with_suffix(".png"))
    except Exception as exc:  # noqa: BLE001 - a picture is never worth failing the federation for
        log.warning("federation-gain plot not written: %s", exc)
    return path


def gain_metrics(table: GainTable) -> dict[str, float]:
    """MLflow metrics of the gain table: mean over sites per approach (and metric), pairs won."""
    out: dict[str, float] = {}
    for sub in table.by_metric().values():
        for approach, means in sub.summary().items():
            out[f"gain/{sub.metrics[0]}/{approach}"] = means["mean_over_sites"]
    for approach, counts in table.pair_counts().items():
        out[f"gain/pairs-won/{approach.replace(' ', '-')}"] = counts["won"]
        out[f"gain/pairs/{approach.replace(' ', '-')}"] = counts["pairs"]
    return out


def _score_of(metrics: dict[str, float]) -> float | None:
    value = metrics.get("roc_auc", metrics.get("r2"))
    return None if value is None else float(value)
