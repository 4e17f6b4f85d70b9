"""A site's side of a federation, free of Flower: its store, private heads on disk, the ledger.

`SiteNode.train_round` and `SiteNode.evaluate_round` take the shared arrays the server sent
(plain numpy) and return what may leave the site: the shared arrays after local training,
aggregate metrics and a report. The Flower adapter (`fedmol.client.client_app`) only converts records.

Private heads live in ``<store>/federations/<federation-id>/private_heads.pt`` between rounds
(Flower's ``context.state`` lasts only one run, and is serialised with every message), and each
training round's heads as ``private_heads-r<r>.pt`` (the newest rounds only), so that the final
evaluation of the server's chosen round pairs its shared model with that round's heads
(`fedmol.models.site_model` documents the layout); the outbox ledger ``<store>/outbox.jsonl``
records every array and metric name that left the site.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmol import wire
from fedmol.client.local_only import LocalOnlyBaseline
from fedmol.client.site_registry import SiteRegistry, publish_site_model
from fedmol.config import SITE_DP_MODES, FederationConfig
from fedmol.datasets.store import SiteStore, store_folders
from fedmol.errors import ConfigError
from fedmol.models.data import TaskData
from fedmol.models.dp import dp_sample_rate, steps_per_epoch
from fedmol.models.metrics import MetricThresholds
from fedmol.models.network import MultiTaskNet
from fedmol.models.site_model import (
    KEPT_HEAD_ROUNDS,
    PRIVATE_HEADS,
    federation_dir,
    kept_head_rounds,
    save_private_heads,
    site_model,
    site_name,
    site_spec,
    split_rows,
)
from fedmol.models.spec import ModelSpec
from fedmol.models.training import TrainConfig, evaluate, fit_target_scaling, make_optimizer, train_epochs
from fedmol.privacy import EPSILON_SPENT, PrivacyBudgetExceeded, SiteBudget, noise_for_epsilon
from fedmol.transport import effective_transport, encode_update, round_seed

log = logging.getLogger("fedmol.client")
OPTIMIZER_STATE = "optimizer.pt"  # the site's local optimiser state between rounds (keep-optimizer-state)


@dataclass
class RoundReply:
    """What a site sends back: nothing here is per-compound."""

    arrays: dict[str, np.ndarray] | None  # shared parameters (train replies only)
    metrics: dict[str, float]  # same keys at every site
    report: dict[str, str]  # wire.REP_* -> str (JSON for structured values)
    # The train ledger entry's "dp": {"mechanism", "epsilon_spent", "target_epsilon", "delta"}; None
    # when DP is off (never sent: the ledger stays at the site).
    dp: dict[str, Any] | None = None


class SiteNode:
    """One site: a prepared store plus the private state it keeps across rounds and runs."""

    def __init__(self, store_path: str | Path, name: str = "", *, report_task_names: bool = False,
                 fault: str = "") -> None:
        """fault: a drill for the server's defences, never for real use: "nan" sends NaN updates,
        "scale:K" sends updates multiplied by K (a poisoning site)."""
        self.store_path = Path(store_path).expanduser().resolve()
        self._name = name
        self.report_task_names = report_task_names
        self.fault = fault
        self.registry = SiteRegistry()  # the site's own MLflow registry (node config), `register_site_model`
        self.dp_epsilon = 0.0  # the site's own, stricter DP budget (node config dp-epsilon; 0: the run config's)
        # How this run's replies leave (secure aggregation, transport, the app): set per message by the
        # ClientApp (`fedmol.client.provenance.outbox_provenance`), recorded in every ledger entry; None
        # outside a Flower run.
        self.provenance: dict[str, Any] | None = None

    # -- data ------------------------------------------------------------------------------
    @cached_property
    def store(self) -> SiteStore:
        return SiteStore.load(self.store_path)

    @property
    def name(self) -> str:
        return self._name or site_name(self.store, self.store_path)

    def rows(self, cfg: FederationConfig, split: str) -> np.ndarray:
        return split_rows(self.store, cfg, split)

    @cached_property
    def local_only_baseline(self) -> LocalOnlyBaseline:
        """The site's local-only model (trained once, cached in the store) for the federation-gain report."""
        return LocalOnlyBaseline(self.store_path, self.name)

    # -- model -----------------------------------------------------------------------------
    def spec(self, cfg: FederationConfig) -> ModelSpec:
        return site_spec(self.store, cfg, self.name)

    def private_dir(self, federation_id: str) -> Path:
        return federation_dir(self.store_path, federation_id)

    def build_model(self, cfg: FederationConfig, shared: dict[str, np.ndarray], federation_id: str,
                    heads_round: int | None = None) -> tuple[MultiTaskNet, bool]:
        """The site's model: the received shared parameters plus its own private heads (`site_model`):
        the current ones, or with ``heads_round`` those kept from that training round."""
        return site_model(self.store, self.store_path, cfg, shared, federation_id, site=self.name,
                          heads_round=heads_round)

    def refit_private_heads(self, model: MultiTaskNet, cfg: FederationConfig, server_round: int,
                            epochs: int) -> None:
        """Train only the private heads on top of the received (frozen) trunk.

        The heads were last trained with this site's own trunk; after aggregation the trunk has
        moved, so the heads are fitted to the shared trunk before they are evaluated.
        """
        private = {f"heads.{n}." for n in model.private_head_names()}
        frozen = [p for name, p in model.named_parameters() if not any(name.startswith(x) for x in private)]
        for p in frozen:
            p.requires_grad_(False)
        try:
            train = TaskData.from_store(self.store, model.spec, self.rows(cfg, "train"))
            tc = TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=1e-3, optimizer="adam",
                             lr_step_epoch=10**6, lr_gamma=1.0, device=cfg.device,
                             seed=cfg.seed * 100_003 + server_round + 7, num_threads=cfg.num_threads or None)
            train_epochs(model, train, tc)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def finetune(self, model: MultiTaskNet, cfg: FederationConfig, server_round: int) -> dict[str, Any]:
        """Personalise ``model`` (trunk and every head) on this site's training folds, in place,
        and only where it pays on the site's own validation fold.

        The sites' own optimiser (``optimizer``, ``momentum``, ``weight-decay``: local training
        continued) at ``finetune-lr`` for at most ``finetune-epochs`` epochs, early stopping on the
        validation fold (patience ``finetune-patience``) with the best epoch's weights restored.
        The decision is the site's: the fine-tuned model replaces the received one only when its
        validation score (`EvalResult.score`: mean ROC-AUC / R² over the tasks that qualify) beats
        the received model's; when no task qualifies, validation loss decides. Otherwise the
        received model is kept, unchanged. Returns the summary: ``personalised`` (1/0),
        ``finetune_decided_by`` (1: score, 0: loss), scores and losses before/after. The same
        advantages the local-only baseline gets. Nothing here leaves the site, and the shared
        arrays the model was built from are not touched (the model holds its own copy).
        """
        t0 = time.perf_counter()
        thresholds = MetricThresholds.at_least(cfg.eval_min_labels)
        train = TaskData.from_store(self.store, model.spec, self.rows(cfg, "train"))
        valid = TaskData.from_store(self.store, model.spec, self.rows(cfg, "valid"))
        before = evaluate(model, valid, device=cfg.device, thresholds=thresholds)
        by_score = before.score is not None
        start = copy.deepcopy(model.state_dict())
        tc = TrainConfig(epochs=cfg.finetune_epochs, batch_size=cfg.batch_size, lr=cfg.finetune_lr,
                         optimizer=cfg.optimizer, regression_weight=cfg.regression_weight,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         lr_step_epoch=10**6, lr_gamma=1.0, patience=cfg.finetune_patience,
                         monitor="score" if by_score else "loss",
                         restore_best=True, device=cfg.device, seed=cfg.seed * 100_003 + server_round + 11,
                         num_threads=cfg.num_threads or None)
        result = train_epochs(model, train, tc, valid=valid, thresholds=thresholds)
        after = evaluate(model, valid, device=cfg.device, thresholds=thresholds)  # the best epoch's weights
        if by_score:
            personalised = after.score is not None and after.score > float(before.score or 0.0)
        else:
            personalised = math.isfinite(after.loss) and after.loss < before.loss
        if not personalised:
            model.load_state_dict(start)
            after = before
        log.info("site %s: %s (validation %s %.4f -> %.4f)", self.name,
                 "personalised: the fine-tuned model is better" if personalised
                 else "not personalised: fine-tuning did not beat the federated model",
                 "score" if by_score else "loss", *((before.score, after.score) if by_score
                                                    else (before.loss, after.loss)))
        out: dict[str, Any] = {
            "personalised": int(personalised),
            "finetune_decided_by": int(by_score),
            "finetune_epochs_run": len(result.history),
            "finetune_best_epoch": int(result.best_epoch or 0) + 1 if personalised else 0,
            "finetune_valid_loss_before": float(before.loss),
            "finetune_valid_loss_after": float(after.loss),
            "finetune_seconds": time.perf_counter() - t0,
        }
        if by_score:
            out["finetune_valid_score_before"] = float(before.score or 0.0)
            out["finetune_valid_score_after"] = float(after.score or 0.0)
        return out

    def register_site_model(self, model: MultiTaskNet, cfg: FederationConfig, federation_id: str,
                            server_round: int, facts: dict[str, Any]) -> str | None:
        """Register this site's full model (as evaluated in the final round: personalised where the
        site chose so) in the site's own MLflow registry (`fedmol.client.site_registry`); returns its
        ``models:/`` URI, or None when the site registers nothing. A registry that fails is logged and
        does not fail the round: the federation's other results do not depend on it."""
        if not self.registry.enabled(cfg):
            return None
        try:
            return publish_site_model(
                model, store=self.store, store_path=self.store_path, site=self.name, cfg=cfg,
                federation_id=federation_id, server_round=server_round, settings=self.registry,
                prep_settings=public_settings(self.store.settings), facts=dict(facts))
        except Exception as exc:  # MLflow, disk: the site's own registry, reported at the site
            log.error("site %s: its model could not be registered in %s: %s: %s", self.name,
                      self.registry.uri_for(self.store_path), type(exc).__name__, exc)
            return None

    def save_personalised(self, model: MultiTaskNet, federation_id: str) -> Path:
        """The site's personalised model (trunk and heads after fine-tuning): kept at the site only."""
        folder = self.private_dir(federation_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "personalised.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        tmp.replace(path)
        return path

    def load_optimizer(self, model: MultiTaskNet, tc: TrainConfig, federation_id: str) -> torch.optim.Optimizer:
        """The site's local optimiser for this round, with the state it kept after its last round
        (`keep-optimizer-state`: DiLoCo's inner optimiser); a fresh one in its first round."""
        optimizer = make_optimizer(model, tc)
        path = self.private_dir(federation_id) / OPTIMIZER_STATE
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                optimizer.load_state_dict(state)
            except (ValueError, KeyError) as exc:  # another model shape: start afresh, say so
                log.warning("site %s: kept optimiser state does not fit the model (%s); starting afresh",
                            self.name, exc)
                optimizer = make_optimizer(model, tc)
            for group in optimizer.param_groups:  # this round's lr, not the one saved
                group["lr"] = tc.lr
        return optimizer

    def save_optimizer(self, optimizer: torch.optim.Optimizer, federation_id: str) -> Path:
        """Keep the local optimiser's state at the site between rounds (never sent)."""
        folder = self.private_dir(federation_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / OPTIMIZER_STATE
        tmp = path.with_suffix(".tmp")
        torch.save(optimizer.state_dict(), tmp)
        tmp.replace(path)
        return path

    def save_private(self, model: MultiTaskNet, federation_id: str, server_round: int, *, note: bool = True,
                     keep: int = KEPT_HEAD_ROUNDS) -> Path:
        """Keep the private heads on disk as the current ones. ``note`` (a training round's heads):
        also keep them as that round's (``private_heads-r<r>.pt``, the newest ``keep`` rounds) and
        note their hash in a site-local history."""
        state = save_private_heads(model, self.store_path, federation_id,
                                   server_round=server_round if note else None, keep=keep)
        folder = self.private_dir(federation_id)
        path = folder / PRIVATE_HEADS
        if not note:
            return path
        digest = hashlib.sha256()
        for k in sorted(state):
            digest.update(k.encode())
            digest.update(state[k].numpy().tobytes())
        with (folder / "history.jsonl").open("a") as fh:
            fh.write(json.dumps({"round": server_round, "private_sha256": digest.hexdigest(),
                                 "names": sorted(state)}) + "\n")
        return path

    # -- differential privacy (dp="site-dp-sgd") -----------------------------------------------
    def budget_path(self, federation_id: str) -> Path:
        """The site's DP budget file of one federation: ``<store>/privacy/dp-<federation dir>.json``."""
        return self.store_path / "privacy" / f"dp-{self.private_dir(federation_id).name}.json"

    def dp_budget(self, cfg: FederationConfig, n_train: int, federation_id: str) -> SiteBudget:
        """This federation's budget at this site: continued from its file, or planned afresh.

        The plan: the smallest noise multiplier that keeps the whole federation, ``num-server-rounds``
        rounds of ``dp-local-epochs x ceil(n_train / b)`` DP-SGD steps at Poisson rate q = b / n_train
        (b: `FederationConfig.dp_batch`, all the compounds by default), within the target epsilon at
        ``dp-delta`` (`fedmol.privacy`). The
        target is the run config's ``dp-epsilon``, or the site's own (node config) when smaller. A
        resumed federation continues the file: the same noise, the steps already spent counted.
        """
        target = min(cfg.dp_epsilon, self.dp_epsilon) if self.dp_epsilon > 0 else cfg.dp_epsilon
        q = dp_sample_rate(n_train, cfg.dp_batch(n_train))
        path = self.budget_path(federation_id)
        if path.exists():
            budget = SiteBudget.load(path)
            changed = [f"{name} {was} -> {now}" for name, was, now in (
                ("sample rate", budget.sample_rate, q), ("dp-sample-clip", budget.max_grad_norm, cfg.dp_sample_clip),
                ("dp-delta", budget.delta, cfg.dp_delta)) if was != now]
            if changed:
                raise ConfigError(f"site {self.name}: federation {federation_id} was accounted in {path} with other "
                                  f"DP settings ({'; '.join(changed)}): continue it with the same settings, or "
                                  "start a new federation")
            budget.target_epsilon = target  # the current target (a stricter one applies at once)
            return budget
        steps = cfg.max_rounds * dp_steps_per_round(cfg, n_train)
        sigma = noise_for_epsilon(target, cfg.dp_delta, q, steps)
        log.info("site %s: per-compound DP-SGD, budget epsilon %g at delta %g over %d rounds (%d steps, q=%.4f): "
                 "noise multiplier %.4f", self.name, target, cfg.dp_delta, cfg.max_rounds, steps, q, sigma)
        return SiteBudget(federation_id=federation_id, target_epsilon=target, delta=cfg.dp_delta,
                          noise_multiplier=sigma, max_grad_norm=cfg.dp_sample_clip, sample_rate=q)

    def check_budget(self, budget: SiteBudget, steps: int, server_round: int, federation_id: str) -> None:
        """Refuse (`PrivacyBudgetExceeded`) a round whose ``steps`` would take the site beyond its target."""
        after = budget.epsilon_after(steps)
        if after > budget.target_epsilon:
            raise PrivacyBudgetExceeded(
                f"site {self.name} refuses round {server_round} of federation {federation_id}: its privacy budget "
                f"is epsilon {budget.target_epsilon:g} at delta {budget.delta:g} (dp-epsilon), "
                f"{budget.epsilon_spent:.4g} is spent over {len(budget.rounds)} round(s), and this round's "
                f"{steps} DP-SGD steps would bring it to {after:.4g} (budget file {self.budget_path(federation_id)})")

    # -- rounds ----------------------------------------------------------------------------
    def train_round(self, cfg: FederationConfig, shared: dict[str, np.ndarray], *, server_round: int,
                    federation_id: str, proximal_mu: float = 0.0) -> RoundReply:
        """Train the received model on the site's training folds; keep private heads on disk.

        With ``dp="site-dp-sgd"`` the local training is per-compound DP-SGD (`dp_budget`: noise from
        the site's budget) and the site refuses a round that would exceed its budget
        (`PrivacyBudgetExceeded`, an error reply that names the budget). The steps taken are
        accounted in the budget file before anything leaves; the epsilon spent so far goes to the
        server (metric ``dp_epsilon_spent``) and to the ledger (``dp``). The budget protects each
        training compound in what leaves after training: the shared arrays. The training loss is not
        sent with DP (NaN): it is computed on the training compounds without noise. Outside the
        budget, because they never leave the site: the private heads kept between rounds (trained
        here with DP too), the local-only baseline and the personalised (fine-tuned) model. The
        evaluation metrics a site sends (`evaluate_round`) are computed on its validation and test
        folds, not on the training compounds the budget protects; they are aggregate scores of
        models that saw the training compounds (the received model's refitted private heads, the
        fine-tuned and local-only models), and are not covered by the epsilon.
        """
        t0 = time.perf_counter()
        model, fresh = self.build_model(cfg, shared, federation_id)
        spec = model.spec
        train = TaskData.from_store(self.store, spec, self.rows(cfg, "train"))
        budget = None
        if cfg.dp in SITE_DP_MODES:
            budget = self.dp_budget(cfg, train.n, federation_id)
            self.check_budget(budget, dp_steps_per_round(cfg, train.n), server_round, federation_id)
        if fresh:
            fit_target_scaling(model, train)  # private regression heads only
        # DP-SGD trains with its own recipe (dp-batch-size, dp-local-epochs, dp-lr, dp-lr-decay: fedmol.config).
        epochs, batch, lr, decay = ((cfg.dp_local_epochs, cfg.dp_batch(train.n), cfg.dp_lr, cfg.dp_lr_decay)
                                    if budget is not None else
                                    (local_epochs(cfg, train.n), cfg.batch_size, cfg.lr, cfg.lr_decay))
        tc = TrainConfig(
            epochs=epochs, batch_size=batch, optimizer=cfg.optimizer, lr=lr * decay ** max(server_round - 1, 0),
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, lr_step_epoch=10**6, lr_gamma=1.0,
            regression_weight=cfg.regression_weight,
            device=cfg.device, seed=cfg.seed * 100_003 + server_round, proximal_mu=proximal_mu,
            num_threads=cfg.num_threads or None,
            dp_max_grad_norm=cfg.dp_sample_clip if budget is not None else None,
            dp_noise_multiplier=budget.noise_multiplier if budget is not None else 0.0,
        )
        reference = None
        if proximal_mu > 0:
            reference = {k: torch.as_tensor(v) for k, v in shared.items() if k in dict(model.named_parameters())}
        optimizer = self.load_optimizer(model, tc, federation_id) if cfg.keep_optimizer_state else None
        result = train_epochs(model, train, tc, optimizer=optimizer, prox_reference=reference)
        dp = None
        if budget is not None:  # accounted before anything leaves
            budget.spend(server_round, result.dp_steps)
            budget.save(self.budget_path(federation_id))
            dp = {"mechanism": budget.mechanism, "epsilon_spent": budget.epsilon_spent,
                  "target_epsilon": budget.target_epsilon, "delta": budget.delta}
        if cfg.keep_optimizer_state:
            self.save_optimizer(result.optimizer, federation_id)
        self.save_private(model, federation_id, server_round, keep=kept_head_rounds(cfg))
        out = {k: v.detach().cpu().numpy() for k, v in model.shared_state_dict().items()}
        # float16, or the int8 update against the received arrays (`fedmol.transport`); float32 with SecAgg+.
        out = encode_update(out, shared, effective_transport(cfg),
                            seed=round_seed(cfg.seed, server_round, self.name))
        out = self._inject_fault(out)  # a drill corrupts what is sent, as a hostile site would
        n_labels = int(train.n_labels())
        metrics = {
            wire.NUM_TRAIN_LABELS: float(max(n_labels, 1)),
            wire.TRAIN_LOSS: float(result.final_loss) if budget is None else math.nan,
        }
        if budget is not None:
            metrics[EPSILON_SPENT] = float(budget.epsilon_spent)
        summary = {"train_seconds": time.perf_counter() - t0, "n_train_compounds": int(train.n),
                   "n_train_labels": n_labels}
        reply = RoundReply(out, metrics, self._report(summary), dp=dp)
        self.record_outbox(reply, phase="train", server_round=server_round, federation_id=federation_id)
        return reply

    def evaluate_round(self, cfg: FederationConfig, shared: dict[str, np.ndarray], *, server_round: int,
                       federation_id: str, final: bool | None = None) -> RoundReply:
        """Metrics of the received shared model with this site's private heads, on valid and test folds.

        In the final round (``final``; None: ``server_round >= num-server-rounds``, which is what
        the server's ``wire.CFG_FINAL`` says) with ``finetune-epochs > 0`` the site personalises a
        copy of the received model on its own training folds first (`finetune`) and reports that
        model's metrics as ``valid``/``test``; the received model's own metrics are reported too,
        as ``valid-federated``/``test-federated`` (summary ``*_federated_*``). The site keeps the
        fine-tuned model only when it beats the received one on its validation score (summary
        ``personalised``: 1/0, in every final round); it then stays at the site
        (``<federation dir>/personalised.pt``). In the final round the site also registers its full
        model (personalised where it chose so, calibrated on its validation fold) in its own MLflow
        registry (`register_site_model`), and keeps the shared arrays it received as
        ``<federation dir>/shared_final.npz`` for its membership-inference audit
        (`fedmol.client.audit`). Nothing new is sent.

        The final evaluation's ``server_round`` is the round the server chose (best-round selection),
        and its shared model is that round's: the site pairs it with the private heads it kept from
        that training round (`fedmol.models.site_model.private_heads_file`; the latest, with a
        warning, when they are no longer kept), refitted as in that round's own evaluation. These
        heads are the ones personalised, registered, and kept as the current ``private_heads.pt``.

        With ``local-baseline`` (default) the site also reports its local-only model's metrics
        (`fedmol.client.local_only`: trained at its first evaluation, then cached in the store) as
        ``valid-local``/``test-local`` (summary ``valid_local_*``, ``test_local_*``), under the same
        task labels: the federation-gain report.
        """
        t0 = time.perf_counter()
        thresholds = MetricThresholds.at_least(cfg.eval_min_labels)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if final is None:
            final = server_round >= cfg.max_rounds
        # The final evaluation carries the server's chosen round: its shared model goes with the
        # private heads of that round, not the latest ones (trained on a later trunk).
        model, fresh = self.build_model(cfg, shared, federation_id, heads_round=server_round if final else None)
        if final:  # the chosen shared model, as received, kept for `fedmol site audit` (nothing is sent)
            from fedmol.client.audit import save_shared_final

            save_shared_final(self.store_path, federation_id, shared, cfg, server_round)
        refit = bool(model.private_head_names()) and (cfg.head_epochs > 0 or fresh)
        if refit:  # the same refit (and seed) as this round's own evaluation: the same heads
            self.refit_private_heads(model, cfg, server_round, max(cfg.head_epochs, 1))
        if refit or (final and model.private_head_names()):  # after the final: the chosen round's heads
            self.save_private(model, federation_id, server_round, note=False)
        data = {split: TaskData.from_store(self.store, model.spec, self.rows(cfg, split), trainable_only=False)
                for split in ("valid", "test")}
        results = {split: evaluate(model, d, device=cfg.device, thresholds=thresholds)
                   for split, d in data.items()}
        summary: dict[str, Any] = {}
        if final and cfg.finetune_epochs > 0:
            plain = results
            ft = self.finetune(model, cfg, server_round)  # the site's own decision: personalised or not
            if ft["personalised"]:
                self.save_personalised(model, federation_id)
                results = {split: evaluate(model, d, device=cfg.device, thresholds=thresholds)
                           for split, d in data.items()}
            else:
                (self.private_dir(federation_id) / "personalised.pt").unlink(missing_ok=True)
                results = dict(plain)
            results.update({f"{split}-federated": r for split, r in plain.items()})
            summary.update(ft)
        elif final:
            summary["personalised"] = 0
        if cfg.local_baseline:  # the site's local-only model beside it: valid-local, test-local
            local, extra = self.local_only_baseline.results(self.store, cfg)
            results.update(local)
            summary.update(extra)
        names = self._task_labels(model.spec)
        task_metrics = {split: {names.get(t, t): m for t, m in r.per_task.items()} for split, r in results.items()}
        for split, r in results.items():
            prefix = split.replace("-", "_")
            for k, v in r.summary.items():
                summary[f"{prefix}_{k}"] = v
            summary[f"{prefix}_score"] = r.score
            summary[f"{prefix}_n_labels"] = r.n_labels  # valid_n_labels: the site's weight in best-round selection
        summary["eval_seconds"] = time.perf_counter() - t0
        if final:  # the site's full model, in the site's own registry: nothing of it is sent
            self.register_site_model(model, cfg, federation_id, server_round, summary)
        metrics = {
            wire.NUM_TRAIN_LABELS: float(max(results["test"].n_labels, 1)),
            wire.NUM_EVAL_LABELS: float(results["valid"].n_labels + results["test"].n_labels),
            wire.VALID_LOSS: float(results["valid"].loss),
            wire.TEST_LOSS: float(results["test"].loss),
        }
        reply = RoundReply(None, metrics, self._report(summary, task_metrics))
        self.record_outbox(reply, phase="evaluate", server_round=server_round, federation_id=federation_id)
        return reply

    def _inject_fault(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The node config's ``fault-drill`` applied to the arrays as sent (after the transport's
        encoding, which refuses non-finite updates): ``nan`` makes every float array NaN (with int8:
        the scales), ``scale:K`` multiplies them by K (with int8: the update, through its scales)."""
        if not self.fault:
            return arrays
        log.warning("site %s: fault drill %r is ON: this site sends a corrupted update", self.name, self.fault)
        if self.fault == "nan":
            return {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()}
        if self.fault.startswith("scale:"):
            factor = float(self.fault.split(":", 1)[1])
            return {k: v * factor if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()}
        raise ConfigError(f"unknown fault drill {self.fault!r}: use 'nan' or 'scale:K'")

    def _task_labels(self, spec: ModelSpec) -> dict[str, str]:
        """Private task names stay at the site unless it chose to report them."""
        if self.report_task_names:
            return {}
        labels: dict[str, str] = {}
        for head in spec.heads:
            if not head.shared:
                for i, t in enumerate(head.tasks):
                    labels[t] = f"private:{head.kind[:3]}:{i}"
        return labels

    def _report(self, summary: dict[str, Any], task_metrics: dict[str, Any] | None = None) -> dict[str, str]:
        settings = self.store.settings
        return {
            wire.REP_SITE: self.name,
            wire.REP_SUMMARY: json.dumps(summary, default=float),
            wire.REP_TASK_METRICS: json.dumps(task_metrics or {}, default=float),
            wire.REP_KEY_FINGERPRINT: str(settings.get("key_fingerprint", "")),
            wire.REP_REFERENCE_HASH: str(settings.get("reference_hash", "")),
            wire.REP_N_BITS: str(self.store.n_features),
            wire.REP_PREP_SETTINGS: json.dumps(public_settings(settings), default=str),
        }

    # -- the outbox ledger -----------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.store_path / "outbox.jsonl"

    def record_outbox(self, reply: RoundReply, *, phase: str, server_round: int, federation_id: str) -> None:
        """Append what this reply sends: array names, shapes, dtypes, bytes, sha256; metric names."""
        arrays = []
        bytes_total = 0
        for name, arr in (reply.arrays or {}).items():
            data = np.ascontiguousarray(arr)
            bytes_total += int(data.nbytes)
            arrays.append({"name": name, "shape": list(data.shape), "dtype": str(data.dtype),
                           "bytes": int(data.nbytes), "sha256": hashlib.sha256(data.tobytes()).hexdigest()})
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "federation_id": federation_id,
            "round": server_round,
            "phase": phase,
            "arrays": arrays,
            "metric_names": sorted(reply.metrics),
            "report_keys": sorted(reply.report),
            "task_metric_names": sorted(json.loads(reply.report.get(wire.REP_TASK_METRICS, "{}")).get("test", {})),
            "bytes_total": bytes_total,
            **({"dp": reply.dp} if phase == "train" else {}),  # DP budget spent (None: DP off)
            **(self.provenance or {}),  # secure_aggregation, transport, app (`outbox_provenance`)
        }
        with self.ledger_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


def public_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Preparation settings a scoring model needs (standardisation, featurisation); no paths, no key."""
    return {k: v for k, v in settings.items() if k in ("standardize", "featurize", "folds", "format_version")}


_NODES: dict[tuple[str, str], SiteNode] = {}


def site_for(node_config: dict[str, Any], cfg: FederationConfig) -> SiteNode:
    """The SiteNode named by a SuperNode's node config (cached per process: data stays warm).

    Deployment: ``--node-config 'site-store="/data/store" site-name="acme"'``; the site's own model
    registry: ``tracking-uri``, ``model-name``, ``register-model`` (`fedmol.client.site_registry`).
    Simulation: ``sim-store-dir`` in the run config and Flower's ``partition-id``: partition i is the
    i-th store of the folder (`fedmol.datasets.store.store_folders`: natural order of folder names).
    """
    store = node_config.get("site-store")
    if not store:
        if not cfg.sim_store_dir or "partition-id" not in node_config:
            raise ConfigError(
                "this SuperNode has no site store: start it with --node-config 'site-store=\"/path/to/store\"'"
            )
        stores, pid = store_folders(cfg.sim_store_dir), int(node_config["partition-id"])
        if not 0 <= pid < len(stores):
            raise ConfigError(f"simulation partition {pid}, but sim-store-dir {cfg.sim_store_dir} holds "
                              f"{len(stores)} site stores: run as many SuperNodes as stores")
        store = str(stores[pid])
    name = str(node_config.get("site-name", ""))
    key = (str(store), name)
    if key not in _NODES:
        _NODES[key] = SiteNode(store, name)
    node = _NODES[key]  # a long-lived site runtime serves many runs: take this run's settings
    node.report_task_names = report_task_names(node_config, cfg)
    node.fault = str(node_config.get("fault-drill", ""))
    node.registry = SiteRegistry.from_node_config(node_config)
    node.dp_epsilon = node_dp_epsilon(node_config)
    return node


def node_dp_epsilon(node_config: dict[str, Any]) -> float:
    """The site's own DP budget (node config ``dp-epsilon``; 0: none): with dp="site-dp-sgd" the
    smaller of it and the run config's ``dp-epsilon`` applies."""
    value = node_config.get("dp-epsilon", 0.0)
    try:
        eps = float(value)
    except (TypeError, ValueError):
        eps = math.nan
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"node config dp-epsilon={value!r}: expected a number >= 0 (0: the run config's budget)")
    return eps


def dp_steps_per_round(cfg: FederationConfig, n_train: int) -> int:
    """DP-SGD steps of one round: dp-local-epochs x ceil(n_train / b), b = `FederationConfig.dp_batch`
    (`fedmol.models.dp`): dp-local-epochs steps with the default full batch."""
    return cfg.dp_local_epochs * steps_per_epoch(n_train, cfg.dp_batch(n_train))


def local_epochs(cfg: FederationConfig, n_train: int) -> int:
    """Epochs of one round: ``local-epochs``, or more when ``local-steps`` asks for more optimiser
    steps than that gives on ``n_train`` compounds (batches of ``batch-size``)."""
    batches = max(math.ceil(n_train / cfg.batch_size), 1)
    return max(cfg.local_epochs, math.ceil(cfg.local_steps / batches))


def report_task_names(node_config: dict[str, Any], cfg: FederationConfig) -> bool:
    """A site's own choice (node config) wins over the consortium's default (run config)."""
    return str(node_config.get("report-task-names", cfg.report_task_names)).lower() in ("true", "1", "yes")
