"""`prepare`: one input file → one site store, with every row accounted for.

Steps: read (fedmol.datasets.readers) → parse labels (bad cells reject their row) → standardise,
featurise and fold each distinct input SMILES over a process pool (fedmol.datasets.structures) →
merge duplicates → task catalogue with quorums (fedmol.datasets.tasks) → save the store, rejects.csv,
settings.json (with key fingerprint and reference hash) and summary.json.

Duplicates are rows whose standardised structures have the same canonical SMILES. Their labels
are merged per task when consistent. They are **conflicting** when, for one task:

* classification: the rows carry different classes (after any threshold);
* regression: the exact values span more than ``duplicate_tolerance`` (value units), or a
  censored value contradicts the mean of the exact ones by more than the tolerance ('<x' with
  mean - x > tol, '>x' with x - mean > tol), or there are only censored values pointing both ways.

A conflict clears that one label (structure, task) and nothing else: the rows stay with their
other labels, and every cleared label is listed in ``conflicts.csv`` (task, canonical SMILES, the
compound's id, the input lines involved, their values, the reason). A row whose every label was
cleared would reach the store with nothing of its own, so it is rejected with reason "all labels
conflicting" (its labels are in conflicts.csv too); a row that had no label in the input is kept as
before. Consistent duplicates merge: one class, or the mean of the exact values (else the tightest
censored bound).

Counting: a row counts as kept when it reaches the store, merged into a compound with other rows
or not (``merged_duplicate_rows`` = kept rows - compounds), so ``kept + rejected = read`` always
holds (asserted). Cleared labels are counted apart, in ``summary["conflicts"]``: they are labels,
not rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from fedmol.datasets.featurize import FeaturizeSettings
from fedmol.datasets.folds import FoldSettings, fold_balance
from fedmol.datasets.keys import key_fingerprint
from fedmol.datasets.labels import apply_threshold, parse_values
from fedmol.datasets.readers import RawTable, TableSpec, frame_to_table, read_table
from fedmol.datasets.standardize import StandardizeSettings
from fedmol.datasets.store import SiteStore
from fedmol.datasets.structures import BASIS_CODES, StructureSettings, process_structures
from fedmol.datasets.tasks import QuorumSettings, TaskInfo, build_catalogue, reason_kinds
from fedmol.errors import InputError

__all__ = ["PrepareResult", "PrepareSettings", "prepare_file", "prepare_frame", "prepare_table"]

REJECT_COLUMNS = ["line", "id", "smiles", "reason"]
CONFLICT_COLUMNS = ["task", "smiles", "id", "lines", "values", "reason"]
CONFLICTS_FILE = "conflicts.csv"
ALL_CONFLICTING = "all labels conflicting"


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides what a prepared store holds; all of it goes to settings.json.

    ``thresholds``: (task, value) pairs turning a value column into a classification task
    (1 if value >= threshold). ``duplicate_tolerance``: largest spread of exact regression values
    of one structure that still counts as agreement, in the task's units.
    """

    table: TableSpec = field(default_factory=TableSpec)
    standardize: StandardizeSettings = field(default_factory=StandardizeSettings)
    featurize: FeaturizeSettings = field(default_factory=FeaturizeSettings)
    folds: FoldSettings = field(default_factory=FoldSettings)
    quorum: QuorumSettings = field(default_factory=QuorumSettings)
    thresholds: tuple[tuple[str, float], ...] = ()
    duplicate_tolerance: float = 1.0

    @property
    def structure(self) -> StructureSettings:
        return StructureSettings(self.standardize, self.featurize, self.folds)

    def to_dict(self) -> dict[str, Any]:
        table = asdict(self.table)
        table["task_cols"] = list(self.table.task_cols) if self.table.task_cols is not None else None
        return {
            "table": table,
            "standardize": self.standardize.to_dict(),
            "featurize": self.featurize.to_dict(),
            "folds": self.folds.to_dict(),
            "quorum": self.quorum.to_dict(),
            "thresholds": {k: v for k, v in self.thresholds},
            "duplicate_tolerance": self.duplicate_tolerance,
        }


@dataclass
class PrepareResult:
    """The store, the rejects (line, id, smiles, reason; sorted by line), the summary and the
    cleared conflicting labels (`CONFLICT_COLUMNS`, one row per compound and task)."""

    store: SiteStore
    rejects: pd.DataFrame
    summary: dict[str, Any]
    path: Path | None = None
    conflicts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CONFLICT_COLUMNS))


