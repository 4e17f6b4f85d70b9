"""The consortium's run configuration, converted once at the edge into a frozen dataclass.

Flower hands the ServerApp and ClientApps ``context.run_config``: a flat dict of kebab-case
keys from ``[tool.flwr.app.config]`` in pyproject.toml, overridden by ``flwr run --run-config``.
`FederationConfig.from_run_config` is the only place that reads it; unknown keys are an error
so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args, get_origin, get_type_hints

from fedmol.errors import ConfigError

# The closed choices of the run config. The types are what mypy checks; the run-time validation
# (`FederationConfig.validate`) and the CLI's choices are derived from them, so they cannot drift.
# fednesterov: FedAvg's weighted mean, then an outer SGD step with Nesterov momentum on the
# server (DiLoCo's outer optimiser; `fedmol.server.strategies.FedNesterov`).
Strategy = Literal["fedavg", "fednesterov", "fedprox", "fedadam", "fedyogi", "fedmedian", "trimmed-mean"]
# Differential privacy: "site-dp-sgd" is per-compound DP-SGD in each site's local training (the unit
# protected: one compound); "server-fixed"/"server-adaptive" are central (site-level) DP on the server,
# Flower's wrappers (the unit protected: one site's whole update). Accounting: `fedmol.privacy`.
DPMode = Literal["off", "site-dp-sgd", "server-fixed", "server-adaptive"]
SITE_DP_MODES: tuple[DPMode, ...] = ("site-dp-sgd",)
CENTRAL_DP_MODES: tuple[DPMode, ...] = ("server-fixed", "server-adaptive")
Optimizer = Literal["sgd", "adam", "adamw"]
# float16 halves the bytes a site uploads per round; int8 (the default) sends the update (trained
# minus received) in 8 bits with a float32 scale per row, zlib-compressed where that pays: at most
# about a quarter, 4% for a Tox21 site at 32,768 bits, at no measured ROC-AUC cost (`fedmol.transport`,
# benchmarks/results/privacy_cost_int8.md). With secure-aggregation=true every transport falls back
# to float32, what SecAgg+ sums.
TransportDtype = Literal["float32", "float16", "int8"]
InputTransform = Literal["binary", "log1p", "none"]  # stored feature values -> input weights
TaskKind = Literal["classification", "regression"]

STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
# What works on the sum alone (secure aggregation): the mean, and an outer step applied to it.
SECURE_STRATEGIES: tuple[Strategy, ...] = ("fedavg", "fednesterov")
TASK_KINDS: tuple[TaskKind, ...] = get_args(TaskKind)
# Not a closed set (cuda:N names a GPU), so a pattern rather than a Literal.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class FederationConfig:
    """Every setting of a federation. Field names are the run-config keys with ``_`` for ``-``."""

    num_server_rounds: int = 40  # the most rounds; `patience` may stop the federation sooner
    # Early stopping of the federation: stop after this many rounds without a better federated
    # validation score (label-weighted over the sites); 0 runs exactly num-server-rounds. The
    # best round's model is the one kept and registered either way.
    patience: int = 5
    strategy: Strategy = "fedavg"
    min_sites: int = 2  # a round needs at least this many sites to answer
    fraction_train: float = 1.0
    round_timeout: float = 3600.0  # seconds to wait for the sites' replies in one round
    # One message per round: a site evaluates the model it receives (the last round's aggregate)
    # before training on it and sends both in one reply; only the final round sends a separate
    # evaluate message. The sites compute exactly the same; each round costs one round trip.
    evaluate_in_train: bool = True
    # Server-side optimiser (FedAdam/FedYogi) and robust aggregation.
    server_lr: float = 0.01
    # fednesterov's outer step: x <- x - outer-lr * (d + outer-momentum * m), m <- outer-momentum * m + d,
    # d = x - mean of the sites' models (outer-lr 1 with outer-momentum 0 is FedAvg).
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    trimmed_beta: float = 0.2
    transport_dtype: TransportDtype = "int8"
    # Secure aggregation (Flower's SecAgg+, fedmol.server.secagg): the server sees only the sum of the
    # updates. FedAvg only; shares and threshold as fractions of the sampled sites; parameters are
    # clipped to +-secagg-clipping-range; a site's weight (training labels) must be <= max-weight,
    # and a max-weight far above the weights costs precision in round 1 (then it is tightened).
    secure_aggregation: bool = False
    secagg_num_shares: float = 1.0
    secagg_threshold: float = 0.67
    secagg_clipping_range: float = 8.0
    secagg_max_weight: float = 100000.0
    # Differential privacy (`fedmol.privacy`). Any mode other than "off" needs the budget dp-epsilon:
    # the target epsilon (at dp-delta) for the whole federation, per site (site-dp-sgd: per compound of
    # the site; central modes: per site's contribution); the noise is derived from it, the rounds and
    # the sampling rate, never a fixed default. 0.0: not set.
    dp: DPMode = "off"
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    # site-dp-sgd: each compound's gradient (all parameters, the sum of its labels' losses) is clipped to
    # this L2 norm. 1.0: below most per-compound gradient norms on Tox21 (medians 2.3-5.8 by site and
    # epoch, 10th-90th percentiles 0.6-12.6, at the general defaults' model), so nearly every compound
    # contributes its gradient's direction at one norm; with dp-lr 4 it beat clip 4 at lr 1 (below).
    dp_sample_clip: float = 1.0
    dp_clipping_norm: float = 10.0  # central modes: each site's update is clipped to this L2 norm
    # site-dp-sgd's own recipe, chosen by measurement (benchmarks/results/dp_recipe.md and
    # dp_recipe_notes.md: Tox21, 4 scaffold sites of ~1,070 training compounds, epsilon 8; 0.701 mean test
    # ROC-AUC over 5 runs with the RDP accountant, 0.706-0.713 with PLD's smaller noise, against 0.676 over
    # 4 for the recipe before: dp-hidden 64, clip 4, lr 1; without noise this budget of 60 full-batch
    # steps reaches 0.745-0.756). The
    # noise is drawn for every coordinate of the shared model at every step, so under DP a small trunk,
    # large batches and few steps learn where the defaults above do not.
    # With dp="site-dp-sgd" (and only then): the shared model's hidden layers are dp-hidden (`hidden_sizes`:
    # what the server and every site build); each site's DP-SGD local training samples at rate
    # q = dp-batch-size / n (0: every training compound at every step, q = 1) for dp-local-epochs epochs a
    # round, at lr dp-lr x dp-lr-decay ** (round - 1), in place of batch-size, local-epochs, local-steps, lr
    # and lr-decay; the federation runs at most dp-num-server-rounds rounds in place of num-server-rounds
    # (`max_rounds`: the server's loop and every site's noise plan read it). The site's fine-tuning and its
    # private heads' refit (neither leaves the site) keep batch-size and finetune-lr; its local-only
    # baseline trains the same dp-hidden model without DP.
    # dp-batch-size 0 holds every training compound in one step's memory (fine at ~10^5 compounds).
    dp_hidden: str = "32"
    dp_num_server_rounds: int = 20
    dp_batch_size: int = 0
    dp_local_epochs: int = 3
    dp_lr: float = 4.0
    dp_lr_decay: float = 1.0
    # Local training on the sites.
    local_epochs: int = 2
    # At least this many optimiser steps per round (0: off): a site whose training folds are small
    # runs more epochs, ceil(local-steps / batches per epoch), so every round moves the model.
    local_steps: int = 0
    optimizer: Optimizer = "sgd"
    lr: float = 1.0
    lr_decay: float = 0.95  # local lr in server round r (1-based) is lr * lr_decay ** (r - 1)
    # The site keeps its local optimiser's state (momentum, Adam moments) on disk between rounds
    # instead of starting it afresh every round (DiLoCo's inner optimiser).
    keep_optimizer_state: bool = False
    momentum: float = 0.9
    # Factor on the regression heads' loss in local training (one lr for both task kinds: the
    # squared error of standardised values has ~10x the gradient of the cross-entropy).
    regression_weight: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 128
    proximal_mu: float = 0.01  # FedProx only
    head_epochs: int = 0  # private heads refitted on the received trunk before each evaluation
    # Personalisation in the final evaluation (0: off): each site fine-tunes a copy of the chosen
    # model (trunk and its heads) on its training folds with its local optimiser at finetune-lr,
    # early stopping on its validation fold (patience finetune-patience), and keeps it only when it
    # beats the shared model on its validation score. The fine-tuned model never leaves the site.
    # The defaults of this class are one recipe, chosen by measurement on three public sets:
    # benchmarks/results/recipes_notes.md.
    finetune_epochs: int = 20
    finetune_lr: float = 0.3
    finetune_patience: int = 5
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N
    num_threads: int = 0  # torch CPU threads per site process (0: torch's default)
    seed: int = 0
    # Model.
    n_bits: int = 32768
    hidden: str = "400"  # comma-separated layer sizes
    dropout: float = 0.2
    input_transform: InputTransform = "binary"
    consortium_tasks: str = ""  # "task:classification,task2:regression"; the shared heads
    # Data on the sites.
    test_fold: int = 0
    valid_fold: int = 1
    # A task is scored (valid/test fold, at a site) when that fold holds at least this many
    # positives and negatives (classification) or exact values (regression). 25 follows
    # SparseChem's AUC rule; MELLODDY's per-fold evaluation quorum is 10.
    eval_min_labels: int = 25
    sim_store_dir: str = ""  # simulation only: a folder of site stores, partition i = i-th (store_folders)
    # Tracking, checkpoints, registry.
    output_dir: str = "~/.fedmol/server"  # checkpoints and the default MLflow store live here
    tracking_uri: str = ""  # default: sqlite:///<output_dir>/mlflow.db
    experiment: str = "fedmol"
    run_name: str = ""
    model_name: str = "fedmol-shared"
    register_model: bool = True
    resume: str = ""  # a checkpoint directory (or "latest" in output_dir) to continue from
    table_name: str = "federation"  # the data-set name written in the federation-gain table
    report_task_names: bool = False  # sites report private tasks by name (else "private:<kind>:<i>")
    # The federation-gain report: each site trains (once, cached in its store) a local-only model
    # on the same folds and reports its scores beside the federated ones.
    local_baseline: bool = True

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationConfig:
        """Build from Flower's run config; raise `ConfigError` on an unknown key or bad value."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown run-config key(s) {unknown}; known keys: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            f = known[key]
            values[f.name] = _coerce(key, value, f.type)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def with_overrides(self, items: list[str]) -> FederationConfig:
        """This config with ``KEY=VALUE`` overrides (as given to ``--set``) applied and validated."""
        overrides: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. num-server-rounds=10")
            overrides[key.strip()] = value.strip().strip('"')
        return FederationConfig.from_run_config({**self.to_run_config(), **overrides})

    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> FederationConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        for name, choices in _choices().items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"{name.replace('_', '-')} {value!r} is not one of {choices}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"device {self.device!r} is not one of auto, cpu, cuda or cuda:N")
        if self.num_server_rounds < 1:
            raise ConfigError("num-server-rounds must be at least 1")
        if self.patience < 0:
            raise ConfigError("patience must be >= 0 (0: run every one of num-server-rounds)")
        if self.outer_lr <= 0 or not 0 <= self.outer_momentum < 1:
            raise ConfigError("outer-lr must be > 0 and outer-momentum in [0, 1)")
        if self.min_sites < 1:
            raise ConfigError("min-sites must be at least 1")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError("lr-decay must be in (0, 1]")
        if self.finetune_epochs < 0 or self.finetune_lr <= 0 or self.finetune_patience < 1:
            raise ConfigError("finetune-epochs must be >= 0, finetune-lr > 0 and finetune-patience >= 1")
        # With secure aggregation transport-dtype falls back to float32, what SecAgg+ sums
        # (`fedmol.transport.effective_transport`); the server logs and tags the fallback.
        # Per-compound DP at the sites and SecAgg+ on the sum are complementary; central DP clips each
        # site's update on the server, which secure aggregation never shows it.
        if self.secure_aggregation and (self.strategy not in SECURE_STRATEGIES or self.dp in CENTRAL_DP_MODES):
            raise ConfigError(f"secure-aggregation=true needs strategy in {SECURE_STRATEGIES} and dp \"off\" or "
                              f"{' or '.join(repr(m) for m in SITE_DP_MODES)}: the server sees only the sum of the "
                              "updates, never an individual update to take a median of or clip (central DP "
                              f"{CENTRAL_DP_MODES} clips each site's update on the server)")
        self._validate_dp()
        if self.regression_weight <= 0:
            raise ConfigError("regression-weight must be > 0")
        if self.local_epochs < 1 or self.local_steps < 0:
            raise ConfigError("local-epochs must be >= 1 and local-steps >= 0")
        if self.eval_min_labels < 1:
            raise ConfigError("eval-min-labels must be at least 1")
        if self.test_fold == self.valid_fold:
            raise ConfigError("test-fold and valid-fold must differ")
        _layer_sizes("hidden", self.hidden)  # raises on a bad value (dp-hidden: `_validate_dp`)
        self.consortium_task_list  # noqa: B018

    def _validate_dp(self) -> None:
        if not (math.isfinite(self.dp_epsilon) and self.dp_epsilon >= 0):
            raise ConfigError(f"dp-epsilon must be a finite number >= 0 (0: not set), got {self.dp_epsilon}")
        if self.dp != "off" and self.dp_epsilon <= 0:
            raise ConfigError(f"dp={self.dp!r} needs a privacy budget: set dp-epsilon > 0, the target epsilon per "
                              f"site for the whole federation (at dp-delta={self.dp_delta:g}), e.g. dp-epsilon=8; "
                              "the noise is derived from it, the rounds and the sampling rate")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp-delta must be in (0, 1), e.g. 1e-5, got {self.dp_delta}")
        if not (math.isfinite(self.dp_sample_clip) and self.dp_sample_clip > 0):
            raise ConfigError(f"dp-sample-clip must be a finite number > 0, got {self.dp_sample_clip}")
        if not (math.isfinite(self.dp_clipping_norm) and self.dp_clipping_norm > 0):
            raise ConfigError(f"dp-clipping-norm must be a finite number > 0, got {self.dp_clipping_norm}")
        if self.dp_num_server_rounds < 1:
            raise ConfigError(f"dp-num-server-rounds must be at least 1, got {self.dp_num_server_rounds}")
        if self.dp_batch_size < 0 or self.dp_local_epochs < 1:
            raise ConfigError(f"dp-batch-size must be >= 0 (0: full batch) and dp-local-epochs >= 1, got "
                              f"{self.dp_batch_size} and {self.dp_local_epochs}")
        if not (math.isfinite(self.dp_lr) and self.dp_lr > 0) or not 0 < self.dp_lr_decay <= 1:
            raise ConfigError(f"dp-lr must be a finite number > 0 and dp-lr-decay in (0, 1], got {self.dp_lr} and "
                              f"{self.dp_lr_decay}")
        _layer_sizes("dp-hidden", self.dp_hidden)

    @property
    def site_dp(self) -> bool:
        """Per-compound DP-SGD at the sites (dp="site-dp-sgd"): its recipe (dp-hidden, dp-batch-size, ...) applies."""
        return self.dp in SITE_DP_MODES

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """The shared model's hidden layers: ``hidden``, or ``dp-hidden`` with dp="site-dp-sgd"."""
        if self.site_dp:
            return _layer_sizes("dp-hidden", self.dp_hidden)
        return _layer_sizes("hidden", self.hidden)

    @property
    def max_rounds(self) -> int:
        """The most server rounds of the federation: ``num-server-rounds``, or ``dp-num-server-rounds``
        with dp="site-dp-sgd" (each site's noise is planned for that many rounds)."""
        return self.dp_num_server_rounds if self.site_dp else self.num_server_rounds

    def dp_batch(self, n_train: int) -> int:
        """site-dp-sgd's expected batch on ``n_train`` compounds: ``dp-batch-size``, or all of them (0)."""
        return max(n_train, 1) if self.dp_batch_size == 0 else self.dp_batch_size

    @property
    def consortium_task_list(self) -> list[tuple[str, TaskKind]]:
        """The consortium's shared tasks as (name, kind), in the order every site uses."""
        out: list[tuple[str, TaskKind]] = []
        for item in str(self.consortium_tasks).split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, kind = item.rpartition(":")
            if not sep or not name or not _is_task_kind(kind):
                raise ConfigError(
                    f"consortium-tasks entry {item!r}: expected NAME:classification or NAME:regression"
                )
            out.append((name, kind))
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise ConfigError(f"consortium-tasks lists a task twice: {names}")
        return out

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser().resolve()

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.output_path / 'mlflow.db'}"


def _layer_sizes(key: str, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in str(value).split(",") if s.strip())
    except ValueError as exc:
        raise ConfigError(f"{key}={value!r}: expected comma-separated integers") from exc
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{key}={value!r}: expected positive layer sizes, e.g. '400,400'")
    return sizes


@cache
def _choices() -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for every field typed with a Literal."""
    hints = get_type_hints(FederationConfig)
    return {f.name: get_args(hints[f.name]) for f in fields(FederationConfig) if get_origin(hints[f.name]) is Literal}


def _is_task_kind(kind: str) -> TypeGuard[TaskKind]:
    return kind in TASK_KINDS


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    type_name = str(type_name)
    try:
        if type_name == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if type_name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if type_name == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run-config key {key!r}: {value!r} is not a valid {type_name}") from exc
