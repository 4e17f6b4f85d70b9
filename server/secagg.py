"""Secure aggregation: the server learns only the weighted sum of the sites' updates.

Run config ``secure-aggregation=true`` runs the rounds with Flower's SecAgg+ protocol
(`flwr.server.workflow.SecAggPlusWorkflow`): each site masks its update with pairwise and private
masks agreed in a key exchange, and the masks cancel only in the sum. In Flower 1.41 SecAgg+
exists only on the legacy path, so this module drives Flower's `DefaultWorkflow` with a legacy
FedAvg (`SecureFedAvg`) instead of the Message-API strategies of `fedmol.server.rounds`; the sites run
Flower's `secaggplus_mod` (see `fedmol.client.client_app`). Four message round trips per training round.

What changes for the consortium:

* individual updates are never visible, so they cannot be validated one by one or outvoted
  (FedMedian, trimmed mean, central DP clipping need them): the strategy is FedAvg, the
  aggregate is checked (finite values), and a round whose aggregate is not finite, or in which
  a site reports another reference hash, is discarded as a whole;
* parameters are clipped to ``secagg-clipping-range`` and quantised (2^22 levels) after being
  scaled by weight / ``secagg-max-weight``, so each site's weight (its number of training labels)
  must not exceed that bound, and a bound far above the weights costs precision: each round the
  server tightens it to 1.5x the largest last known weight of the sites sampled for that round
  (reported in clear, like every count; `WeightBound`), and keeps the configured bound while
  any sampled site has never reported one (a site absent so far, or every site after a resume);
* what the sites report besides the update (losses, counts, per-task metrics) travels as before
  and is tracked per site, with the same hooks (MLflow, checkpoints, the final table);
* best-round selection and early stopping (`fedmol.server.selection.BestRound`) as on the
  Message-API path: every round has its own (plain) evaluation, and after the last round, or the
  round after which ``patience`` ran out, the chosen round's model gets the final evaluation
  (``wire.CFG_FINAL``) inside Flower's legacy loop (`run_secure_rounds` wraps its public
  ``fit_workflow``/``evaluate_workflow``). Flower's loop cannot end early: after a stop its
  remaining rounds do nothing but log their ``[ROUND k]`` header.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.records import config_record, from_array_record, metric_record, split_metrics, to_array_record
from fedmol.server.rounds import RoundBook, RoundOutcome, SiteReport
from fedmol.server.selection import BestRound
from fedmol.server.strategies import outer_nesterov_step, restore_strategy_state

log = logging.getLogger("fedmol.server")


class WeightBound:
    """The ``max_weight`` of a SecAgg+ round: what each sampled site's weight is divided by.

    A site whose weight (its number of training labels, `FitRes.num_examples`) exceeds the bound
    overflows the quantised sum; a bound far above every weight costs precision. This keeps each
    node's last reported weight, across rounds (a site that missed a round keeps its weight), and
    gives ``margin`` x the largest known weight of a round's sampled nodes, or the ``configured``
    bound while any of them has never reported a weight. Not checkpointed: a resumed federation
    starts from the configured bound, as a new one does.
    """

    def __init__(self, configured: float, margin: float = 1.5) -> None:
        if configured <= 0 or margin < 1:
            raise ValueError(f"the weight bound must be > 0 and its margin >= 1, got {configured} and {margin}")
        self.configured = float(configured)
        self.margin = float(margin)
        self.known: dict[int, float] = {}  # node id -> its last reported weight

    def record(self, node_id: int, weight: float) -> None:
        if weight > 0 and np.isfinite(weight):
            self.known[int(node_id)] = float(weight)

    def for_nodes(self, node_ids: Any) -> float:
        """The bound for a round that sampled ``node_ids``."""
        ids = [int(n) for n in node_ids]
        if not ids or any(n not in self.known for n in ids):
            return self.configured
        return max(self.margin * max(self.known[n] for n in ids), 1.0)


class SecureFedAvg(RoundBook, LegacyFedAvg):
    """Flower's legacy FedAvg, fed by SecAgg+, with fedmol's round hooks.

    It also offers what the hooks read from `fedmol.server.rounds.HookedStrategy` (``last_arrays``,
    ``site_names``, ``expected_fingerprint``, ...), so tracking and checkpoints are shared code, and
    keeps its sites' names, reference hash and settings with the same `fedmol.server.rounds.RoundBook`.
    """

    evaluate_in_train = False

    def __init__(self, cfg: FederationConfig, arrays: dict[str, np.ndarray], hooks: list[Any], *,
                 federation_id: str, round_offset: int = 0, expected_fingerprint: str = "") -> None:
        self.names = sorted(arrays)
        super().__init__(
            fraction_fit=cfg.fraction_train, fraction_evaluate=1.0, min_fit_clients=cfg.min_sites,
            min_evaluate_clients=cfg.min_sites, min_available_clients=cfg.min_sites,
            initial_parameters=ndarrays_to_parameters([arrays[k] for k in self.names]),
            on_fit_config_fn=self._config, on_evaluate_config_fn=self._config,
            accept_failures=True,
        )
        self.cfg = cfg
        self.hooks = hooks
        self.federation_id = federation_id
        self.round_offset = round_offset
        self.total_rounds = cfg.max_rounds
        self.expected_fingerprint = expected_fingerprint
        self.inner = self  # strategy_state() finds the outer momentum of fednesterov (m_t) here
        self.m_t: dict[str, np.ndarray] = {}
        self.site_names: dict[int, str] = {}
        self.last_arrays: ArrayRecord | None = to_array_record(arrays)
        self.last_round = round_offset
        self.finished = False  # the final evaluation was sent: the legacy loop's remaining rounds do nothing
        self.final: tuple[int, dict[str, np.ndarray]] | None = None  # (round, model) of the final evaluation
        self.prep_settings: dict[str, Any] = {}
        self.key_fingerprint = ""
        self.discarded_rounds: list[int] = []
        self.workflow: Any = None  # the SecAggPlusWorkflow, whose max_weight is tightened per round
        self.weight_bound = WeightBound(cfg.secagg_max_weight)

    def _config(self, server_round: int) -> dict[str, Any]:
        rnd = server_round + self.round_offset if self.final is None else self.final[0]
        return {wire.CFG_ROUND: rnd, wire.CFG_FEDERATION_ID: self.federation_id,
                wire.CFG_FINAL: self.final is not None, wire.CFG_ARRAY_NAMES: json.dumps(self.names)}

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        """Flower's sampling, then the round's weight bound from the sampled nodes: Flower's
        `SecAggPlusWorkflow.setup_stage` reads ``max_weight`` right after calling this (contract
        checked in tests/test_flower_patches.py)."""
        # Relies on Flower internals (setup_stage's order; DefaultWorkflow's per-round lookups):
        # tests/test_flower_patches.py (section 4) and deploy/README.md ("Patches of Flower ...").
        sampled = super().configure_fit(server_round, parameters, client_manager)
        if self.workflow is not None and sampled:
            bound = self.weight_bound.for_nodes(proxy.node_id for proxy, _ in sampled)
            if bound != self.workflow.max_weight:
                log.info("round %d: SecAgg+ weight bound %g (was %g)", server_round + self.round_offset, bound,
                         self.workflow.max_weight)
            self.workflow.max_weight = bound
        return sampled

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        """The round's evaluation; during the final evaluation the chosen round's model instead."""
        if self.final is not None:
            parameters = ndarrays_to_parameters([self.final[1][k] for k in self.names])
        return super().configure_evaluate(server_round, parameters, client_manager)

    def _reports(self, results: list[tuple[Any, Any]]) -> list[SiteReport]:
        reports = []
        for proxy, res in results:
            numbers, report = split_metrics(dict(res.metrics))
            reports.append(self._remember(SiteReport.from_content(proxy.node_id, RecordDict({
                wire.METRICS: metric_record(numbers), wire.REPORT: config_record(report)}))))
        return reports

    def _missing(self, failures: list[Any]) -> list[str]:
        out = []
        for f in failures:
            node = getattr(f[0], "node_id", None) if isinstance(f, tuple) else None
            out.append(self.site_names.get(node, f"node-{node}") if node is not None else type(f).__name__)
        return out

    @staticmethod
    def _mean(reports: list[SiteReport], weight_key: str) -> MetricRecord | None:
        if not reports:
            return None
        weights = np.array([r.metrics.get(weight_key, 1.0) for r in reports])
        keys = set.intersection(*(set(r.metrics) for r in reports))
        return MetricRecord({k: float(np.average([r.metrics[k] for r in reports], weights=weights))
                             for k in sorted(keys)})

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        rnd = server_round + self.round_offset
        reports = self._reports(results)
        rejected: list[tuple[str, str]] = []
        arrays = None
        if results:
            # SecAgg+ handed every result the same unmasked sum: the weighted mean is that sum.
            summed = parameters_to_ndarrays(results[0][1].parameters)
            wrong_hash = [(r.site, reason) for r in reports if (reason := self._check_fingerprint(r))]
            if wrong_hash:
                rejected = [(site, f"{reason}; the whole secure aggregate is discarded") for site, reason in wrong_hash]
            elif not all(np.all(np.isfinite(a)) for a in summed):
                rejected = [("aggregate", "NaN or infinite values in the secure aggregate: round discarded")]
            else:
                arrays = dict(zip(self.names, summed, strict=True))
                if self.cfg.strategy == "fednesterov" and self.last_arrays is not None:
                    # The outer step needs only the mean, which is all the server sees here.
                    previous = {k: self.last_arrays[k].numpy() for k in self.names}
                    arrays = outer_nesterov_step(previous, arrays, self.m_t, lr=self.cfg.outer_lr,
                                                 mu=self.cfg.outer_momentum)
        if rejected:
            log.warning("round %d: %s", rnd, rejected)
            self.discarded_rounds.append(rnd)
        if arrays is not None:
            self.last_arrays = to_array_record({k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
        metrics = self._mean(reports, wire.NUM_TRAIN_LABELS)
        for (proxy, res), report in zip(results, reports, strict=True):
            # the weight Flower's secaggplus_mod divided by: FitRes.num_examples
            self.weight_bound.record(proxy.node_id, float(res.num_examples or report.metrics.get(
                wire.NUM_TRAIN_LABELS, 0.0)))
        self._fire(RoundOutcome(rnd, "train", reports, rejected, self._missing(failures), metrics,
                                self.last_arrays if arrays is not None else None))
        assert self.last_arrays is not None
        current = [self.last_arrays[k].numpy() for k in self.names]
        return ndarrays_to_parameters(current), {}

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        rnd = server_round + self.round_offset
        reports = self._reports(results)
        metrics = self._mean(reports, wire.NUM_EVAL_LABELS)
        if self.final is not None:
            rnd, chosen = self.final
            self._fire(RoundOutcome(rnd, "evaluate", reports, [], self._missing(failures), metrics,
                                    to_array_record(chosen), final=True))
        else:
            self._fire(RoundOutcome(rnd, "evaluate", reports, [], self._missing(failures), metrics, self.last_arrays))
        loss = None if metrics is None else metrics.get(wire.VALID_LOSS)
        return loss, {}


def run_secure_rounds(grid: Any, context: Any, cfg: FederationConfig, arrays: dict[str, np.ndarray],
                      hooks: list[Any], *, federation_id: str, round_offset: int,
                      expected_fingerprint: str, selection: BestRound | None = None,
                      resumed_state: dict[str, np.ndarray] | None = None) -> SecureFedAvg:
    """Run the remaining rounds with SecAgg+ (until the last, or an early stop by ``selection``,
    which should be one of ``hooks``), then the final evaluation of the chosen round's model; returns
    the strategy (its ``last_arrays`` is the last round's model, ``selection`` says the chosen one).
    ``resumed_state``: the checkpointed server-optimiser state (`strategy_state`: fednesterov's ``m_t``)
    of a resumed federation, so the outer momentum carries on across the resume."""
    strategy = SecureFedAvg(cfg, arrays, hooks, federation_id=federation_id, round_offset=round_offset,
                            expected_fingerprint=expected_fingerprint)
    if resumed_state:
        restore_strategy_state(strategy, resumed_state)
    legacy = LegacyContext(context=context, strategy=strategy,
                           config=ServerConfig(num_rounds=cfg.max_rounds - round_offset,
                                               round_timeout=cfg.round_timeout))
    strategy.workflow = SecAggPlusWorkflow(
        num_shares=cfg.secagg_num_shares, reconstruction_threshold=cfg.secagg_threshold,
        max_weight=cfg.secagg_max_weight, clipping_range=cfg.secagg_clipping_range, timeout=cfg.round_timeout)
    workflow = DefaultWorkflow(fit_workflow=strategy.workflow)
    fit, evaluate = workflow.fit_workflow, workflow.evaluate_workflow
    chooser = selection if selection is not None else BestRound()  # no scores: the last model
    rounds = iter(range(round_offset + 1, cfg.max_rounds + 1))

    def fit_step(grid: Any, context: Any) -> None:
        if not strategy.finished:
            fit(grid, context)

    def evaluate_step(grid: Any, context: Any) -> None:
        if strategy.finished:
            return
        rnd = next(rounds)
        evaluate(grid, context)  # the round's own evaluation (best-round selection sees it)
        stop = selection if selection is not None and selection.should_stop else None
        if stop is None and rnd < cfg.max_rounds:
            return
        if stop is not None:
            stop.stop()
            log.info("round %d: no better federated validation score for %d rounds: the federation stops",
                     rnd, stop.patience)
        assert strategy.last_arrays is not None
        strategy.final = chooser.chosen(strategy.last_round, from_array_record(strategy.last_arrays))
        strategy.finished = True
        log.info("final evaluation of round %d's model", strategy.final[0])
        try:
            evaluate(grid, context)  # configure_evaluate sends the chosen model, with CFG_FINAL
        finally:
            strategy.final = None

    workflow.fit_workflow, workflow.evaluate_workflow = fit_step, evaluate_step
    workflow(grid, legacy)
    return strategy
