"""Readers: CSV/TSV (wide or long), SDF and .smi files, gzip-compressed or not.

Every reader returns a :class:`RawTable` whose ``frame`` has one row per input record with the
columns ``line`` (1-based line number in the file: the header is line 1, so the first record of a
CSV is line 2; for SDF the 1-based record index), ``id`` (str, "" when the file has none),
``smiles`` (str) and ``pre_reject`` (a reason already known while reading, e.g. an SDF record
RDKit cannot read; "" otherwise), followed by the label columns:

* wide: one column per task, raw cell values (numbers or strings such as "<5.2");
* long: ``task``, ``value`` and ``qualifier`` (one of "", "<", ">", "=", "<=", ">=", "~").

Nothing is parsed chemically here except SDF molblocks, which must become SMILES.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fedmol.errors import InputError

__all__ = ["RawTable", "TableSpec", "frame_to_table", "read_table", "sniff_format"]

FileFormat = Literal["csv", "tsv", "sdf", "smi"]
Layout = Literal["wide", "long"]
_BASE = ["line", "id", "smiles", "pre_reject"]


@dataclass(frozen=True)
class TableSpec:
    """Which columns of the input hold what. Column names match case-insensitively if unique.

    ``task_cols`` None (wide layout) means: every other column whose values are numeric
    (possibly with a '<'/'>' qualifier); the others are reported as ignored, never silently.
    """

    smiles_col: str = "smiles"
    id_col: str | None = None
    task_cols: tuple[str, ...] | None = None
    layout: Layout = "wide"
    task_col: str = "task"
    value_col: str = "value"
    qualifier_col: str | None = None


@dataclass
class RawTable:
    """Records as read; see the module docstring for the columns of ``frame``."""

    frame: pd.DataFrame
    layout: Layout
    task_columns: list[str]
    source: str
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def n_records(self) -> int:
        return len(self.frame)


def sniff_format(path: Path) -> FileFormat:
    """The file format from the extension (a trailing .gz is looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    table = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".sdf": "sdf", ".sd": "sdf",
             ".mol": "sdf", ".smi": "smi", ".smiles": "smi"}
    if ext not in table:
        raise InputError(f"cannot tell the format of {path.name}: use one of "
                         f"{', '.join(sorted(table))} (optionally with .gz)")
    return table[ext]  # type: ignore[return-value]


