"""Flower's own strategies, selected by one run-config key.

Every strategy weights sites by their number of training labels (`fedmol.wire.NUM_TRAIN_LABELS`)
and reads the shared model from the same record keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
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
from fedmol.config import FederationConfig


def make_strategy(cfg: FederationConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``, wrapped in Flower's central-DP strategy when
    ``cfg.dp`` is on (server-side clipping of each update to ``dp-clipping-norm`` and Gaussian noise
    with ``dp-noise-multiplier`` x norm on the aggregate)."""
    base = _base_strategy(cfg)
    if cfg.dp == "off":
        return base
    if cfg.dp == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            base, noise_multiplier=cfg.dp_noise_multiplier, clipping_norm=cfg.dp_clipping_norm,
            num_sampled_clients=cfg.min_sites)
    return DifferentialPrivacyServerSideAdaptiveClipping(
        base, noise_multiplier=cfg.dp_noise_multiplier, num_sampled_clients=cfg.min_sites,
        initial_clipping_norm=cfg.dp_clipping_norm)


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
        return FedAvg(**common)
    if cfg.strategy == "fednesterov":
        return FedNesterov(outer_lr=cfg.outer_lr, outer_momentum=cfg.outer_momentum, **common)
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    if cfg.strategy == "fedyogi":
        return FedYogi(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    if cfg.strategy == "fedmedian":
        return FedMedian(**common)
    if cfg.strategy == "trimmed-mean":
        return FedTrimmedAvg(beta=cfg.trimmed_beta, **common)
    raise AssertionError(cfg.strategy)  # FederationConfig.validate lists the choices


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


class FedNesterov(FedAvg):
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
        self.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self.current_arrays is None:
            return arrays, metrics
        stepped = outer_nesterov_step(self.current_arrays, {k: a.numpy() for k, a in arrays.items()}, self.m_t,
                                      lr=self.outer_lr, mu=self.outer_momentum)
        return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in stepped.items()}), metrics


# The optimiser state a server-side optimiser (FedAdam/FedYogi/FedAdagrad) keeps between rounds.
_OPT_STATE = ("m_t", "v_t")


def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """Arrays to checkpoint so a resumed run continues the server optimiser exactly.

    Keys are ``<attribute>/<parameter name>``; empty for strategies without state.
    """
    strategy = _unwrap(strategy)
    out: dict[str, np.ndarray] = {}
    for attr in _OPT_STATE:
        state = getattr(strategy, attr, None)
        if state:
            for name, arr in state.items():
                out[f"{attr}/{name}"] = np.asarray(arr)
    return out


def restore_strategy_state(strategy: object, arrays: dict[str, np.ndarray]) -> None:
    """Inverse of `strategy_state`."""
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
