"""Flower's own strategies, selected by one run-config key.

Every strategy weights sites by their number of training labels (`fedmol.wire.NUM_TRAIN_LABELS`)
and reads the shared model from the same record keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

from fedmol import wire
from fedmol.config import CENTRAL_DP_MODES, FederationConfig
from fedmol.privacy import central_epsilon, central_noise_for_epsilon
from fedmol.records import from_array_record, to_array_record
from fedmol.server.rounds import SiteReport


def make_strategy(cfg: FederationConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``; with a central DP mode (``server-fixed``,
    ``server-adaptive``) wrapped in Flower's server-side DP strategy, accounted (`AccountedFixedClipping`,
    `AccountedAdaptiveClipping`): each site's update clipped to ``dp-clipping-norm``, Gaussian noise
    on their mean, the noise derived from the budget ``dp-epsilon`` (`central_noise_multiplier`).
    Per-compound DP (``site-dp-sgd``) happens at the sites: the strategy is the plain one."""
    base = _base_strategy(cfg)
    if cfg.dp not in CENTRAL_DP_MODES:
        return base
    if cfg.dp == "server-fixed":
        return AccountedFixedClipping(base, cfg)
    return AccountedAdaptiveClipping(base, cfg)


def central_noise_multiplier(cfg: FederationConfig) -> float:
    """The noise multiplier of central DP: the smallest that keeps ``num-server-rounds`` rounds, each
    one Gaussian mechanism on every site's clipped update, within ``dp-epsilon`` at ``dp-delta``.

    No credit is taken for sampling sites (``fraction-train`` < 1): Flower samples a fixed number
    of sites without replacement, which the Poisson-sampling analysis does not cover, so a site is
    accounted as if it took part in every round (the worst case; a site that sat out a round spent
    nothing in it, which the per-site figures logged show).
    """
    return central_noise_for_epsilon(cfg.dp_epsilon, cfg.dp_delta, cfg.num_server_rounds)


