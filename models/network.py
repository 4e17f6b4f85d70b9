"""The multi-task network: a sparse-input trunk shared by the consortium, and heads per task group.

State-dict keys are ``trunk.*`` and ``heads.<head_name>.*``: the federation selects what travels
with `shared_state_dict` (trunk + shared heads) and keeps `private_state_dict` on the site.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import ItemsView, Mapping
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from fedmol.errors import ConfigError
from fedmol.models.data import SparseBatch
from fedmol.models.spec import HeadSpec, ModelSpec

__all__ = ["MultiTaskNet", "SparseInputLayer", "Trunk", "TaskHead", "HeadDict"]


class SparseInputLayer(nn.Module):
    """``x @ W + b`` for sparse ``x`` without densifying it: an ``EmbeddingBag`` (sum mode).

    Input: a `SparseBatch` of B rows (on-bit indices, row offsets, per-bit weights).
    Output: (B, out_features) float.
    Initialised like ``nn.Linear(n_features, out_features)`` (uniform ±1/sqrt(n_features)), so
    a dense layer with the same seed computes the same function.
    """

    def __init__(self, n_features: int, out_features: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(n_features, out_features, mode="sum")
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1.0 / math.sqrt(n_features)
        nn.init.uniform_(self.bag.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, batch: SparseBatch) -> Tensor:
        out = self.bag(batch.indices, batch.offsets, per_sample_weights=batch.weights)
        return out + self.bias


class Trunk(nn.Module):
    """Sparse input layer, then [ReLU, dropout, Linear]* ..., ReLU, dropout.

    Output: (B, hidden[-1]) activations that every head reads.
    """

    def __init__(self, n_features: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.input = SparseInputLayer(n_features, hidden[0])
        layers: list[nn.Module] = []
        for size_in, size_out in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(size_in, size_out)]
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*layers)

    def forward(self, batch: SparseBatch) -> Tensor:
        return self.layers(self.input(batch))


class TaskHead(nn.Module):
    """A linear layer: (B, hidden) -> (B, n_tasks) logits (classification) or standardised values.

    Regression heads carry buffers ``target_mean``/``target_std`` (n_tasks,), in the task's own
    units, so that ``value = output * target_std + target_mean``. Identity by default.
    """

    target_mean: Tensor  # buffers of regression heads (registered in __init__)
    target_std: Tensor

    def __init__(self, spec: HeadSpec, in_features: int) -> None:
        super().__init__()
        self.kind = spec.kind
        self.linear = nn.Linear(in_features, spec.n_tasks)
        if spec.kind == "regression":
            self.register_buffer("target_mean", torch.zeros(spec.n_tasks))
            self.register_buffer("target_std", torch.ones(spec.n_tasks))

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h)

    def to_units(self, out: Tensor) -> Tensor:
        """Model output -> task units: sigmoid probability, or de-standardised regression value."""
        if self.kind == "classification":
            return torch.sigmoid(out)
        return out * self.target_std + self.target_mean

    def standardise(self, values: Tensor) -> Tensor:
        """Task-unit targets (B, n_tasks) -> the scale the head is trained on (regression only)."""
        if self.kind == "classification":
            return values
        return (values - self.target_mean) / self.target_std


class HeadDict(nn.ModuleDict):
    """The heads by name: an ``nn.ModuleDict`` (same state-dict keys) whose items are `TaskHead`."""

    def __getitem__(self, key: str) -> TaskHead:
        return cast(TaskHead, super().__getitem__(key))

    def items(self) -> ItemsView[str, TaskHead]:
        return cast("ItemsView[str, TaskHead]", super().items())


class MultiTaskNet(nn.Module):
    """Trunk + heads built from a `ModelSpec`.

    ``forward(batch)`` returns ``{head_name: (B, n_tasks_of_head)}``. Pass ``seed`` to make the
    initial weights reproducible without touching the global RNG.
    """

    def __init__(self, spec: ModelSpec, *, seed: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        if seed is None:
            self._build(spec)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(spec)

    @classmethod
    def uninitialised(cls, spec: ModelSpec) -> MultiTaskNet:
        """The network with its parameters allocated and not initialised (no random draws), for a caller
        that loads every one of them next (`load_shared_state_dict` and `load_private_state_dict`):
        drawing a 32,768-bit trunk's initial values costs 0.17 s, twice in a site's round."""
        with torch.device("meta"):
            model = cls(spec)
        return model.to_empty(device="cpu")

    def _build(self, spec: ModelSpec) -> None:
        self.trunk = Trunk(spec.n_features, spec.hidden, spec.dropout)
        self.heads = HeadDict({h.name: TaskHead(h, spec.hidden[-1]) for h in spec.heads})

    def forward(self, batch: SparseBatch) -> dict[str, Tensor]:
        h = self.trunk(batch)
        return {name: head(h) for name, head in self.heads.items()}

    # -- what travels and what stays --------------------------------------------------------
    def shared_head_names(self) -> list[str]:
        return [h.name for h in self.spec.heads if h.shared]

    def private_head_names(self) -> list[str]:
        return [h.name for h in self.spec.heads if not h.shared]

    def _is_shared_key(self, key: str) -> bool:
        if key.startswith("trunk."):
            return True
        shared = self.shared_head_names()
        return any(key.startswith(f"heads.{name}.") for name in shared)

    def shared_state_dict(self) -> dict[str, Tensor]:
        """Trunk and shared (consortium) heads: what the federation may send and aggregate."""
        return {k: v for k, v in self.state_dict().items() if self._is_shared_key(k)}

    def private_state_dict(self) -> dict[str, Tensor]:
        """Private heads only: these never leave the site."""
        return {k: v for k, v in self.state_dict().items() if not self._is_shared_key(k)}

    def load_shared_state_dict(self, state: Mapping[str, Tensor | np.ndarray]) -> None:
        """Load trunk + shared heads; every expected key must be present and no other."""
        self._load_part(state, shared=True)

    def load_private_state_dict(self, state: Mapping[str, Tensor | np.ndarray]) -> None:
        """Load the private heads; every expected key must be present and no other."""
        self._load_part(state, shared=False)

    def _load_part(self, state: Mapping[str, Tensor | np.ndarray], *, shared: bool) -> None:
        own = self.state_dict()
        expected = {k for k in own if self._is_shared_key(k) == shared}
        given = set(state)
        part = "shared" if shared else "private"
        if given != expected:
            missing, extra = sorted(expected - given), sorted(given - expected)
            raise ConfigError(
                f"{part} state does not fit this model: missing {missing[:5]}, unexpected {extra[:5]}; "
                "were both built from the same ModelSpec?"
            )
        with torch.no_grad():
            for key in expected:
                value = state[key]
                with warnings.catch_warnings():  # a read-only array (the server's kept model) is only read here
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                    tensor = torch.as_tensor(value)
                if tuple(tensor.shape) != tuple(own[key].shape):
                    raise ConfigError(
                        f"{part} state key {key}: shape {tuple(tensor.shape)}, model has "
                        f"{tuple(own[key].shape)}"
                    )
                own[key].copy_(tensor.to(own[key].dtype))

    # -- regression target scaling -------------------------------------------------------------
    def set_target_scaling(self, head_name: str, mean: np.ndarray | Tensor, std: np.ndarray | Tensor) -> None:
        """Set a regression head's target standardisation (n_tasks,) in task units; std > 0."""
        head = self.heads[head_name]
        if head.kind != "regression":
            raise ConfigError(f"head {head_name!r} is a classification head: it has no target scaling")
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32))
        if mean_t.shape != head.target_mean.shape or std_t.shape != head.target_std.shape:
            raise ConfigError(f"target scaling for {head_name!r} needs shape {tuple(head.target_mean.shape)}")
        std_t = torch.where(torch.isfinite(std_t) & (std_t > 1e-8), std_t, torch.ones_like(std_t))
        mean_t = torch.where(torch.isfinite(mean_t), mean_t, torch.zeros_like(mean_t))
        with torch.no_grad():
            head.target_mean.copy_(mean_t)
            head.target_std.copy_(std_t)
