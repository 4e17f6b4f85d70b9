"""Flower's own strategies, selected by one run-config key.

Every strategy weights sites by their number of training labels (`fedmol.wire.NUM_TRAIN_LABELS`)
and reads the shared model from the same record keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


def restore_strategy_state(strategy: Strategy, arrays: dict[str, np.ndarray]) -> None:
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
