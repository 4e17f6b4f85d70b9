"""Training, evaluation and prediction: the `train_epochs`/`evaluate`/`predict` trio used by
``fedmol train``, the federation's clients, the baselines and the benchmarks.

Defaults follow SparseChem: Adam, lr 1e-3, 20 epochs, lr x0.3 from epoch 10. The optimizer is
returned so that a caller (a federation client) can keep its state between rounds; the lr step
schedule is a pure function of the global epoch number (``start_epoch + epoch``), so it carries
over rounds without a scheduler object.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from fedmol.config import Optimizer
from fedmol.errors import ConfigError, TrainingDiverged
from fedmol.models.data import TaskData, iter_batches, iter_feature_batches, transform_features
from fedmol.models.dp import GhostClipper, add_noise_, dp_sample_rate, iter_poisson_batches
from fedmol.models.losses import LossSum, censored_mse, masked_bce
from fedmol.models.metrics import (
    DEFAULT_THRESHOLDS,
    MetricThresholds,
    classification_metrics,
    regression_metrics,
    summarise,
)
from fedmol.models.network import MultiTaskNet

__all__ = ["TrainConfig", "TrainResult", "EpochRecord", "EvalResult", "Predictions", "resolve_device",
           "train_epochs", "evaluate", "predict", "mc_dropout_outputs", "make_optimizer", "fit_target_scaling",
           "compute_loss", "single_threaded_blas"]

Monitor = Literal["loss", "score"]
Amp = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a local training run. Units: lr per step; epochs are full passes.

    patience: stop when the validation monitor has not improved for this many epochs (None: no
        early stopping). With ``restore_best`` the best epoch's weights are put back at the end.
    monitor: ``loss`` (validation loss, lower is better) or ``score`` (mean ROC-AUC over
        classification tasks plus mean R² over regression tasks that qualify, higher is better; the
        loss when no validation task qualifies).
    proximal_mu: FedProx term mu/2 * ||w - w_ref||² over the parameters in ``prox_reference``.
    num_threads: torch intra-op threads on CPU (None: leave torch's setting).
    """

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: Optimizer = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_epoch: int = 10
    lr_gamma: float = 0.3
    patience: int | None = None
    monitor: Monitor = "loss"
    restore_best: bool = True
    device: str = "auto"
    amp: Amp = "auto"
    seed: int = 0
    proximal_mu: float = 0.0
    num_threads: int | None = None
    grad_clip: float | None = None
    # Factor on the regression heads' loss while training: the squared error of standardised
    # values has ~10x the gradient of a (mostly negative) cross-entropy, so one SGD lr can serve
    # both kinds (benchmarks/results/recipes_notes.md). 1.0: the plain sum.
    regression_weight: float = 1.0
    # Per-compound DP-SGD (models/dp.py): with dp_max_grad_norm set, each epoch draws Poisson
    # batches at rate q = batch_size / n_train, clips each compound's whole gradient to this norm,
    # sums, adds N(0, (dp_noise_multiplier x dp_max_grad_norm)^2) per coordinate and divides by
    # batch_size. None: no per-sample clipping, training unchanged. Pair it with optimizer "sgd"
    # (momentum): Adam's per-coordinate scaling lifts the noise-only coordinates of the input layer
    # to the lr (Tox21, 1,024 bits, sigma 1, C 1: Adam 0.45 ROC-AUC, SGD momentum 0.69-0.73).
    dp_max_grad_norm: float | None = None
    dp_noise_multiplier: float = 0.0
    # The seed of DP-SGD's own randomness (the Poisson batches and the noise). None, the default and
    # what a site uses: fresh OS entropy every epoch. ``seed`` comes from the run config, which the
    # server knows: noise drawn from it could be regenerated and subtracted, and the guarantee would
    # be void. Set it only to reproduce a run in a test or a benchmark.
    dp_seed: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in get_args(Optimizer):
            raise ConfigError(f"optimizer {self.optimizer!r}: use {' or '.join(get_args(Optimizer))}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs must be >= 0, batch_size >= 1 and lr > 0")
        if self.regression_weight <= 0:
            raise ConfigError("regression_weight must be > 0")
        if self.lr_step_epoch < 1:
            raise ConfigError("lr_step_epoch must be >= 1")
        if self.monitor not in get_args(Monitor):
            raise ConfigError(f"monitor {self.monitor!r}: use {' or '.join(get_args(Monitor))}")
        if self.amp not in get_args(Amp):
            raise ConfigError(f"amp {self.amp!r}: use {', '.join(get_args(Amp))}")
        self._check_dp()

    def _check_dp(self) -> None:
        norm, noise = self.dp_max_grad_norm, self.dp_noise_multiplier
        if not math.isfinite(noise) or noise < 0:
            raise ConfigError(f"dp_noise_multiplier must be a finite number >= 0, got {noise}")
        if norm is None:
            if noise > 0:
                raise ConfigError("dp_noise_multiplier is set but dp_max_grad_norm is not: DP-SGD noise is "
                                  "scaled by the clipping norm, so set dp_max_grad_norm too")
            return
        if not math.isfinite(norm) or norm <= 0:
            raise ConfigError(f"dp_max_grad_norm must be a finite number > 0, got {norm}")
        if self.grad_clip:
            raise ConfigError("grad_clip cannot be combined with dp_max_grad_norm: DP-SGD already clips "
                              "each compound's gradient; drop grad_clip")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based, global) ``epoch``: lr x gamma^(epoch // lr_step_epoch)."""
        return self.lr * self.lr_gamma ** (epoch // self.lr_step_epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(setting: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {setting!r}: use auto, cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available: use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {setting!r} is not supported: use auto, cpu or cuda")
    return device


def _amp_enabled(config: TrainConfig, device: torch.device) -> bool:
    if config.amp == "off" or device.type != "cuda":
        return False
    return True


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: global epoch number, lr, mean training loss per label, validation loss/score."""

    epoch: int
    lr: float
    train_loss: float
    n_labels: int
    valid_loss: float | None = None
    valid_score: float | None = None


@dataclass
class TrainResult:
    """History per epoch, the best epoch (by the monitor) and the optimizer (keep its state)."""

    history: list[EpochRecord]
    optimizer: torch.optim.Optimizer
    best_epoch: int | None = None
    stopped_early: bool = False
    n_train_labels: int = 0
    dp_steps: int = 0  # optimizer steps taken with DP-SGD (0 without DP)
    dp_sample_rate: float = 0.0  # Poisson sampling rate q = batch_size / n_train (0.0 without DP)

    @property
    def final_loss(self) -> float:
        return self.history[-1].train_loss if self.history else float("nan")


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW (decoupled weight decay) or SGD (with momentum) over all parameters, per ``config``."""
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernels update the 13M-weight input layer 4-5x faster than the default loop on
    # CPU (measured: Adam 15 ms vs 75 ms per step for 32768x400); the state_dict is the same.
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay, "fused": True}
    if config.optimizer == "sgd":
        kwargs["momentum"] = config.momentum
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[config.optimizer]
    try:
        return cls(params, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # fused not available for this device/dtype
        kwargs.pop("fused")
        return cls(params, **kwargs)


def fit_target_scaling(model: MultiTaskNet, data: TaskData, heads: list[str] | None = None) -> None:
    """Set regression heads' target mean/std from ``data``'s uncensored labels.

    heads: which heads (default: every *private* regression head; a shared head's scaling must
    be the same at every site, so the federation sets it explicitly).
    """
    if heads is None:
        heads = [h.name for h in model.spec.heads if h.kind == "regression" and not h.shared]
    for name in heads:
        mean, std = data.target_stats(name)
        model.set_target_scaling(name, mean, std)


def compute_loss(
    model: MultiTaskNet, outputs: Mapping[str, Tensor], labels: Mapping[str, Any],
    task_weights: Mapping[str, Tensor] | None = None, regression_weight: float = 1.0,
) -> LossSum:
    """Sum of per-label losses over all heads (hybrid sets train together) and the label count.

    regression_weight: factor on the regression heads' loss in the training objective (see
    `TrainConfig.regression_weight`); evaluation always reports the plain loss (1.0).
    """
    total: Tensor | None = None
    count: Tensor | None = None
    for name, out in outputs.items():
        lab = labels[name]
        head = model.heads[name]
        w = task_weights.get(name) if task_weights else None
        out32 = out.float()
        if head.kind == "classification":
            part = masked_bce(out32, lab.values, lab.mask, w)
        else:
            part = censored_mse(out32, head.standardise(lab.values), lab.mask, lab.censor, w)
            if regression_weight != 1.0:
                part = LossSum(part.total * regression_weight, part.count)
        total = part.total if total is None else total + part.total
        count = part.count if count is None else count + part.count
    assert total is not None and count is not None
    return LossSum(total, count)


def single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """Keep numpy/scipy BLAS on one thread. After a multi-threaded BLAS call, OpenBLAS worker
    threads busy-wait and take the cores torch needs: measured 5x slower training epochs on
    2 cores after a scikit-learn metrics pass."""
    return threadpool_limits(limits=1, user_api="blas")


def _seed_everything(seed: int, epoch: int) -> None:
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def train_epochs(
    model: MultiTaskNet,
    train: TaskData,
    config: TrainConfig = TrainConfig(),
    *,
    optimizer: torch.optim.Optimizer | None = None,
    valid: TaskData | None = None,
    prox_reference: Mapping[str, Tensor] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    start_epoch: int = 0,
    task_weights: Mapping[str, Tensor] | None = None,
    thresholds: MetricThresholds = DEFAULT_THRESHOLDS,
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs on ``train``.

    optimizer: continue with this optimizer (its state kept, its lr set per epoch); a new one
        from ``config`` when None.
    valid: validation data for the history and early stopping (``config.patience``).
    prox_reference: parameter name -> tensor (e.g. the global model of this round) for FedProx.
    start_epoch: global epoch number of the first epoch (drives the lr steps and the shuffles).
    task_weights: head name -> (n_tasks,) weights of the loss per task column.
    Returns the history, best epoch and the optimizer. Loss is per present label.
    """
    with single_threaded_blas():
        return _train_epochs(model, train, config, optimizer, valid, prox_reference, on_epoch, start_epoch,
                             task_weights, thresholds)


def _train_epochs(
    model: MultiTaskNet, train: TaskData, config: TrainConfig, optimizer: torch.optim.Optimizer | None,
    valid: TaskData | None, prox_reference: Mapping[str, Tensor] | None,
    on_epoch: Callable[[EpochRecord], None] | None, start_epoch: int,
    task_weights: Mapping[str, Tensor] | None, thresholds: MetricThresholds,
) -> TrainResult:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    model.to(device)
    if optimizer is None:
        optimizer = make_optimizer(model, config)
    use_amp = _amp_enabled(config, device)
    clipper = GhostClipper(model) if config.dp_max_grad_norm is not None else None
    if clipper is not None and use_amp:
        _log_once("DP-SGD trains in float32: mixed precision is off while dp_max_grad_norm is set")
        use_amp = False
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = {k: v.to(device) for k, v in task_weights.items()} if task_weights else None
    prox = _prox_pairs(model, prox_reference, device) if config.proximal_mu > 0 and prox_reference else []
    dp_steps = 0

    history: list[EpochRecord] = []
    best_value: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, Tensor] | None = None
    stale = 0
    stopped = False
    for i in range(config.epochs):
        epoch = start_epoch + i
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        _seed_everything(config.seed, epoch)
        model.train()
        if clipper is not None:
            loss_sum, n_labels, steps = _dp_epoch(model, train, config, optimizer, clipper, epoch, device,
                                                  weights, prox)
            dp_steps += steps
        else:
            loss_sum, n_labels = _plain_epoch(model, train, config, optimizer, scaler, use_amp, epoch, device,
                                              weights, prox)
        record = EpochRecord(epoch=epoch, lr=lr, train_loss=loss_sum / max(n_labels, 1), n_labels=n_labels)
        _check_finite(model, epoch, lr)
        if valid is not None:
            ev = evaluate(model, valid, batch_size=max(config.batch_size, 1024), thresholds=thresholds)
            record = EpochRecord(epoch, lr, record.train_loss, n_labels, ev.loss, ev.score)
            # score: when no validation task qualifies the score is None at every epoch; the loss decides.
            lower_is_better = config.monitor == "loss" or ev.score is None
            value = ev.loss if lower_is_better else ev.score
            better = (
                value is not None and math.isfinite(value)
                and (best_value is None or (value < best_value if lower_is_better else value > best_value))
            )
            if better:
                best_value, best_epoch, stale = value, epoch, 0
                if config.restore_best:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if config.patience is not None and valid is not None and stale >= config.patience:
            stopped = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(history=history, optimizer=optimizer, best_epoch=best_epoch, stopped_early=stopped,
                       n_train_labels=train.n_labels(), dp_steps=dp_steps,
                       dp_sample_rate=dp_sample_rate(train.n, config.batch_size) if clipper is not None else 0.0)


def _plain_epoch(
    model: MultiTaskNet, train: TaskData, config: TrainConfig, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, use_amp: bool, epoch: int, device: torch.device,
    weights: Mapping[str, Tensor] | None, prox: list[tuple[Tensor, Tensor]],
) -> tuple[float, int]:
    """One epoch over shuffled mini-batches, mean loss per label; returns (loss sum, label count)."""
    loss_sum = 0.0
    n_labels = 0
    for batch, labels in iter_batches(
        train, config.batch_size, shuffle=True, seed=[config.seed, epoch], device=device
    ):
        optimizer.zero_grad(set_to_none=False)
        with _autocast(device, use_amp):
            outputs = model(batch)
        parts = compute_loss(model, outputs, labels, weights, config.regression_weight)
        count = float(parts.count.item())
        if count == 0:
            continue
        loss = parts.total / count
        if prox:
            loss = loss + 0.5 * config.proximal_mu * sum((p - r).pow(2).sum() for p, r in prox)
        scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += float(parts.total.detach().item())
        n_labels += int(count)
    return loss_sum, n_labels


def _dp_epoch(
    model: MultiTaskNet, train: TaskData, config: TrainConfig, optimizer: torch.optim.Optimizer,
    clipper: GhostClipper, epoch: int, device: torch.device, weights: Mapping[str, Tensor] | None,
    prox: list[tuple[Tensor, Tensor]],
) -> tuple[float, int, int]:
    """One epoch of per-compound DP-SGD (models/dp.py); returns (loss sum, label count, steps).

    Each compound's loss is the sum over its labels as in `compute_loss` (task weights,
    regression_weight). An empty Poisson batch still takes a step of noise only: skipping it
    would depend on the data. FedProx's term touches no data, so its gradient is added after
    the noise, unclipped.
    """
    assert config.dp_max_grad_norm is not None
    clip = config.dp_max_grad_norm
    std = config.dp_noise_multiplier * clip
    expected_batch = dp_sample_rate(train.n, config.batch_size) * train.n
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum, n_labels, steps = 0.0, 0, 0
    # Never from `config.seed` (the run config's, known to the server): see TrainConfig.dp_seed.
    entropy = [config.dp_seed, epoch] if config.dp_seed is not None else [secrets.randbits(64) for _ in range(4)]
    sequence = np.random.SeedSequence(entropy)
    sampling, noise_seed = sequence.spawn(2)
    noise = torch.Generator(device=device)
    noise.manual_seed(int(noise_seed.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
    for item in iter_poisson_batches(train, config.batch_size, seed=sampling, device=device):
        optimizer.zero_grad(set_to_none=False)
        if item is not None:
            batch, labels = item
            with clipper.capture():
                outputs = model(batch)
            parts = compute_loss(model, outputs, labels, weights, config.regression_weight)
            count = int(parts.count.item())
            if count > 0:
                clipper.clipped_backward(parts.total, outputs, clip)
                loss_sum += float(parts.total.detach().item())
                n_labels += count
        add_noise_(params, std, expected_batch, generator=noise)
        if prox:
            with torch.no_grad():
                for p, ref in prox:
                    if p.requires_grad and p.grad is not None:
                        p.grad.add_(p - ref, alpha=config.proximal_mu)
        optimizer.step()
        steps += 1
    return loss_sum, n_labels, steps


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logging.getLogger(__name__).warning(message)


def _check_finite(model: torch.nn.Module, epoch: int, lr: float) -> None:
    """Stop with a clear message when an epoch left NaN or infinite weights (with mixed precision
    the grad scaler skips overflowing steps, so this is real divergence), instead of failing later
    inside a metric or sending the weights anywhere."""
    # A finite sum means no NaN or infinite value (6 ms at 32,768 bits, against 0.1 s for the exact
    # check, which runs only when the sum is not finite: finite values can overflow it).
    with torch.no_grad():
        bad = [name for name, p in model.named_parameters()
               if not bool(torch.isfinite(p.sum())) and not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1}: {len(bad)} weight tensors hold NaN or infinite values "
            f"(first: {bad[0]}) at learning rate {lr:g}; lower the learning rate (run config lr, or "
            "finetune-lr for the personalisation)"
        )


def _prox_pairs(
    model: torch.nn.Module, reference: Mapping[str, Tensor], device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    params = dict(model.named_parameters())
    return [(params[k], torch.as_tensor(v).to(device).detach()) for k, v in reference.items() if k in params]


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


# -- evaluation ----------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Per-task metrics (only tasks that qualified), a summary, the mean loss per label, and
    ``score``: mean ROC-AUC of classification tasks and mean R² of regression tasks, averaged
    over the tasks that qualified (None when none did)."""

    per_task: dict[str, dict[str, float]]
    summary: dict[str, float]
    loss: float
    n_labels: int
    kinds: dict[str, str] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        vals = [m["roc_auc"] if "roc_auc" in m else m["r2"] for m in self.per_task.values()]
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict[str, Any]:
        return {"per_task": self.per_task, "summary": self.summary, "loss": self.loss,
                "n_labels": self.n_labels, "kinds": self.kinds, "score": self.score}


@torch.no_grad()
def _forward_all(
    model: MultiTaskNet, X: sp.csr_matrix, batch_size: int, device: torch.device
) -> dict[str, Tensor]:
    outs: dict[str, list[Tensor]] = {name: [] for name in model.heads}
    for batch in iter_feature_batches(X, batch_size, device):
        for name, out in model(batch).items():
            outs[name].append(out.float().cpu())
    return {name: torch.cat(v) if v else torch.zeros(0, model.heads[name].linear.out_features)
            for name, v in outs.items()}


def evaluate(
    model: MultiTaskNet,
    data: TaskData,
    *,
    batch_size: int = 1024,
    thresholds: MetricThresholds = DEFAULT_THRESHOLDS,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Metrics per task on ``data`` (eval mode, no dropout) and the mean loss per present label."""
    dev = _model_device(model) if device is None else resolve_device(str(device))
    model.to(dev)
    was_training = model.training
    model.eval()
    outs = _forward_all(model, data.X, batch_size, dev)
    model.train(was_training)
    with single_threaded_blas():
        return _score(model, data, outs, dev, thresholds)


def _score(model: MultiTaskNet, data: TaskData, outs: dict[str, Tensor], dev: torch.device,
           thresholds: MetricThresholds) -> EvalResult:
    per_task: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    loss_total, loss_count = 0.0, 0.0
    for head_spec in model.spec.heads:
        head = model.heads[head_spec.name]
        out = outs[head_spec.name]
        labels = data.heads[head_spec.name].batch(np.arange(data.n))
        parts = compute_loss(model, {head_spec.name: out.to(dev)},
                             {head_spec.name: labels.to(dev)})
        loss_total += float(parts.total)
        loss_count += float(parts.count)
        units = head.to_units(out.to(dev)).cpu().numpy()
        values = data.heads[head_spec.name].values
        censor = data.heads[head_spec.name].censor
        for j, task in enumerate(head_spec.tasks):
            kinds[task] = head_spec.kind
            if head_spec.kind == "classification":
                m = classification_metrics(values[:, j], units[:, j], thresholds)
            else:
                m = regression_metrics(values[:, j], units[:, j], censor[:, j], thresholds)
            if m is not None:
                per_task[task] = m
    return EvalResult(per_task=per_task, summary=summarise(per_task, kinds),
                      loss=loss_total / max(loss_count, 1.0), n_labels=int(loss_count), kinds=kinds)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# -- prediction ----------------------------------------------------------------------------------
@torch.no_grad()
def mc_dropout_outputs(
    model: MultiTaskNet,
    X: sp.csr_matrix,
    n_samples: int,
    *,
    seed: int = 0,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Mean and std over ``n_samples`` dropout-on passes, per head, in task units (n, t).

    X: transformed CSR features. The global torch RNG is forked, so the caller's state is kept.
    """
    device = device or next(model.parameters()).device
    sums: dict[str, np.ndarray] = {}
    sq: dict[str, np.ndarray] = {}
    was_training = model.training
    model.train()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _ in range(n_samples):
            parts: dict[str, list[np.ndarray]] = {name: [] for name in model.heads}
            for batch in iter_feature_batches(X, batch_size, device):
                for name, out in model(batch).items():
                    parts[name].append(model.heads[name].to_units(out.float()).cpu().numpy())
            for name, chunks in parts.items():
                width = model.heads[name].linear.out_features
                arr = np.concatenate(chunks) if chunks else np.zeros((0, width))
                arr = arr.astype(np.float64)
                sums[name] = sums.get(name, 0.0) + arr
                sq[name] = sq.get(name, 0.0) + arr * arr
    model.train(was_training)
    mean = {k: (v / n_samples).astype(np.float32) for k, v in sums.items()}
    std = {k: np.sqrt(np.maximum(sq[k] / n_samples - (sums[k] / n_samples) ** 2, 0.0)).astype(np.float32)
           for k in sums}
    return mean, std



@dataclass
class Predictions:
    """Per-task predictions in task units (P(active) or de-standardised values), (n,) each.

    std: per-task standard deviation over MC-dropout samples, (n,) each; None without sampling.
    """

    values: dict[str, np.ndarray]
    kinds: dict[str, str]
    std: dict[str, np.ndarray] | None = None

    def __getitem__(self, task: str) -> np.ndarray:
        return self.values[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)


@torch.no_grad()
def predict(
    model: MultiTaskNet,
    X: sp.csr_matrix,
    *,
    batch_size: int = 1024,
    mc_samples: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    transformed: bool = False,
) -> Predictions:
    """Predict every task for the rows of ``X`` (n, n_features), raw stored values.

    mc_samples > 0: the mean and std over that many forward passes with dropout on (MC
    dropout, seeded); 0: one deterministic pass. ``transformed``: X already holds input weights.
    """
    dev = _model_device(model) if device is None else resolve_device(str(device))
    model.to(dev)
    if X.shape[1] != model.spec.n_features:
        raise ConfigError(f"X has {X.shape[1]} features, the model expects {model.spec.n_features}")
    Xt = X if transformed else transform_features(X, model.spec.input_transform)
    was_training = model.training
    std: dict[str, np.ndarray] | None = None
    if mc_samples > 0:
        mean_units, std_units = mc_dropout_outputs(model, Xt, mc_samples, seed=seed,
                                                   batch_size=batch_size, device=dev)
        units, std = mean_units, {}
    else:
        model.eval()
        outs = _forward_all(model, Xt, batch_size, dev)
        units = {name: model.heads[name].to_units(out.to(dev)).cpu().numpy() for name, out in outs.items()}
    model.train(was_training)
    values: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for head_spec in model.spec.heads:
        for j, task in enumerate(head_spec.tasks):
            values[task] = units[head_spec.name][:, j]
            kinds[task] = head_spec.kind
            if std is not None:
                std[task] = std_units[head_spec.name][:, j]
    return Predictions(values=values, kinds=kinds, std=std)
