"""The model's hyper-parameters as plain, frozen data: enough to rebuild a network by name.

A `ModelSpec` is what travels next to a ``state_dict`` (``spec.json`` + ``weights.pt``), so a
checkpoint never needs pickled classes. Heads group tasks: at most four, one per
(consortium | private) x (classification | regression).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from fedmol.config import TASK_KINDS, InputTransform, TaskKind
from fedmol.errors import ConfigError

SPEC_FORMAT = 1
INPUT_TRANSFORMS: tuple[InputTransform, ...] = get_args(InputTransform)
HEAD_NAMES: dict[tuple[bool, TaskKind], str] = {
    (True, "classification"): "consortium_classification",
    (True, "regression"): "consortium_regression",
    (False, "classification"): "private_classification",
    (False, "regression"): "private_regression",
}


@dataclass(frozen=True)
class HeadSpec:
    """One output head: a linear layer over the trunk's last hidden layer, one output per task.

    ``shared`` heads (consortium tasks, same task order at every site) are aggregated by the
    federation with the trunk; private heads never leave the site.
    """

    name: str
    kind: TaskKind
    tasks: tuple[str, ...]
    shared: bool

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"head {self.name!r}: kind {self.kind!r} is not one of {TASK_KINDS}")
        if not self.name.isidentifier():
            raise ConfigError(f"head name {self.name!r} must be a Python identifier (letters, _, digits)")
        if not self.tasks:
            raise ConfigError(f"head {self.name!r} has no tasks")
        if not isinstance(self.tasks, tuple):
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"head {self.name!r} lists a task twice: {self.tasks}")

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a `fedmol.models.network.MultiTaskNet`.

    n_features: width of the (permuted, folded) fingerprint, e.g. 32768.
    hidden: sizes of the trunk's layers; the first is the sparse input layer.
    dropout: dropout probability after every hidden layer.
    heads: the output heads; task names are unique across heads.
    input_transform: how stored feature values become input weights: ``binary`` (1 for any
        non-zero), ``log1p`` (log(1 + count)) or ``none`` (values as stored).
    """

    n_features: int
    hidden: tuple[int, ...] = (400,)
    dropout: float = 0.2
    heads: tuple[HeadSpec, ...] = field(default_factory=tuple)
    input_transform: InputTransform = "binary"

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, tuple):
            object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not isinstance(self.heads, tuple):
            object.__setattr__(self, "heads", tuple(self.heads))
        if self.n_features < 1:
            raise ConfigError(f"n_features must be positive, got {self.n_features}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must list positive layer sizes, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_transform not in INPUT_TRANSFORMS:
            raise ConfigError(
                f"input_transform {self.input_transform!r} is not one of {INPUT_TRANSFORMS}"
            )
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate head names: {names}")
        tasks = [t for h in self.heads for t in h.tasks]
        if len(set(tasks)) != len(tasks):
            dup = sorted({t for t in tasks if tasks.count(t) > 1})
            raise ConfigError(f"tasks {dup} appear in more than one head")

    # -- views ---------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        """All tasks, head by head, in output order."""
        return [t for h in self.heads for t in h.tasks]

    def head(self, name: str) -> HeadSpec:
        for h in self.heads:
            if h.name == name:
                return h
        raise KeyError(f"no head {name!r}; the spec has {[h.name for h in self.heads]}")

    def task_kind(self) -> dict[str, str]:
        """Task name -> 'classification' | 'regression'."""
        return {t: h.kind for h in self.heads for t in h.tasks}

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = SPEC_FORMAT
        d["hidden"] = list(self.hidden)
        d["heads"] = [dict(asdict(h), tasks=list(h.tasks)) for h in self.heads]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        fmt = d.get("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise ConfigError(f"model spec format {fmt} is not supported (this fedmol reads {SPEC_FORMAT})")
        try:
            heads = tuple(
                HeadSpec(name=h["name"], kind=h["kind"], tasks=tuple(h["tasks"]), shared=bool(h["shared"]))
                for h in d["heads"]
            )
            return cls(
                n_features=int(d["n_features"]),
                hidden=tuple(int(x) for x in d["hidden"]),
                dropout=float(d["dropout"]),
                heads=heads,
                input_transform=d.get("input_transform", "binary"),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed model spec: {exc!r}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model spec is not valid JSON: {exc}") from exc
        return cls.from_dict(d)


def build_spec(
    n_features: int,
    consortium_tasks: Sequence[tuple[str, TaskKind]],
    private_tasks: Sequence[tuple[str, TaskKind]],
    hidden: Iterable[int] = (400,),
    dropout: float = 0.2,
    input_transform: InputTransform = "binary",
    *,
    allow_no_heads: bool = False,
) -> ModelSpec:
    """Group tasks into (at most) four heads; empty groups are omitted.

    allow_no_heads: a trunk-only spec is allowed (the server's shared model when the consortium
        shares only the trunk and every task is private, the MELLODDY setting).

    consortium_tasks: (name, kind) in the consortium's order; this order is the column order of
        the shared heads and must be identical at every site, whether or not the site has data.
    private_tasks: (name, kind) of the site's own tasks; any that are also consortium tasks are
        dropped here (they are already in a shared head).
    """
    consortium_names = {n for n, _ in consortium_tasks}
    groups: dict[str, list[str]] = {name: [] for name in HEAD_NAMES.values()}
    for shared, tasks in ((True, consortium_tasks), (False, private_tasks)):
        for name, kind in tasks:
            if kind not in TASK_KINDS:
                raise ConfigError(f"task {name!r}: kind {kind!r} is not one of {TASK_KINDS}")
            if not shared and name in consortium_names:
                continue
            groups[HEAD_NAMES[(shared, kind)]].append(name)
    heads = tuple(
        HeadSpec(name=head_name, kind=kind, tasks=tuple(groups[head_name]), shared=shared)
        for (shared, kind), head_name in HEAD_NAMES.items()
        if groups[head_name]
    )
    if not heads and not allow_no_heads:
        raise ConfigError("no tasks to model: give at least one consortium or private task")
    return ModelSpec(
        n_features=int(n_features), hidden=tuple(int(h) for h in hidden), dropout=float(dropout),
        heads=heads, input_transform=input_transform,
    )