class _CentralAccounting:
    """What both central-DP wrappers add to Flower's: noise from the budget, uniform weights, and
    the epsilon each site has spent.

    * The noise Flower adds to the mean is ``noise_multiplier x clipping_norm / num_sampled_clients``;
      ``num_sampled_clients`` is set each round to the number of sites sampled, so that with every
      sampled site answering the noise is sigma x C on the sum, one site's sensitivity C.
    * The mean is unweighted: with FedAvg's label weights a large site's share of the mean, and so its
      sensitivity, would exceed C / n and the noise would not cover it. Each site counts as one.
    * A round whose aggregate is released costs each site that took part one Gaussian mechanism of
      effective noise multiplier sigma x answered / sampled (fewer answers: a larger share per site).
      `epsilon_by_site` composes them (`fedmol.privacy.central_epsilon`); the federation's figure is
      the maximum over sites. The releases are checkpointed (`strategy_state`), so a resumed
      federation continues the account.
    """

    cfg: FederationConfig
    noise_multiplier: float
    num_sampled_clients: int
    releases: dict[str, list[float]]

    def _setup_accounting(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self.releases = {}

    def _round_multiplier(self, answered: int, sampled: int) -> float:
        return self.noise_multiplier * answered / max(sampled, answered, 1)

    def _count_sampled(self, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        if out:
            self.num_sampled_clients = len(out)
        return out

    def _aggregate_uniform(self, server_round: int, replies: list[Message], aggregate: Any
                           ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``aggregate(server_round, replies)`` with every site's weight 1, the replies' own weights
        restored afterwards (the round's reports keep them)."""
        saved: list[tuple[MetricRecord, Any]] = []  # the record and its own weight, as it was
        for msg in replies:
            if msg.has_error():
                continue
            for rec in msg.content.metric_records.values():
                if wire.NUM_TRAIN_LABELS in rec:
                    saved.append((rec, rec[wire.NUM_TRAIN_LABELS]))
                    rec[wire.NUM_TRAIN_LABELS] = 1.0
        try:
            return aggregate(server_round, replies)
        finally:
            for rec, value in saved:
                rec[wire.NUM_TRAIN_LABELS] = value

    # Both wrappers' rounds: count the sites sampled, aggregate uniformly, account what the round cost.
    # (Cooperative: `super()` is the Flower DP wrapper each class also derives from.)
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._count_sampled(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self._aggregate_uniform(server_round, replies, super().aggregate_train)  # type: ignore[misc]
        if arrays is not None:
            self._account(replies, self._round_cost(sum(not m.has_error() for m in replies)))
        return arrays, metrics

    def _round_cost(self, answered: int) -> float:
        """The effective noise multiplier of the round just released, for each site that took part."""
        return self._round_multiplier(answered, self.num_sampled_clients)

    def _account(self, replies: list[Message], multiplier: float) -> None:
        for msg in replies:
            if not msg.has_error():
                self.releases.setdefault(SiteReport.from_message(msg).site, []).append(float(multiplier))

    def epsilon_by_site(self) -> dict[str, float]:
        """The epsilon each site has spent so far (at ``dp-delta``)."""
        return {site: central_epsilon(sigmas, self.cfg.dp_delta) for site, sigmas in self.releases.items()}


class AccountedFixedClipping(_CentralAccounting, DifferentialPrivacyServerSideFixedClipping):
    """Flower's central DP with fixed clipping (McMahan et al. 2018), accounted (`_CentralAccounting`).
    The unit protected is a site's whole update in a round, not a compound (for that: site-dp-sgd)."""

    def __init__(self, strategy: Strategy, cfg: FederationConfig) -> None:
        super().__init__(strategy, noise_multiplier=central_noise_multiplier(cfg),
                         clipping_norm=cfg.dp_clipping_norm, num_sampled_clients=cfg.min_sites)
        self._setup_accounting(cfg)


class AccountedAdaptiveClipping(_CentralAccounting, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's central DP with adaptive clipping (Andrew et al. 2021), accounted (`_CentralAccounting`).

    Each round releases two things: the noisy mean of the clipped updates (noise multiplier
    z_update) and the noisy count of sites whose update was clipped, from which the clipping norm is
    adapted (noise stddev sigma_b). Flower counts 0/1 bits, so one site moves the count by 1 (Andrew
    et al. centre the bits, sensitivity 1/2, which Flower's own noise split assumes); the round is
    then equivalent to one Gaussian mechanism of multiplier (z_update^-2 + sigma_b^-2)^-1/2 (Andrew
    et al., Theorem 1, with the sensitivity of Flower's count). Here sigma_b = 2 z and
    z_update = (z^-2 - sigma_b^-2)^-1/2 = 1.155 z, so each round costs exactly a Gaussian mechanism of
    the budget's multiplier z: about 15 % more noise on the update than fixed clipping. With a
    handful of sites a count noise of 2 z (z is about 1 or more) swamps the clipped fraction: the
    clipping norm then follows a noisy walk rather than the quantile; prefer server-fixed there.
    """

    def __init__(self, strategy: Strategy, cfg: FederationConfig) -> None:
        z = central_noise_multiplier(cfg)
        super().__init__(strategy, noise_multiplier=z, num_sampled_clients=cfg.min_sites,
                         initial_clipping_norm=cfg.dp_clipping_norm, clipped_count_stddev=2.0 * z)
        self.target_multiplier = z
        self.noise_multiplier = (z ** -2 - self.clipped_count_stddev ** -2) ** -0.5  # Flower assumed centred bits
        self._setup_accounting(cfg)

    def _round_cost(self, answered: int) -> float:
        """The update's noise and the clipped count's together: one Gaussian mechanism."""
        z_update = self._round_multiplier(answered, self.num_sampled_clients)
        return float((z_update ** -2 + self.clipped_count_stddev ** -2) ** -0.5)


def robust_quorum(cfg: FederationConfig) -> int:
    """The fewest accepted updates with which ``cfg.strategy`` outvotes one poisoning site; 1 for the
    strategies that do not claim to (FedAvg and the other means).

    FedMedian needs 3 (the median of 2 is their mean); the trimmed mean cuts int(beta * n) updates
    at each end (`scipy.stats.trim_mean`), so it drops one only from n >= 1 / beta (and 3).
    With fewer (sites that did not answer, updates rejected), `HookedStrategy` keeps the global model
    for that round instead of letting one site's update through a strategy chosen to stop it; a
    consortium that samples fewer sites than this cannot outvote anyone, and aggregates what came."""
    if cfg.strategy == "fedmedian":
        return 3
    if cfg.strategy == "trimmed-mean" and cfg.trimmed_beta > 0:
        return max(3, math.ceil(1 / cfg.trimmed_beta - 1e-9))
    return 1


def _base_strategy(cfg: FederationConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``, sampling every site each round by default."""
    common: dict[str, Any] = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=cfg.min_sites,
        min_evaluate_nodes=cfg.min_sites,
        min_available_nodes=cfg.min_sites,
        weighted_by_key=wire.NUM_TRAIN_LABELS,
        arrayrecord_key=wire.ARRAYS,
        configrecord_key=wire.CONFIG,
    )
    if cfg.strategy == "fedavg":
        return MeanFedAvg(**common)
    if cfg.strategy == "fednesterov":
        return FedNesterov(outer_lr=cfg.outer_lr, outer_momentum=cfg.outer_momentum, **common)
    if cfg.strategy == "fedprox":
        return MeanFedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    if cfg.strategy == "fedyogi":
        return FedYogi(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    if cfg.strategy == "fedmedian":
        return FedMedian(**common)
    if cfg.strategy == "trimmed-mean":
        return FedTrimmedAvg(beta=cfg.trimmed_beta, **common)
    raise AssertionError(cfg.strategy)  # FederationConfig.validate lists the choices


def weighted_mean(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """The weighted mean of ``updates``, with the arithmetic of Flower's `aggregate_arrayrecords`
    (each update times ``w / sum(weights)``, a Python float, summed in order): the same bits
    (tests/server/test_mean.py compares them)."""
    total = sum(weights)
    out: dict[str, np.ndarray] = {}
    for update, weight in zip(updates, (w / total for w in weights), strict=True):
        for name, value in update.items():
            if name not in out:
                out[name] = value * weight
            else:
                out[name] += value * weight
    return out


class MeanFedAvg(FedAvg):
    """Flower's FedAvg, aggregating the numpy arrays the server already holds.

    Flower's `aggregate_arrayrecords` reads every reply's arrays from their serialised bytes
    (`Array.numpy`), and serialises the mean again. The server has just decoded each reply into
    numpy (`fedmol.server.rounds`, ``to_array_record(..., keep=True)``), and reads the new global
    model back at least three times (the next download, the checkpoint, best-round selection), 52 MB
    each at the default model. In a profile of `benchmarks/rounds.py` (int8, 3 sites, 2 cores) the
    aggregation took 0.22 s of the server's CPU per round with Flower's FedAvg, 0.14 s here. So this
    takes the same mean, with the same arithmetic (`weighted_mean`), over `from_array_record` of each
    reply, which gives the kept arrays without a copy (and reads any other record from its bytes),
    and keeps the mean in the record it returns. Everything else is Flower's: the checks of the
    replies (`_check_and_log_replies`) and the metrics (``train_metrics_aggr_fn``)."""

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        weights = [float(next(iter(c.metric_records.values()))[self.weighted_by_key]) for c in contents]  # type: ignore[arg-type]
        updates = [from_array_record(next(iter(c.array_records.values()))) for c in contents]
        arrays = to_array_record(weighted_mean(updates, weights), keep=True)
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


class MeanFedProx(MeanFedAvg, FedProx):
    """Flower's FedProx (its configure_train sends ``proximal-mu``), aggregating as `MeanFedAvg`."""


def outer_nesterov_step(current: dict[str, np.ndarray], averaged: dict[str, np.ndarray],
                        momentum: dict[str, np.ndarray], *, lr: float, mu: float) -> dict[str, np.ndarray]:
    """DiLoCo's outer step, in place on ``momentum``; returns the new global arrays.

    The outer gradient is d = current - averaged (the sites' mean update, sign as a gradient);
    m <- mu * m + d; new = current - lr * (d + mu * m): SGD with Nesterov momentum, torch's
    convention. lr 1 with mu 0 gives FedAvg's mean. Only floating arrays move; others are
    taken from ``averaged``. Works on the mean alone, so it runs on a secure aggregate too.
    """
    out: dict[str, np.ndarray] = {}
    for name, avg in averaged.items():
        cur = current[name]
        if not np.issubdtype(avg.dtype, np.floating):
            out[name] = avg
            continue
        d = cur.astype(np.float32) - avg.astype(np.float32)
        m = momentum.get(name)
        m = d if m is None else mu * m + d
        momentum[name] = m
        out[name] = (cur - lr * (d + mu * m)).astype(avg.dtype)
    return out


class FedNesterov(MeanFedAvg):
    """FedAvg's label-weighted mean followed by an outer SGD step with Nesterov momentum.

    DiLoCo's outer optimiser (Douillard et al. 2023): the sites train locally (keeping their own
    optimiser state, `keep-optimizer-state`), and the server treats the mean change of the
    model as a gradient. Flower's FedAvgM has no Nesterov term, FedOpt's are Adam/Yogi/Adagrad.
    The momentum is ``m_t``, so a checkpoint keeps it (`strategy_state`).
    """

    def __init__(self, *, outer_lr: float = 0.7, outer_momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outer_lr = outer_lr
        self.outer_momentum = outer_momentum
        self.current_arrays: dict[str, np.ndarray] | None = None
        self.m_t: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = from_array_record(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self.current_arrays is None:
            return arrays, metrics
        stepped = outer_nesterov_step(self.current_arrays, from_array_record(arrays), self.m_t,
                                      lr=self.outer_lr, mu=self.outer_momentum)
        return to_array_record(stepped, keep=True), metrics


# The optimiser state a server-side optimiser (FedAdam/FedYogi/FedAdagrad) keeps between rounds.
_OPT_STATE = ("m_t", "v_t")


_DP_RELEASES = "dp-releases"  # central DP: each site's effective noise multipliers, one per round
_DP_CLIPPING_NORM = "dp-clipping-norm"  # server-adaptive: the clipping norm adapted so far


def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """Arrays to checkpoint so a resumed run continues the server optimiser exactly, central DP's
    account (``dp-releases/<site>``) and server-adaptive's clipping norm (``dp-clipping-norm``).

    Keys are ``<attribute>/<parameter name>``; empty for strategies without state.
    """
    out: dict[str, np.ndarray] = {}
    if isinstance(strategy, _CentralAccounting):
        for site, sigmas in strategy.releases.items():
            out[f"{_DP_RELEASES}/{site}"] = np.asarray(sigmas, dtype=np.float64)
    if isinstance(strategy, AccountedAdaptiveClipping):  # the clipping norm it has adapted so far
        out[_DP_CLIPPING_NORM] = np.asarray([strategy.clipping_norm], dtype=np.float64)
    strategy = _unwrap(strategy)
    for attr in _OPT_STATE:
        state = getattr(strategy, attr, None)
        if state:
            for name, arr in state.items():
                out[f"{attr}/{name}"] = np.asarray(arr)
    return out


def restore_strategy_state(strategy: object, arrays: dict[str, np.ndarray]) -> None:
    """Inverse of `strategy_state`."""
    prefix = f"{_DP_RELEASES}/"
    releases = {k[len(prefix):]: [float(x) for x in v] for k, v in arrays.items() if k.startswith(prefix)}
    if releases:
        if not isinstance(strategy, _CentralAccounting):
            raise ValueError("checkpoint has a central-DP account but the strategy has no central DP: resume with "
                             "the same dp setting")
        strategy.releases = releases
    if _DP_CLIPPING_NORM in arrays:
        if not isinstance(strategy, AccountedAdaptiveClipping):
            raise ValueError("checkpoint has an adaptive clipping norm but the strategy has no adaptive central DP: "
                             "resume with the same dp setting")
        strategy.clipping_norm = float(arrays[_DP_CLIPPING_NORM][0])
    target = _unwrap(strategy)
    for attr in _OPT_STATE:
        prefix = f"{attr}/"
        part = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if part:
            if not hasattr(target, attr):
                raise ValueError(f"checkpoint has {attr} state but {type(target).__name__} keeps none")
            setattr(target, attr, part)


def _unwrap(strategy: object) -> object:
    """The optimising strategy inside Flower's DP wrappers (they keep it as ``.strategy``)."""
    while isinstance(inner := getattr(strategy, "strategy", None), Strategy):
        strategy = inner
    return strategy
