"""Per-compound DP-SGD mechanics: Poisson batches, per-sample clipping without per-sample gradients,
Gaussian noise.

DP-SGD (Abadi et al. 2016) clips each example's gradient to a norm C, sums, adds N(0, (sigma C)^2)
per coordinate and divides by the expected batch size. Opacus does it by materialising every
example's gradient; for the sparse input layer that is B x n_features x hidden floats (6.7 GB
for B=128 at 32,768 x 400) and it ignores ``per_sample_weights``. Here the norms come from the
layers' inputs and output gradients instead (ghost clipping, Goodfellow 2015; Li et al. 2022):

- ``nn.Linear`` on a (B, in) input a with output gradient g (B, out): example i's weight gradient
  is g_i a_i^T, of squared norm ||a_i||^2 ||g_i||^2; the bias's is ||g_i||^2.
- `SparseInputLayer` (an ``EmbeddingBag`` in sum mode plus a bias): example i's weight gradient is
  sum_j w_ij e_j g_i^T over its on-bits j, of squared norm ||g_i||^2 sum_j w_ij^2 once the
  weights of a repeated bit are summed; the bias's is ||g_i||^2.

Then a second backward of sum_i c_i L_i, with c_i = min(1, C / (||grad_i|| + 1e-6)), leaves the
sum of the clipped gradients in ``p.grad`` (the two-pass trick); it starts from the heads'
outputs with the first pass's output gradients scaled by c_i, on the same graph (so the same
dropout masks). This holds because no layer mixes examples (no batch norm).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedmol.errors import ConfigError
from fedmol.models.data import LabelBatch, SparseBatch, TaskData
from fedmol.models.network import SparseInputLayer

__all__ = ["poisson_rows", "iter_poisson_batches", "steps_per_epoch", "dp_sample_rate", "GhostClipper",
           "add_noise_"]

_NORM_EPS = 1e-6  # as Opacus: c_i = C / (norm_i + 1e-6)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """ceil(n_train / batch_size): as many steps as a shuffled epoch of the same batch size."""
    return max(1, math.ceil(n_train / batch_size))


def dp_sample_rate(n_train: int, batch_size: int) -> float:
    """Poisson sampling rate q = batch_size / n_train (at most 1; 0.0 without training rows)."""
    return min(1.0, batch_size / n_train) if n_train > 0 else 0.0


def poisson_rows(n: int, sample_rate: float, steps: int,
                 seed: int | Sequence[int] | np.random.SeedSequence) -> Iterator[np.ndarray]:
    """``steps`` batches of row indices (sorted, int64), each row in a batch independently with
    probability ``sample_rate``; a function of ``seed`` only. A batch may be empty."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield np.flatnonzero(rng.random(n) < sample_rate)


def iter_poisson_batches(
    data: TaskData, batch_size: int, *, seed: int | Sequence[int] | np.random.SeedSequence,
    device: torch.device | None = None,
) -> Iterator[tuple[SparseBatch, dict[str, LabelBatch]] | None]:
    """One epoch of Poisson batches at rate q = batch_size / n (`steps_per_epoch` steps).

    Yields (features, labels per head), or None for an empty batch (a step of noise only).
    """
    device = device or torch.device("cpu")
    if data.n == 0:
        return
    rate = dp_sample_rate(data.n, batch_size)
    for rows in poisson_rows(data.n, rate, steps_per_epoch(data.n, batch_size), seed):
        if rows.size == 0:
            yield None
            continue
        batch = SparseBatch.from_csr(data.X[rows]).to(device)
        yield batch, {name: h.batch(rows).to(device) for name, h in data.heads.items()}


def _row_sq_weights(batch: SparseBatch, n_features: int) -> Tensor:
    """(B,) sum over each row's distinct bits of (summed weight)^2, in float32."""
    n_rows = batch.size
    lengths = torch.diff(batch.offsets, append=batch.offsets.new_tensor([batch.indices.numel()]))
    row_of = torch.repeat_interleave(torch.arange(n_rows, device=lengths.device), lengths)
    key = row_of * n_features + batch.indices
    unique, inverse = torch.unique(key, return_inverse=True)
    w = batch.weights.float()
    summed = torch.zeros(unique.numel(), dtype=torch.float32, device=w.device).index_add_(0, inverse, w)
    return torch.zeros(n_rows, dtype=torch.float32, device=w.device).index_add_(
        0, torch.div(unique, n_features, rounding_mode="floor"), summed * summed
    )


