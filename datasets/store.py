"""The site store: one folder holding a site's prepared data. Loading it needs no RDKit.

Layout of a store folder::

    features.npz     CSR matrix (n_compounds, n_bits), float32: permuted ECFP counts or 1.0 bits
    labels.npz       values (n, T) float32, NaN where missing; censor (n, T) int8:
                     -1 for '<' (true value below), 0 exact, +1 for '>' (true value above)
    folds.npy        (n,) int16 scaffold fold of each compound, 0..k-1
    compounds.csv    compound id, input line number, canonical SMILES (site-private: never sent)
    tasks.json       the task catalogue: one `fedmol.datasets.tasks.TaskInfo` per column of the label matrix
    settings.json    every preparation setting, the key fingerprint and the reference hash
    summary.json     counts: read, kept, rejected by reason, conflicts, tasks kept/excluded
    rejects.csv      line, id, smiles, reason of every input row that did not make it
    conflicts.csv    task, smiles, id, lines, values, reason of every label cleared because
                     duplicates of one structure disagree on it (see fedmol.datasets.prepare)

Columns of the label matrix follow ``tasks`` one to one, excluded tasks included (their
``trainable`` flag is False), so that a site can see what it has and why a task is out.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedmol.datasets.tasks import QuorumSettings, TaskInfo, build_catalogue
from fedmol.errors import StoreError
from fedmol.jsonio import json_default

__all__ = ["STORE_FORMAT", "SiteStore", "store_folders"]

STORE_FORMAT = 1
_FILES = ("features.npz", "labels.npz", "folds.npy", "tasks.json", "settings.json")


@dataclass
class SiteStore:
    """A site's prepared data in memory. Arrays are aligned on rows (compounds)."""

    X: sp.csr_matrix  # (n, n_bits) float32
    Y: np.ndarray  # (n, T) float32, NaN = missing
    censor: np.ndarray  # (n, T) int8 in {-1, 0, +1}
    folds: np.ndarray  # (n,) int16
    tasks: list[TaskInfo]
    settings: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    compounds: pd.DataFrame | None = None  # columns: id, line, smiles

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        if self.Y.shape != (n, len(self.tasks)) or self.censor.shape != self.Y.shape:
            raise StoreError(
                f"inconsistent store: X has {n} rows, Y {self.Y.shape}, censor {self.censor.shape}, "
                f"{len(self.tasks)} tasks"
            )
        if self.folds.shape != (n,):
            raise StoreError(f"inconsistent store: folds {self.folds.shape} for {n} rows")

    # -- views ---------------------------------------------------------------------------
    @property
    def n_compounds(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def mask(self) -> np.ndarray:
        """(n, T) bool: True where a label is present."""
        return ~np.isnan(self.Y)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def trainable_tasks(self) -> list[TaskInfo]:
        return [t for t in self.tasks if t.trainable]

    def subset(self, rows: np.ndarray | None = None, task_names: list[str] | None = None,
               quorum: QuorumSettings | None = None) -> SiteStore:
        """A new store with the given rows and tasks; the catalogue's quorums are recomputed.

        Used by the simulation partitioners: preparing once and subsetting gives the same
        features and folds as preparing each site's file, because both are per-molecule.
        """
        rows = np.arange(self.n_compounds) if rows is None else np.asarray(rows)
        cols = list(range(len(self.tasks)))
        if task_names is not None:
            index = {t.name: i for i, t in enumerate(self.tasks)}
            unknown = [n for n in task_names if n not in index]
            if unknown:
                raise StoreError(f"unknown tasks {unknown}; the store has {self.task_names}")
            cols = [index[n] for n in task_names]
        Y = self.Y[np.ix_(rows, np.asarray(cols, dtype=np.intp))]
        censor = self.censor[np.ix_(rows, np.asarray(cols, dtype=np.intp))]
        folds = self.folds[rows]
        tasks = build_catalogue(
            Y, censor, folds, [self.tasks[c] for c in cols], quorum=quorum,
            n_folds=int(self.settings.get("folds", {}).get("n_folds", 5)),
        )
        compounds = None
        if self.compounds is not None:
            compounds = self.compounds.iloc[rows].reset_index(drop=True)
        return SiteStore(
            X=self.X[rows], Y=Y, censor=censor, folds=folds, tasks=tasks,
            settings=dict(self.settings), summary={"subset_of": self.summary.get("kept"),
                                                    "kept": int(len(rows))},
            compounds=compounds,
        )

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sp.save_npz(path / "features.npz", self.X.astype(np.float32).tocsr(), compressed=True)
        np.savez_compressed(path / "labels.npz", values=self.Y.astype(np.float32),
                            censor=self.censor.astype(np.int8))
        np.save(path / "folds.npy", self.folds.astype(np.int16))
        _write_json(path / "tasks.json", {"format": STORE_FORMAT,
                                          "tasks": [asdict(t) for t in self.tasks]})
        _write_json(path / "settings.json", self.settings)
        _write_json(path / "summary.json", self.summary)
        if self.compounds is not None:
            self.compounds.to_csv(path / "compounds.csv", index=False)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SiteStore:
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"no site store at {path}: run `fedmol prepare` first")
        missing = [f for f in _FILES if not (path / f).exists()]
        if missing:
            raise StoreError(f"incomplete site store at {path}: missing {', '.join(missing)}")
        catalogue = json.loads((path / "tasks.json").read_text())
        if catalogue.get("format") != STORE_FORMAT:
            raise StoreError(
                f"site store {path} has format {catalogue.get('format')}, this fedmol reads "
                f"{STORE_FORMAT}: prepare it again"
            )
        labels = np.load(path / "labels.npz")
        summary_path = path / "summary.json"
        compounds_path = path / "compounds.csv"
        return cls(
            X=sp.csr_matrix(sp.load_npz(path / "features.npz"), dtype=np.float32),
            Y=labels["values"],
            censor=labels["censor"],
            folds=np.load(path / "folds.npy"),
            tasks=[TaskInfo.from_dict(t) for t in catalogue["tasks"]],
            settings=json.loads((path / "settings.json").read_text()),
            summary=json.loads(summary_path.read_text()) if summary_path.exists() else {},
            compounds=pd.read_csv(compounds_path, dtype={"id": str}) if compounds_path.exists() else None,
        )

    def with_tasks(self, tasks: list[TaskInfo]) -> SiteStore:
        return replace(self, tasks=tasks)


def store_n_features(path: str | Path) -> int:
    """The number of feature columns of the store at ``path`` (its model's input size, the run
    config's ``n-bits``), read from the saved matrix's shape alone, without loading the matrix."""
    try:
        with np.load(Path(path) / "features.npz") as npz:
            return int(npz["shape"][1])
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise StoreError(f"cannot read the features of the site store at {path}: {exc}") from exc


def store_folders(folder: str | Path) -> list[Path]:
    """The site stores in ``folder``: its subfolders holding a store's files, in natural order of
    their names (site-2 before site-10), so a simulation's partition i is always the same store.
    Other entries are ignored; an empty list when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and all((p / f).is_file() for f in _FILES)]
    return sorted(found, key=lambda p: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                        for t in re.split(r"(\d+)", p.name)])


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")