def prepare_file(path: str | Path, key: bytes, out: Path | None, settings: PrepareSettings, *,
                 workers: int | None = None, progress: bool = True,
                 rejects_path: Path | None = None) -> PrepareResult:
    """Prepare a CSV/TSV/SDF/.smi file (gzip allowed) into a site store at ``out`` (None: in memory)."""
    table = read_table(path, settings.table)
    return prepare_table(table, key, out, settings, workers=workers, progress=progress,
                         rejects_path=rejects_path)


def prepare_frame(df: pd.DataFrame, key: bytes, out: Path | None, settings: PrepareSettings, *,
                  workers: int | None = None, progress: bool = False,
                  rejects_path: Path | None = None, source: str = "<frame>") -> PrepareResult:
    """Prepare an in-memory table (rows as a CSV would give them; row i is reported as line i + 2)."""
    table = frame_to_table(df, settings.table, source=source, first_line=2)
    return prepare_table(table, key, out, settings, workers=workers, progress=progress,
                         rejects_path=rejects_path)


def prepare_table(table: RawTable, key: bytes, out: Path | None, settings: PrepareSettings, *,
                  workers: int | None = None, progress: bool = True,
                  rejects_path: Path | None = None) -> PrepareResult:
    """Prepare records already read by a reader (see prepare_file)."""
    t0 = time.perf_counter()
    frame = table.frame.reset_index(drop=True)
    n_read = len(frame)
    reasons = frame["pre_reject"].to_numpy(dtype=object).copy()

    # -- structures: each distinct input SMILES once, over the process pool ------------------
    codes, uniques = pd.factorize(frame["smiles"], sort=False)
    with _progress(progress, len(uniques)) as on_chunk:
        block = process_structures(list(uniques), settings.structure, key, workers=workers,
                                   on_chunk=on_chunk)
    t_struct = time.perf_counter() - t0
    ok_row = np.full(len(uniques), -1, dtype=np.int64)
    ok_row[block.ok] = np.arange(int(block.ok.sum()))
    struct_reason = block.reasons[codes]
    reasons = np.where(reasons == "", struct_reason, reasons)

    # -- labels ----------------------------------------------------------------------------
    labels = _parse_labels(table, settings, reasons)
    canon = block.canonical[codes]

    # -- duplicates: a conflicting (structure, task) label is cleared, the rows stay -----------
    lines = frame["line"].to_numpy()
    groups = _find_conflicts(labels, canon, reasons, settings)
    cleared = np.zeros(len(labels.rec), dtype=bool)
    for g in groups:
        cleared[g.meas] = True
    had_labels = np.unique(labels.rec[reasons[labels.rec] == ""])
    labels = _Labels(labels.tasks, labels.rec[~cleared], labels.task[~cleared], labels.value[~cleared],
                     labels.censor[~cleared], labels.ambiguous)
    for rec, reason in _all_conflicting(groups, had_labels, labels, lines).items():
        reasons[rec] = reason
    kept = reasons == ""
    comp_codes, comp_smiles = pd.factorize(pd.Series(canon[kept]), sort=False)
    n_comp = len(comp_smiles)
    comp_of_record = np.full(n_read, -1, dtype=np.int64)
    comp_of_record[kept] = comp_codes
    first_rec = np.flatnonzero(kept)[np.unique(comp_codes, return_index=True)[1]]
    Y, censor = _aggregate(labels, comp_of_record, n_comp, settings)

    rep_unique = codes[first_rec]
    X = block.X[ok_row[rep_unique]]
    folds = block.folds[rep_unique].astype(np.int16)
    basis = block.basis[rep_unique]
    tasks = build_catalogue(Y, censor, folds, labels.tasks, settings.quorum, settings.folds.n_folds)
    compounds = pd.DataFrame({"id": frame["id"].to_numpy()[first_rec],
                              "line": frame["line"].to_numpy()[first_rec],
                              "smiles": np.asarray(comp_smiles, dtype=object)})
    conflicts = _conflict_table(groups, labels.tasks, canon, frame["id"].to_numpy(), lines, compounds)
    rejected = ~kept
    rejects = pd.DataFrame({"line": frame["line"].to_numpy()[rejected],
                            "id": frame["id"].to_numpy()[rejected],
                            "smiles": frame["smiles"].to_numpy()[rejected],
                            "reason": reasons[rejected]}, columns=REJECT_COLUMNS)
    n_kept, n_rej = int(kept.sum()), int(rejected.sum())
    # every input row either reached a compound of the store or is listed in rejects, with a reason
    in_store = int((comp_of_record >= 0).sum())
    assert in_store + len(rejects) == n_read and in_store == n_kept, (in_store, len(rejects), n_read)
    assert (rejects["reason"].str.len() > 0).all(), "a reject without a reason"

    from fedmol.datasets.reference import reference_hash

    ref = reference_hash(settings, key)
    summary = {
        "source": table.source,
        "read": n_read, "kept": n_kept, "rejected": n_rej,
        "kept_plus_rejected_equals_read": True,
        "compounds": n_comp,
        "merged_duplicate_rows": n_kept - n_comp,
        "rows_without_labels": int(kept.sum() - np.isin(np.flatnonzero(kept), labels.rec).sum()),
        "rejected_by_reason": _reason_counts(rejects["reason"]),
        "conflicts": _conflict_counts(conflicts, groups, reasons),
        "ignored_columns": table.ignored_columns,
        "ambiguous_censored": labels.ambiguous,
        "tasks_total": len(tasks),
        "tasks_trainable": sum(t.trainable for t in tasks),
        "tasks_evaluable": sum(t.evaluable for t in tasks),
        "tasks_excluded": {t.name: t.reason for t in tasks if not t.trainable},
        "tasks_not_evaluable": {t.name: t.reason for t in tasks if t.trainable and not t.evaluable},
        "task_notes_by_reason": _task_note_counts(tasks),
        "folds": {**fold_balance(folds, settings.folds.n_folds),
                  "basis": {k: int((basis == v).sum()) for k, v in BASIS_CODES.items()}},
        "key_fingerprint": key_fingerprint(key),
        "reference_hash": ref,
        "seconds": {"structures": round(t_struct, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    store_settings = {**settings.to_dict(), "key_fingerprint": key_fingerprint(key),
                      "reference_hash": ref, "versions": _versions()}
    store = SiteStore(X=X, Y=Y, censor=censor, folds=folds, tasks=tasks, settings=store_settings,
                      summary=summary, compounds=compounds)
    if out is not None:
        store.save(out)
        rejects.to_csv(Path(out) / "rejects.csv", index=False)
        conflicts.to_csv(Path(out) / CONFLICTS_FILE, index=False)
    if rejects_path is not None:
        rejects.to_csv(rejects_path, index=False)
    return PrepareResult(store, rejects, summary, Path(out) if out is not None else None, conflicts)


# -- labels ------------------------------------------------------------------------------------
@dataclass
class _Labels:
    """Label measurements in long form: record index, task index, value (class or number), censor."""

    tasks: list[TaskInfo]
    rec: np.ndarray
    task: np.ndarray
    value: np.ndarray
    censor: np.ndarray
    ambiguous: dict[str, int]


def _parse_labels(table: RawTable, settings: PrepareSettings, reasons: np.ndarray) -> _Labels:
    """Parse every label cell; rows with unreadable cells get a 'bad value' reason in ``reasons``."""
    frame = table.frame.reset_index(drop=True)
    thresholds = dict(settings.thresholds)
    unknown = [t for t in thresholds if t not in table.task_columns]
    if unknown:
        raise InputError(f"--threshold names unknown task(s) {unknown}; tasks in the input: "
                         f"{', '.join(table.task_columns) or '(none)'}")
    names = list(table.task_columns)
    recs, tids, vals, cens = [], [], [], []

    def mark_bad(bad: np.ndarray, raw: np.ndarray, column: str) -> None:
        for r in np.flatnonzero(bad & (reasons == "")):
            reasons[r] = f"bad value: {str(raw[r])[:40]!r} in column {column}"

    if table.layout == "wide":
        for j, col in enumerate(names):
            value, censor, bad = parse_values(frame[col])
            mark_bad(bad, frame[col].to_numpy(), col)
            idx = np.flatnonzero(~np.isnan(value))
            recs.append(idx)
            tids.append(np.full(len(idx), j))
            vals.append(value[idx])
            cens.append(censor[idx])
    else:
        value, censor, bad = parse_values(frame["value"], frame["qualifier"])
        raw = np.array([f"{q} {v}".strip() for v, q in
                        zip(frame["value"].to_numpy(), frame["qualifier"].to_numpy(), strict=True)],
                       dtype=object)
        mark_bad(bad, raw, f"{settings.table.value_col}/{settings.table.qualifier_col or '-'}")
        missing = np.isnan(value) & ~bad
        for r in np.flatnonzero(missing & (reasons == "")):
            reasons[r] = "bad value: missing value in a long-format row"
        no_task = frame["task"].to_numpy() == ""
        for r in np.flatnonzero(no_task & (reasons == "")):
            reasons[r] = "bad value: empty task name in a long-format row"
        index = {n: j for j, n in enumerate(names)}
        idx = np.flatnonzero(~np.isnan(value) & ~no_task)
        recs.append(idx)
        tids.append(np.array([index[t] for t in frame["task"].to_numpy()[idx]], dtype=np.int64))
        vals.append(value[idx])
        cens.append(censor[idx])
    rec = np.concatenate(recs) if recs else np.zeros(0, np.int64)
    task = np.concatenate(tids).astype(np.int64) if tids else np.zeros(0, np.int64)
    value = np.concatenate(vals) if vals else np.zeros(0)
    censor = np.concatenate(cens).astype(np.int8) if cens else np.zeros(0, np.int8)
    keep = reasons[rec] == ""  # measurements of rows that are already out play no part
    rec, task, value, censor = rec[keep], task[keep], value[keep], censor[keep]

    infos: list[TaskInfo] = []
    ambiguous: dict[str, int] = {}
    keep = np.ones(len(rec), dtype=bool)
    for j, name in enumerate(names):
        sel = task == j
        if name in thresholds:
            t = float(thresholds[name])
            label, amb = apply_threshold(value[sel], censor[sel], t)
            value[sel], censor[sel] = label, 0
            keep[np.flatnonzero(sel)[amb]] = False
            ambiguous[name] = int(amb.sum())
            infos.append(TaskInfo(name=name, kind="classification", source=name, threshold=t))
            continue
        v, c = value[sel], censor[sel]
        is_class = bool(np.all(c == 0) and np.all((v == 0) | (v == 1)))
        infos.append(TaskInfo(name=name, kind="classification" if is_class else "regression", source=name))
    return _Labels(infos, rec[keep], task[keep], value[keep], censor[keep], ambiguous)


@dataclass(frozen=True)
class _Conflict:
    """One cleared label: the measurements (indices into `_Labels` arrays) of one structure and task."""

    task: int
    meas: np.ndarray  # (k,) measurement indices, in input order
    records: np.ndarray  # (k,) their rows (record indices)
    values: np.ndarray  # (k,) their values (classes after any threshold)
    censors: np.ndarray  # (k,) int8 censor of each value
    reason: str


def _find_conflicts(labels: _Labels, canon: np.ndarray, reasons: np.ndarray,
                    settings: PrepareSettings) -> list[_Conflict]:
    """The conflicting (structure, task) groups among the measurements of rows still in."""
    alive = np.flatnonzero(reasons[labels.rec] == "")
    m = pd.DataFrame({"meas": alive, "rec": labels.rec[alive], "task": labels.task[alive],
                      "value": labels.value[alive], "censor": labels.censor[alive]})
    if m.empty:
        return []
    m["struct"] = pd.factorize(pd.Series(canon[m["rec"].to_numpy()]))[0]
    counts = m.groupby(["struct", "task"])["rec"].transform("size")
    m = m[counts.to_numpy() > 1]  # only duplicated (structure, task) pairs can conflict
    if m.empty:
        return []
    kinds = np.array([t.kind == "classification" for t in labels.tasks])
    m["is_class"] = kinds[m["task"].to_numpy()]
    bad_groups = []
    cls = m[m["is_class"]]
    if len(cls):
        n_unique = cls.groupby(["struct", "task"])["value"].nunique()
        bad_groups.append(n_unique[n_unique > 1].index)
    reg = m[~m["is_class"]]
    tol = settings.duplicate_tolerance
    if len(reg):
        stats = _regression_stats(reg)
        conflict = ((stats["n_exact"] > 0) & ((stats["ex_max"] - stats["ex_min"]) > tol)) \
            | ((stats["n_exact"] > 0) & (stats["n_lt"] > 0) & ((stats["ex_mean"] - stats["lt_min"]) > tol)) \
            | ((stats["n_exact"] > 0) & (stats["n_gt"] > 0) & ((stats["gt_max"] - stats["ex_mean"]) > tol)) \
            | ((stats["n_exact"] == 0) & (stats["n_lt"] > 0) & (stats["n_gt"] > 0))
        bad_groups.append(stats.index[conflict.to_numpy()])
    bad = pd.MultiIndex.from_tuples([g for idx in bad_groups for g in idx], names=["struct", "task"])
    if len(bad) == 0:
        return []
    hit = m.set_index(["struct", "task"]).loc[bad].reset_index()
    out: list[_Conflict] = []
    for (_, task), grp in hit.groupby(["struct", "task"], sort=False):
        grp = grp.sort_values(["rec", "meas"])
        j = cast(int, task)  # the task column's index (groupby keys are typed Hashable)
        reason = _conflict_reason(labels.tasks[j].kind == "classification", grp["value"].to_numpy(),
                                  grp["censor"].to_numpy(), tol)
        out.append(_Conflict(j, grp["meas"].to_numpy(dtype=np.int64), grp["rec"].to_numpy(dtype=np.int64),
                             grp["value"].to_numpy(), grp["censor"].to_numpy(), reason))
    out.sort(key=lambda g: (int(g.records.min()), g.task))
    return out


def _conflict_reason(is_class: bool, value: np.ndarray, censor: np.ndarray, tol: float) -> str:
    """Why the values of one (structure, task) disagree, in words (see the module docstring)."""
    if is_class:
        return "classes differ"
    exact, lt, gt = value[censor == 0], value[censor < 0], value[censor > 0]
    if len(exact) and exact.max() - exact.min() > tol:
        return f"values spread beyond the tolerance: span {exact.max() - exact.min():.3g} > {tol:g}"
    if len(exact) and len(lt) and exact.mean() - lt.min() > tol:
        return (f"censored value contradicts the exact ones: '<{lt.min():g}' is below their mean "
                f"{exact.mean():.3g} by more than {tol:g}")
    if len(exact) and len(gt) and gt.max() - exact.mean() > tol:
        return (f"censored value contradicts the exact ones: '>{gt.max():g}' is above their mean "
                f"{exact.mean():.3g} by more than {tol:g}")
    return "censored values point both ways"


def _all_conflicting(groups: list[_Conflict], had_labels: np.ndarray, remaining: _Labels,
                     lines: np.ndarray) -> dict[int, str]:
    """Record index -> reject reason for rows that had labels and lost every one of them to conflicts."""
    if not groups:
        return {}
    lost = np.setdiff1d(had_labels, remaining.rec)
    if not len(lost):
        return {}
    names = [t.name for t in remaining.tasks]
    lost_set = set(lost.tolist())
    tasks: dict[int, list[str]] = {}
    others: dict[int, list[int]] = {}
    for g in groups:
        recs = [int(r) for r in g.records]
        for r in recs:
            if r in lost_set:
                tasks.setdefault(r, []).append(names[g.task])
                others.setdefault(r, []).extend(int(lines[x]) for x in recs)
    out: dict[int, str] = {}
    for r in sorted(lost_set):
        t, where = tasks[r], sorted(set(others[r]))
        text = ", ".join(t[:3]) + (f" and {len(t) - 3} more" if len(t) > 3 else "")
        lines_text = ", ".join(map(str, where[:6])) + (" ..." if len(where) > 6 else "")
        out[r] = f"{ALL_CONFLICTING}: {text} (lines {lines_text}; see {CONFLICTS_FILE})"
    return out


def _conflict_table(groups: list[_Conflict], tasks: list[TaskInfo], canon: np.ndarray, ids: np.ndarray,
                    lines: np.ndarray, compounds: pd.DataFrame) -> pd.DataFrame:
    """One row per cleared label (`CONFLICT_COLUMNS`): ``id`` is the compound's id in compounds.csv,
    or the first involved line's id when no row of the compound stayed; ``lines`` and ``values``
    are ';'-separated in the same order ('<' and '>' mark censored values)."""
    id_of = dict(zip(compounds["smiles"], compounds["id"], strict=True))
    rows = []
    for g in groups:
        recs = g.records
        smiles = str(canon[recs[0]])
        values = ";".join(f"{_QUAL[int(c)]}{v:g}" for v, c in zip(g.values, g.censors, strict=True))
        rows.append({"task": tasks[g.task].name, "smiles": smiles, "id": id_of.get(smiles, ids[recs[0]]),
                     "lines": ";".join(str(int(lines[r])) for r in recs), "values": values, "reason": g.reason})
    return pd.DataFrame(rows, columns=CONFLICT_COLUMNS)


def _conflict_counts(conflicts: pd.DataFrame, groups: list[_Conflict], reasons: np.ndarray) -> dict[str, Any]:
    """The summary's count of cleared labels, apart from the row counts."""
    rows = {int(r) for g in groups for r in g.records}
    return {
        "labels_cleared": len(conflicts),
        "values_involved": int(sum(len(g.meas) for g in groups)),
        "rows_involved": len(rows),
        "rows_rejected_all_labels_conflicting": int(sum(str(reasons[r]).startswith(ALL_CONFLICTING)
                                                        for r in rows)),
        "by_task": {str(k): int(v) for k, v in conflicts["task"].value_counts().sort_index().items()},
        "by_reason": _reason_counts(conflicts["reason"]) if len(conflicts) else {},
        "file": CONFLICTS_FILE,
    }


_QUAL = {-1: "<", 0: "", 1: ">"}


def _regression_stats(reg: pd.DataFrame) -> pd.DataFrame:
    exact = reg["censor"] == 0
    lt, gt = reg["censor"] < 0, reg["censor"] > 0
    df = pd.DataFrame({
        "struct": reg["struct"], "task": reg["task"],
        "ex": reg["value"].where(exact), "lt": reg["value"].where(lt), "gt": reg["value"].where(gt),
    })
    g = df.groupby(["struct", "task"])
    return pd.DataFrame({
        "n_exact": g["ex"].count(), "ex_min": g["ex"].min(), "ex_max": g["ex"].max(),
        "ex_mean": g["ex"].mean(),
        "n_lt": g["lt"].count(), "lt_min": g["lt"].min(), "n_gt": g["gt"].count(), "gt_max": g["gt"].max(),
    })


def _aggregate(labels: _Labels, comp_of_record: np.ndarray, n_comp: int,
               settings: PrepareSettings) -> tuple[np.ndarray, np.ndarray]:
    """(n_comp, T) float32 values with NaN and (n_comp, T) int8 censor from merged measurements."""
    T = len(labels.tasks)
    Y = np.full((n_comp, T), np.nan, dtype=np.float32)
    C = np.zeros((n_comp, T), dtype=np.int8)
    comp = comp_of_record[labels.rec]
    alive = comp >= 0
    m = pd.DataFrame({"struct": comp[alive], "task": labels.task[alive], "value": labels.value[alive],
                      "censor": labels.censor[alive]})
    if m.empty:
        return Y, C
    stats = _regression_stats(m)  # for classification the mean of identical classes is the class
    s, t = (stats.index.get_level_values(i).to_numpy() for i in (0, 1))
    has_exact = stats["n_exact"].to_numpy() > 0
    has_lt = stats["n_lt"].to_numpy() > 0
    value = np.where(has_exact, stats["ex_mean"], np.where(has_lt, stats["lt_min"], stats["gt_max"]))
    censor = np.where(has_exact, 0, np.where(has_lt, -1, 1)).astype(np.int8)
    Y[s, t] = value
    C[s, t] = censor
    return Y, C


def _task_note_counts(tasks: list[TaskInfo]) -> dict[str, int]:
    """Tasks per kind of reason (not trainable or not evaluable); a task counts once per kind."""
    counts: dict[str, int] = {}
    for t in tasks:
        for kind in dict.fromkeys(reason_kinds(t.reason)):
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _reason_counts(reasons: pd.Series) -> dict[str, int]:
    cats = reasons.astype(str).str.split(":").str[0].str.split(" \\(").str[0]
    return {str(k): int(v) for k, v in cats.value_counts().sort_index().items()}


def _versions() -> dict[str, str]:
    import rdkit

    from fedmol import __version__ as fedmol_version

    return {"rdkit": rdkit.__version__, "numpy": np.__version__, "fedmol": fedmol_version}


class _progress:
    """A rich progress bar over structures (chunks), or nothing when disabled or the input is small."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and total >= 2000
        self.total = total

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task("standardise, featurise, fold", total=self.total)
        return lambda done, total: self._bar.update(task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()