class GhostClipper:
    """Per-example gradient clipping for a model built of `SparseInputLayer` and ``nn.Linear``.

    Use: ``with clipper.capture(): outputs = model(batch)``, then
    ``clipper.clipped_backward(loss_total, outputs, max_grad_norm)``, where ``loss_total`` is
    the sum over the batch of each example's loss. Trainable parameters of any other kind of
    module raise a `ConfigError` here, so that none goes unclipped; frozen ones are skipped.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._layers: list[nn.Module] = []
        bags: set[nn.Module] = set()  # named_modules() visits a SparseInputLayer before its bag
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if isinstance(module, SparseInputLayer):
                bag = module.bag
                if bag.mode != "sum" or bag.max_norm is not None or bag.padding_idx is not None:
                    raise ConfigError(f"DP-SGD: {name}.bag must be a plain EmbeddingBag in sum mode")
                bags.add(bag)
                if bag.weight.requires_grad or module.bias.requires_grad:
                    self._layers.append(module)
            elif isinstance(module, nn.Linear):
                if own:
                    self._layers.append(module)
            elif own and module not in bags:
                raise ConfigError(
                    f"DP-SGD: module {name or 'model'} ({type(module).__name__}) has trainable parameters whose "
                    "per-example gradient norm is not supported (only SparseInputLayer and nn.Linear are); "
                    "freeze them (requires_grad=False) or add its norm rule to fedmol.models.dp"
                )
        self._captured: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record each clipped layer's (input statistic, output) during one forward pass."""
        self._captured = {}
        handles = [layer.register_forward_hook(self._hook) for layer in self._layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if module in self._captured:
            raise ConfigError(f"DP-SGD: {type(module).__name__} ran twice in one forward pass (shared weights)")
        if isinstance(module, SparseInputLayer):
            stat = _row_sq_weights(args[0], module.bag.num_embeddings)
        else:
            (a,) = args
            if a.dim() != 2:
                raise ConfigError(f"DP-SGD: nn.Linear on a {a.dim()}-D input is not supported (only (B, in))")
            stat = a.detach().float().pow(2).sum(dim=1)
        self._captured[module] = (stat, output)

    def _weight_and_bias_trainable(self, module: nn.Module) -> tuple[bool, bool]:
        if isinstance(module, SparseInputLayer):
            return module.bag.weight.requires_grad, module.bias.requires_grad
        assert isinstance(module, nn.Linear)
        return module.weight.requires_grad, module.bias is not None and module.bias.requires_grad

    def clipped_backward(self, loss_total: Tensor, outputs: dict[str, Tensor], max_grad_norm: float) -> Tensor:
        """Add the sum over examples of min(1, C / ||grad_i||) grad_i to every trainable ``p.grad``.

        loss_total: scalar, sum over the batch of each example's loss L_i.
        outputs: the model's outputs of that forward pass (the second backward starts there).
        Returns the (B,) per-example gradient norms before clipping (float32).
        """
        missing = [type(m).__name__ for m in self._layers if m not in self._captured]
        if missing:
            raise ConfigError(f"DP-SGD: layers {missing} did not run in the forward pass under capture()")
        layers = list(self._captured)
        heads = list(outputs.values())
        wanted = [self._captured[m][1] for m in layers] + heads
        grads = torch.autograd.grad(loss_total, wanted, retain_graph=True, allow_unused=True)
        sq_norm: Tensor | None = None
        for module, grad in zip(layers, grads[: len(layers)], strict=True):
            if grad is None:  # the loss does not depend on this layer: no gradient
                continue
            stat = self._captured[module][0]
            g_sq = grad.float().pow(2).sum(dim=1)
            weight_on, bias_on = self._weight_and_bias_trainable(module)
            part = g_sq * (stat * float(weight_on) + float(bias_on))
            sq_norm = part if sq_norm is None else sq_norm + part
        n_rows = heads[0].shape[0]
        norms = torch.zeros(n_rows, device=heads[0].device) if sq_norm is None else sq_norm.sqrt()
        factor = (max_grad_norm / (norms + _NORM_EPS)).clamp(max=1.0)
        head_grads = grads[len(layers):]
        pairs = [(out, g) for out, g in zip(heads, head_grads, strict=True) if g is not None]
        if pairs:
            torch.autograd.backward(
                [out for out, _ in pairs],
                [g * factor.to(g.dtype).view(-1, *([1] * (g.dim() - 1))) for _, g in pairs],
            )
        self._captured = {}
        return norms


def add_noise_(params: Sequence[Tensor], std: float, divisor: float, *,
               generator: torch.Generator | None = None) -> None:
    """``p.grad = (p.grad + N(0, std^2)) / divisor`` for each parameter (a missing grad is 0).

    generator: where the noise comes from (torch's default one when None). The trainer passes its
    own, seeded from OS entropy unless a test fixes it (`fedmol.models.training.TrainConfig.dp_seed`):
    noise that the server could regenerate from the run config's seed would protect nothing. A
    Mersenne-Twister stream seeded with 256 fresh bits, not a cryptographic generator.
    """
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if std > 0:
                draw = torch.randn(p.grad.shape, generator=generator, device=p.grad.device, dtype=p.grad.dtype)
                p.grad.add_(draw, alpha=std)
            p.grad.div_(divisor)