def read_table(path: str | Path, spec: TableSpec | None = None) -> RawTable:
    """Read any supported file into a RawTable (raises InputError with the fix on bad input)."""
    path = Path(path)
    spec = spec or TableSpec()
    if not path.exists():
        raise InputError(f"input file {path} not found")
    if path.is_dir():
        raise InputError(f"{path} is a folder: pass a CSV, TSV, SDF or .smi file")
    fmt = sniff_format(path)
    if fmt in ("csv", "tsv"):
        frame = _read_delimited(path, "," if fmt == "csv" else "\t")
        return frame_to_table(frame, spec, source=str(path), first_line=2)
    if fmt == "sdf":
        frame = _read_sdf(path)
        spec = TableSpec(**{**spec.__dict__, "smiles_col": "smiles"})
        return frame_to_table(frame, spec, source=str(path), first_line=1,
                              id_fallback="_Name" if spec.id_col is None else None)
    frame = _read_smi(path)
    spec = TableSpec(**{**spec.__dict__, "smiles_col": "smiles",
                        "id_col": spec.id_col or "name", "task_cols": ()})
    return frame_to_table(frame, spec, source=str(path), first_line=None)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    try:
        # Blank lines are kept (as all-NaN rows) so that row positions stay physical line numbers.
        frame = pd.read_csv(path, sep=sep, skip_blank_lines=False, low_memory=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: expected a header line and one row per compound") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0][:120]
        raise InputError(f"cannot parse {path} ({msg}): check the delimiter and quoting") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    return frame


def _read_sdf(path: Path) -> pd.DataFrame:
    """One row per record: smiles (from the molblock), _Name, every property, pre_reject."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    rows: list[dict[str, object]] = []
    with _open_text(path) as fh:
        block: list[str] = []
        for raw in fh:
            if raw.startswith("$$$$"):
                rows.append(_sdf_record("".join(block)))
                block = []
            else:
                block.append(raw)
        if "".join(block).strip():
            rows.append(_sdf_record("".join(block)))
    return pd.DataFrame(rows)


def _sdf_record(text: str) -> dict[str, object]:
    """One SDF record's text (without the $$$$ line) as a row: _Name, properties, smiles."""
    from rdkit import Chem

    molblock, _, props_text = text.partition("M  END")
    record: dict[str, object] = {"_Name": text.split("\n", 1)[0].strip(), "pre_reject": ""}
    lines = props_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(">") and "<" in line and ">" in line[1:]:
            name = line[line.index("<") + 1: line.rindex(">")]
            values = []
            i += 1
            while i < len(lines) and lines[i].strip():
                values.append(lines[i].strip())
                i += 1
            record[name] = "\n".join(values)
        i += 1
    mol = Chem.MolFromMolBlock(molblock + "M  END\n") if molblock.strip() else None
    if mol is None:
        record["smiles"] = ""
        record["pre_reject"] = "unreadable SDF record: RDKit could not read or sanitise the molblock"
    else:
        record["smiles"] = Chem.MolToSmiles(mol)
    return record


def _read_smi(path: Path) -> pd.DataFrame:
    rows = []
    with _open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(maxsplit=1)
            if lineno == 1 and parts[0].lower() in ("smiles", "smi"):
                continue  # a header line
            rows.append({"line": lineno, "smiles": parts[0], "name": parts[1] if len(parts) > 1 else ""})
    if not rows:
        raise InputError(f"{path} is empty: expected one SMILES (and optionally a name) per line")
    return pd.DataFrame(rows)


def _resolve(name: str, columns: Sequence[str], what: str, source: str) -> str:
    if name in columns:
        return name
    matches = [c for c in columns if str(c).lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(map(str, columns[:30])) + (" ..." if len(columns) > 30 else "")
    raise InputError(f"{what} column {name!r} not found in {source}; available columns: {shown}")


def frame_to_table(frame: pd.DataFrame, spec: TableSpec, source: str = "<frame>",
                   first_line: int | None = 1, id_fallback: str | None = None) -> RawTable:
    """Select and rename the columns of an already-read frame.

    ``first_line`` is the line number of the frame's first row (2 for a CSV with a header); None
    means the frame already has a ``line`` column.
    """
    if first_line is not None:
        lines = np.arange(first_line, first_line + len(frame), dtype=np.int64)
        # rows that are entirely empty are blank lines, not records
        data_cols = [c for c in frame.columns if c != "pre_reject"]
        present = frame[data_cols].notna().any(axis=1).to_numpy()
        frame, lines = frame[present], lines[present]
    else:
        lines = frame["line"].to_numpy(dtype=np.int64)
    if len(frame) == 0:
        raise InputError(f"{source} has no records: expected one row per compound after the header")
    internal = ("pre_reject",) if first_line is not None else ("line", "pre_reject")
    columns = [c for c in frame.columns if c not in internal]
    smiles_col = _resolve(spec.smiles_col, columns, "SMILES", source)
    id_col = _resolve(spec.id_col, columns, "id", source) if spec.id_col else None
    if id_col is None and id_fallback and id_fallback in columns:
        id_col = id_fallback
    out = pd.DataFrame({
        "line": lines,
        "id": frame[id_col].astype("string").fillna("").astype(str).to_numpy() if id_col else "",
        "smiles": frame[smiles_col].astype("string").fillna("").astype(str).str.strip().to_numpy(),
        "pre_reject": frame["pre_reject"].astype(str).to_numpy() if "pre_reject" in frame else "",
    })
    used = {smiles_col, id_col, "_Name"}
    ignored: list[str] = []
    if spec.layout == "long":
        task_col = _resolve(spec.task_col, columns, "task", source)
        value_col = _resolve(spec.value_col, columns, "value", source)
        qual_col = _resolve(spec.qualifier_col, columns, "qualifier", source) if spec.qualifier_col else None
        out["task"] = frame[task_col].astype("string").fillna("").astype(str).str.strip().to_numpy()
        out["value"] = frame[value_col].to_numpy()
        out["qualifier"] = (frame[qual_col].astype("string").fillna("").astype(str).str.strip().to_numpy()
                            if qual_col else "")
        task_names = sorted(t for t in out["task"].unique() if t)
        return RawTable(out, "long", task_names, source)
    if spec.task_cols is not None:
        task_cols = [_resolve(c, columns, "task", source) for c in spec.task_cols]
    else:
        task_cols = []
        for c in columns:
            if c in used:
                continue
            (task_cols if _looks_numeric(frame[c]) else ignored).append(c)
    clash = [c for c in task_cols if c in _BASE]
    if clash:
        raise InputError(f"task column(s) {clash} in {source} clash with fedmol's own record fields "
                         f"{_BASE}: rename them in the file")
    for c in task_cols:
        out[c] = frame[c].to_numpy()
    return RawTable(out, "wide", [str(c) for c in task_cols], source,
                    ignored_columns=[str(c) for c in ignored])


def _looks_numeric(col: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return True
    from fedmol.datasets.labels import parse_values

    values = col.dropna()
    if len(values) == 0:
        return False
    _, _, bad = parse_values(values)
    return bool((~bad).mean() >= 0.5)
