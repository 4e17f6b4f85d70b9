"""Checkpoints of a federation, written after every completed round.

Flower does not restart a killed ServerApp (its run is marked failed), so resuming is ours: a new
Flower run with ``resume=<dir>`` (or ``resume=latest``) loads the last checkpoint and continues
at the next round, logging into the same MLflow run.

Layout: ``<output_dir>/checkpoints/<federation_id>/`` with ``state.json`` (round, ids, the
best-round selection's state), ``global.npz`` (the shared model), ``strategy.npz`` (server
optimiser state) and ``best-round-<r>.npz`` (the best round's shared model, written when the best
round changes). Files are written to a temporary name and renamed, and ``state.json`` last, so a
crash mid-write leaves the previous round intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fedmol.errors import ConfigError


@dataclass
class Checkpoint:
    federation_id: str
    server_round: int  # the last completed round
    mlflow_run_id: str = ""
    reference_hash: str = ""
    sites: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    # `fedmol.server.selection.BestRound.state()`: scores per round, best round, early stop
    selection: dict[str, Any] = field(default_factory=dict)
    # The best round's model. On save: written when given; when None, the file an earlier save
    # wrote for the same best round is kept. On load: read back when the selection names a best round.
    best_arrays: dict[str, np.ndarray] | None = None

    def save(self, root: Path) -> Path:
        folder = root / "checkpoints" / self.federation_id
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_npz(folder / "global.npz", self.arrays)
        _atomic_npz(folder / "strategy.npz", self.strategy_state)
        best = self.best_file()
        if best and self.best_arrays is not None:
            _atomic_npz(folder / best, self.best_arrays)
        # Not `asdict`: it would deep-copy the arrays (2 x 52 MB at the default model) only to drop them.
        meta = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("arrays", "strategy_state", "best_arrays")}
        _atomic_write(folder / "state.json", json.dumps(meta, indent=2).encode())
        _atomic_write(root / "checkpoints" / "LATEST", self.federation_id.encode())
        for old in folder.glob("best-round-*.npz"):  # earlier best rounds, no longer named by state.json
            if old.name != best:
                old.unlink(missing_ok=True)
        return folder

    def best_file(self) -> str:
        """The file name of the best round's model, "" when there is no best round."""
        best_round = self.selection.get("best_round")
        return "" if best_round is None else f"best-round-{int(best_round)}.npz"

    @classmethod
    def load(cls, folder: Path) -> Checkpoint:
        state_file = folder / "state.json"
        if not state_file.exists():
            raise ConfigError(f"no checkpoint in {folder}: expected {state_file.name}")
        meta: dict[str, Any] = json.loads(state_file.read_text())
        with np.load(folder / "global.npz") as g, np.load(folder / "strategy.npz") as s:
            arrays = {k: g[k] for k in g.files}
            strategy_state = {k: s[k] for k in s.files}
        ckpt = cls(**meta, arrays=arrays, strategy_state=strategy_state)
        best = ckpt.best_file()
        if best and (folder / best).exists():
            with np.load(folder / best) as b:
                ckpt.best_arrays = {k: b[k] for k in b.files}
        return ckpt


def resolve_resume(resume: str, output_dir: Path) -> Path:
    """The checkpoint folder named by the ``resume`` setting ("latest", an id, or a path)."""
    if resume == "latest":
        pointer = output_dir / "checkpoints" / "LATEST"
        if not pointer.exists():
            raise ConfigError(f"resume=latest but no checkpoint was ever written in {output_dir}")
        return output_dir / "checkpoints" / pointer.read_text().strip()
    path = Path(resume).expanduser()
    if path.is_dir():
        return path
    candidate = output_dir / "checkpoints" / resume
    if candidate.is_dir():
        return candidate
    raise ConfigError(f"resume={resume!r}: no checkpoint folder at {path} or {candidate}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    # npz keys may not contain '/' on every numpy; they do here, but escape to be safe.
    np.savez(tmp, allow_pickle=False, **arrays)
    os.replace(tmp, path)
