"""Readers: CSV/TSV (wide or long), SDF and .smi files, gzip-compressed or not.

One streaming reader serves `fedmol prepare` and `fedmol score`, in three levels:

* :func:`iter_rows` streams a file as :class:`Rows` blocks: the file's own columns and each
  record's ``line`` and ``pre_reject``;
* :func:`iter_records` streams chunks of ``chunk_size`` records with the columns ``line``, ``id``
  (str, "" when the file has none), ``smiles`` (str, stripped) and ``pre_reject`` (a reason
  already known while reading; "" otherwise): what `fedmol score` reads;
* :func:`read_table` reads a whole file into a :class:`RawTable` for `fedmol prepare`: the same
  columns, followed by the label columns:

  - wide: one column per task, raw cell values (numbers or strings such as "<5.2");
  - long: ``task``, ``value`` and ``qualifier`` (one of "", "<", ">", "=", "<=", ">=", "~").

  Label columns are read as pandas reads them (its NA strings such as "NA" or "null" are missing
  values, all-numeric columns become numbers); the SMILES and id columns stay text as written.

Records and their ``line``, the same in both commands:

* CSV/TSV: the header is the first non-blank line; ``line`` is the physical line (1-based) on
  which a record starts, also after a quoted field that spans lines. A row with fewer fields than
  the header gets empty ones.
* .smi: one record per line: the SMILES, then optionally a name (the rest of the line);
  ``line`` is the physical line. A first line "smiles ..." or "smi ..." is a header. A line whose
  first non-blank character is ``#`` is a comment.
* SDF: records end at ``$$$$``; ``line`` is the 1-based record index; the SMILES comes from the
  molblock, the id from the title line (or the property named by ``id_col``).
* Blank lines (empty or only whitespace; in CSV/TSV also only separators) and .smi comments are
  not records: they are skipped and not counted as read, and the other records keep their
  physical line numbers.
* A record that cannot be read is still a record, with its reason in ``pre_reject``, so that it
  is rejected with its line and ``kept + rejected = read`` (``scored + rejected = read``) holds:
  a line that is not valid UTF-8 (the reason names the byte, line and column; the record's text
  is kept with that byte written as ``\\xNN``), a CSV/TSV row with more fields than the header
  or one the CSV syntax cannot read, an SDF molblock RDKit cannot read.

A header that is not valid UTF-8 fails the whole file (no column can be trusted). CSV/TSV is read
in blocks of about 1 MiB by pandas' C parser; only a block with an invalid byte, a quoted field
spanning lines, a NUL or a lone carriage return is read by Python's csv module instead.

Nothing is parsed chemically here except SDF molblocks, which must become SMILES.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd

from fedmol.datasets.options import Layout
from fedmol.errors import InputError

__all__ = ["RawTable", "Rows", "TableSpec", "frame_to_table", "iter_records", "iter_rows", "read_frame",
           "read_table", "sniff_format"]

FileFormat = Literal["csv", "tsv", "sdf", "smi"]
_BASE = ["line", "id", "smiles", "pre_reject"]
_BLOCK_BYTES = 1 << 20  # CSV/TSV input per pandas call
_BLOCK_RECORDS = 10_000  # .smi/SDF records per Rows block
_BLANK = b" \t\r\n\x0b\x0c"
_NOT_BLANK = np.ones(256, dtype=bool)
_NOT_BLANK[list(_BLANK)] = False
# pandas' default NA strings: missing values in label columns, as `pd.read_csv` reads them
_NA_STRINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                         "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


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


@dataclass(frozen=True)
class Rows:
    """A block of records as read: ``frame`` holds the file's columns (CSV/TSV: the header's names,
    duplicates as pandas names them; SDF: ``smiles``, ``_Name`` and the properties; .smi: ``smiles``
    and ``name``; text or values, see :func:`iter_rows`); ``line`` (int64, (n,)) and ``pre_reject``
    (str, (n,)) per record."""

    frame: pd.DataFrame
    line: np.ndarray
    pre_reject: np.ndarray

    def __len__(self) -> int:
        return len(self.line)


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


# -- the public readers ------------------------------------------------------------------------
def iter_rows(path: str | Path, spec: TableSpec | None = None, *, only_records: bool = False) -> Iterator[Rows]:
    """Stream a file as :class:`Rows` blocks (about 1 MiB of CSV/TSV, or 10,000 records, each).

    Without ``spec`` every column is text as written. With it, the SMILES and id columns stay text
    (a CSV/TSV column the spec names but the header lacks is an InputError) and the others are
    read as `pd.read_csv` reads them: its NA strings ("", "NA", "null", ...) are missing, numbers
    are numbers; ``only_records`` reads the SMILES and id columns only. Raises InputError for a
    missing, unreadable or empty file.
    """
    path = Path(path)
    fmt = _check_input(path)
    try:
        with _open_binary(path) as fh:
            lines = _Lines(fh)
            if fmt in ("csv", "tsv"):
                yield from _delimited_rows(lines, "," if fmt == "csv" else "\t", str(path), spec, only_records)
            elif fmt == "sdf":
                yield from _sdf_rows(lines, spec, only_records)
            else:
                yield from _smi_rows(lines)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def iter_records(path: str | Path, spec: TableSpec | None = None, chunk_size: int = 10_000) -> Iterator[pd.DataFrame]:
    """Stream a file's records in chunks of ``chunk_size`` (the last may be shorter): columns
    ``line``, ``id``, ``smiles``, ``pre_reject`` (see the module docstring). Only the spec's
    ``smiles_col`` (CSV/TSV) and ``id_col`` (CSV/TSV column or SDF property; default: none, the SDF
    title, the .smi name) are used."""
    spec = spec or TableSpec()
    fmt = _check_input(Path(path))

    def records(rows: Rows) -> pd.DataFrame:
        frame = rows.frame
        smiles_col, id_col = _roles(fmt, spec, list(frame.columns), str(path))
        # text columns hold str objects (NaN where an SDF record lacks the property): no conversion
        ids = frame[id_col].fillna("").to_numpy(dtype=object) if id_col in frame.columns else ""
        smiles = [s.strip() for s in frame[smiles_col].fillna("").to_numpy(dtype=object)]
        return pd.DataFrame({"line": rows.line, "id": ids, "smiles": np.asarray(smiles, dtype=object),
                             "pre_reject": rows.pre_reject})

    blocks = iter_rows(path, spec, only_records=True)
    yield from _rechunk((records(rows) for rows in blocks), chunk_size)


def read_frame(path: str | Path) -> pd.DataFrame:
    """A whole file's records as one frame of text: its own columns (see :class:`Rows`) only."""
    blocks = [rows.frame for rows in iter_rows(path)]
    return pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()


def read_table(path: str | Path, spec: TableSpec | None = None) -> RawTable:
    """Read any supported file into a RawTable (raises InputError with the fix on bad input)."""
    path = Path(path)
    spec = spec or TableSpec()
    fmt = _check_input(path)
    blocks = list(iter_rows(path, spec))
    frame = pd.concat([b.frame for b in blocks], ignore_index=True) if blocks else pd.DataFrame()
    lines = np.concatenate([b.line for b in blocks]) if blocks else np.zeros(0, np.int64)
    pre = np.concatenate([b.pre_reject for b in blocks]) if blocks else np.zeros(0, object)
    id_fallback = None
    if fmt == "sdf":
        spec = replace(spec, smiles_col="smiles")
        id_fallback = "_Name" if spec.id_col is None else None
    elif fmt == "smi":
        if not blocks:
            raise InputError(f"{path} is empty: expected one SMILES (and optionally a name) per line")
        spec = replace(spec, smiles_col="smiles", id_col=spec.id_col or "name", task_cols=())
    return _to_table(frame, lines, pre, spec, str(path), id_fallback)


def frame_to_table(frame: pd.DataFrame, spec: TableSpec, source: str = "<frame>",
                   first_line: int | None = 1, id_fallback: str | None = None) -> RawTable:
    """Select and rename the columns of an in-memory frame (values taken as they are).

    ``first_line`` is the line number of the frame's first row (2 for a CSV with a header); rows
    that are entirely empty are blank lines, not records. None means the frame already has a
    ``line`` column. A ``pre_reject`` column, if any, carries reasons known before.
    """
    if first_line is not None:
        lines = np.arange(first_line, first_line + len(frame), dtype=np.int64)
        data_cols = [c for c in frame.columns if c != "pre_reject"]
        present = frame[data_cols].notna().any(axis=1).to_numpy()
        frame, lines = frame[present], lines[present]
    else:
        lines = frame["line"].to_numpy(dtype=np.int64)
    pre = frame["pre_reject"].astype(str).to_numpy() if "pre_reject" in frame else np.full(len(frame), "", object)
    data = frame.drop(columns=[c for c in ("line", "pre_reject") if c in frame.columns and
                               (c == "pre_reject" or first_line is None)])
    return _to_table(data, lines, pre, spec, source, id_fallback)


# -- columns -----------------------------------------------------------------------------------
def _find(name: str, columns: Sequence[str]) -> str | None:
    if name in columns:
        return name
    matches = [c for c in columns if str(c).lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _resolve(name: str, columns: Sequence[str], what: str, source: str) -> str:
    found = _find(name, columns)
    if found is not None:
        return found
    columns = list(columns)
    shown = ", ".join(map(str, columns[:30])) + (" ..." if len(columns) > 30 else "")
    raise InputError(f"{what} column {name!r} not found in {source}; available columns: {shown}")


def _roles(fmt: FileFormat, spec: TableSpec, columns: list[str], source: str) -> tuple[str, str | None]:
    """The names of the SMILES and id columns among a file's ``columns`` (id: None if none)."""
    if fmt in ("csv", "tsv"):
        return (_resolve(spec.smiles_col, columns, "SMILES", source),
                _resolve(spec.id_col, columns, "id", source) if spec.id_col else None)
    if fmt == "sdf":  # a property, else the title line
        return "smiles", _find(spec.id_col, columns) if spec.id_col else "_Name"
    return "smiles", "name"


def _to_table(frame: pd.DataFrame, lines: np.ndarray, pre: np.ndarray, spec: TableSpec, source: str,
              id_fallback: str | None) -> RawTable:
    """The RawTable of records whose file columns are ``frame``."""
    if len(frame) == 0:
        raise InputError(f"{source} has no records: expected one row per compound after the header")
    frame = frame.reset_index(drop=True)
    columns = list(frame.columns)
    smiles_col = _resolve(spec.smiles_col, columns, "SMILES", source)
    id_col = _resolve(spec.id_col, columns, "id", source) if spec.id_col else None
    if id_col is None and id_fallback and id_fallback in columns:
        id_col = id_fallback
    used = {smiles_col, id_col, "_Name"}
    out = pd.DataFrame({
        "line": np.asarray(lines, dtype=np.int64),
        "id": frame[id_col].astype("string").fillna("").astype(str).to_numpy() if id_col else "",
        "smiles": frame[smiles_col].astype("string").fillna("").astype(str).str.strip().to_numpy(),
        "pre_reject": np.asarray(pre, dtype=object),
    })
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
    labels = pd.DataFrame({c: frame[c].to_numpy() for c in task_cols}, index=out.index)
    out = pd.concat([out, labels], axis=1) if task_cols else out
    return RawTable(out, "wide", [str(c) for c in task_cols], source,
                    ignored_columns=[str(c) for c in ignored])


def _as_values(frame: pd.DataFrame, text: set[str]) -> pd.DataFrame:
    """Text columns not in ``text`` as `pd.read_csv` reads them: NA strings missing, numbers if all are."""
    converted = {}
    for name in frame.columns:
        if name in text:
            continue
        col = frame[name].where(~frame[name].isin(_NA_STRINGS))
        try:
            converted[name] = pd.to_numeric(col)
        except (ValueError, TypeError):
            converted[name] = col
    return frame.assign(**converted) if converted else frame


def _looks_numeric(col: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return True
    from fedmol.datasets.labels import parse_values

    values = col.dropna()
    if len(values) == 0:
        return False
    _, _, bad = parse_values(values)
    return bool((~bad).mean() >= 0.5)


# -- bytes to lines ----------------------------------------------------------------------------
def _check_input(path: Path) -> FileFormat:
    if not path.exists():
        raise InputError(f"input file {path} not found")
    if path.is_dir():
        raise InputError(f"{path} is a folder: pass a CSV, TSV, SDF or .smi file")
    return sniff_format(path)


def _open_binary(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115


class _Lines:
    """The physical lines of a binary file, one by one or in blocks of whole lines; counts them.

    Every line handed out ends with b"\\n" (one is added to a last line without it); a UTF-8 byte
    order mark at the start of the file is dropped.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._started = False
        self.lineno = 0  # lines handed out so far

    def _fill(self, size: int | None = None) -> bool:
        """Read about ``size`` (default 1 MiB) more bytes of the file; False at its end."""
        if self._eof:
            return False
        more = self._fh.read(max(size or _BLOCK_BYTES, 4))
        if not self._started:
            self._started = True
            if more.startswith(codecs.BOM_UTF8):
                more = more[len(codecs.BOM_UTF8):]
        if not more:
            self._eof = True
            return False
        self._buf = self._buf[self._pos:] + more
        self._pos = 0
        return True

    def _take(self, end: int) -> bytes:
        out = self._buf[self._pos:end]
        self._pos = end
        if out and not out.endswith(b"\n"):
            out += b"\n"
        self.lineno += out.count(b"\n")
        return out

    def line(self) -> bytes:
        """The next line, b"" at the end of the file."""
        while (end := self._buf.find(b"\n", self._pos)) < 0:
            if not self._fill():
                return self._take(len(self._buf))
        return self._take(end + 1)

    def block(self, size: int | None = None) -> tuple[bytes, int]:
        """About ``size`` (default 1 MiB) bytes of whole lines, b"" at the end of the file, and the
        number of its first line. A line longer than ``size`` comes whole."""
        size = size or _BLOCK_BYTES
        if len(self._buf) - self._pos < size:
            self._fill(size - (len(self._buf) - self._pos))
        end = self._buf.rfind(b"\n", self._pos, self._pos + size)
        while end < 0 and (end := self._buf.find(b"\n", self._pos)) < 0 and self._fill():
            pass
        first = self.lineno + 1
        return self._take(len(self._buf) if end < 0 else end + 1), first


def _decode(raw: bytes, lineno: int) -> tuple[str, str]:
    """A line as text and "", or, if it is not valid UTF-8, with ``\\xNN`` for bad bytes and the reason."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "backslashreplace"), (
            f"invalid UTF-8: byte 0x{raw[exc.start]:02X} in line {lineno}, column {exc.start + 1} "
            "(save the file as UTF-8)")


# -- CSV/TSV -----------------------------------------------------------------------------------
def _delimited_rows(lines: _Lines, sep: str, source: str, spec: TableSpec | None,
                    only_records: bool) -> Iterator[Rows]:
    names = _read_header(lines, sep, source)
    text = set(names)
    if spec is not None:
        text = {c for c in _roles("csv", spec, names, source) if c is not None}
    wanted = [c for c in names if c in text] if only_records else names
    usecols = [names.index(c) for c in wanted]
    # pandas' set-up costs per column and call: wide files go in larger blocks
    size = _BLOCK_BYTES * max(1, (len(wanted) - len(text)) // 16)
    while True:
        data, first = lines.block(size)
        if not data:
            return
        rows = _parse_fast(data, first, sep, names, usecols, text)
        if rows is None:
            rows = _parse_slow(data, first, lines, sep, names, usecols)
            rows = replace(rows, frame=_as_values(rows.frame, text))
        if len(rows):
            yield rows


def _read_header(lines: _Lines, sep: str, source: str) -> list[str]:
    """The column names from the first non-blank line; pandas' names for empty and repeated ones."""
    while raw := lines.line():
        if not raw.strip(_BLANK + sep.encode()):
            continue
        text, reason = _decode(raw, lines.lineno)
        if reason:
            raise InputError(f"the header of {source} is not text in UTF-8: {reason}")
        try:
            fields = next(csv.reader([text], delimiter=sep, strict=False))
        except csv.Error as exc:
            raise InputError(f"cannot read the header (line {lines.lineno}) of {source}: {exc}") from None
        names: list[str] = []
        for i, name in enumerate(fields):
            base = name = name or f"Unnamed: {i}"
            k = 0
            while name in names:
                k += 1
                name = f"{base}.{k}"
            names.append(name)
        return names
    raise InputError(f"{source} is empty: expected a header line and one row per compound")


def _per_line(positions: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the sorted byte ``positions`` fall on each line (``ends``: its newlines' positions)."""
    return np.diff(np.searchsorted(positions, ends), prepend=0)


def _parse_fast(data: bytes, first: int, sep: str, names: list[str], usecols: list[int],
                text: set[str]) -> Rows | None:
    """A block of whole lines through pandas' C parser (columns not in ``text`` as values); None
    when it needs :func:`_parse_slow`."""
    if b"\x00" in data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return None  # NULs, and lone carriage returns, which pandas takes for line ends
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    quotes = np.flatnonzero(arr == ord('"')) if b'"' in data else None
    if quotes is not None and (_per_line(quotes, ends) & 1).any():
        return None  # a quoted field spans lines (or a stray quote): each record's start line is needed
    wanted = [names[i] for i in usecols]
    values = [c for c in wanted if c not in text]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.BytesIO(data), sep=sep, header=None, names=names, usecols=usecols,
                                dtype={c: object for c in wanted if c in text}, na_filter=bool(values),
                                keep_default_na=False, na_values={c: list(_NA_STRINGS) for c in values},
                                skip_blank_lines=False, index_col=False, low_memory=False, engine="c")
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError):
        return None
    if len(frame) != len(ends):  # records and lines do not pair up
        return None
    frame = frame[wanted]
    # pandas checks no field count when given usecols: count the separators outside quotes
    seps = np.flatnonzero(arr == ord(sep))
    if quotes is not None:
        seps = seps[(np.searchsorted(quotes, seps) & 1) == 0]
    fields = _per_line(seps, ends) + 1
    reasons = np.full(len(frame), "", dtype=object)
    for i in np.flatnonzero(fields > len(names)):
        reasons[i] = f"too many fields: {fields[i]} where the header has {len(names)}"
    lines = np.arange(first, first + len(frame), dtype=np.int64)
    # blank lines are not records: only a line that starts with a blank or a separator can be one
    starts = np.concatenate([[0], ends[:-1] + 1])
    keep = np.ones(len(frame), dtype=bool)
    for i in np.flatnonzero(~_NOT_BLANK[arr[starts]] | (arr[starts] == ord(sep))):
        keep[i] = bool(data[starts[i]:ends[i]].strip(_BLANK + sep.encode()))
    if not keep.all():
        frame, lines, reasons = frame[keep], lines[keep], reasons[keep]
    return Rows(frame.reset_index(drop=True), lines, reasons)


def _parse_slow(data: bytes, first: int, lines: _Lines, sep: str, names: list[str], usecols: list[int]) -> Rows:
    """A block of whole lines through Python's csv module, line by line: exact line numbers, and a
    reason for each record that cannot be read. A record that starts in the block but runs past
    it takes the lines it needs from ``lines``."""
    raws = [part + b"\n" for part in data.split(b"\n")[:-1]]
    bad: dict[int, str] = {}

    def text() -> Iterator[str]:
        for lineno, raw in enumerate(raws, start=first):
            line, reason = _decode(raw, lineno)
            if reason:
                bad[lineno] = reason
            yield line
        while raw := lines.line():
            line, reason = _decode(raw, lines.lineno)
            if reason:
                bad[lines.lineno] = reason
            yield line

    reader = csv.reader(text(), delimiter=sep, strict=False)
    kind = "CSV" if sep == "," else "TSV"
    rows: list[list[str]] = []
    starts: list[int] = []
    reasons: list[str] = []
    consumed = 0
    while consumed < len(raws):
        start = first + consumed
        try:
            fields, reason = next(reader), ""
        except StopIteration:
            break
        except csv.Error as exc:
            message = ("a carriage return (\\r) inside a field that is not quoted" if "new-line" in str(exc)
                       else str(exc))
            fields, reason = [], f"unreadable {kind} row: {message}"
            if reader.line_num == consumed:  # nothing was read: stop rather than lose the rest unseen
                raise InputError(f"cannot read {kind} line {start}: {exc}") from None
        end = first + reader.line_num - 1
        consumed = reader.line_num
        reason = next((bad[n] for n in range(start, end + 1) if n in bad), "") or reason
        if not reason and start == end and not raws[start - first].strip(_BLANK + sep.encode()):
            continue  # a blank line
        if not reason and len(fields) > len(names):
            reason = f"too many fields: {len(fields)} where the header has {len(names)}"
        rows.append([fields[i] if i < len(fields) else "" for i in usecols])
        starts.append(start)
        reasons.append(reason)
    frame = pd.DataFrame(rows, columns=[names[i] for i in usecols], dtype=object)
    return Rows(frame, np.asarray(starts, dtype=np.int64), np.asarray(reasons, dtype=object))


# -- .smi and SDF ------------------------------------------------------------------------------
def _smi_rows(lines: _Lines) -> Iterator[Rows]:
    rows: list[tuple[str, str]] = []
    numbers: list[int] = []
    reasons: list[str] = []
    while raw := lines.line():
        text, reason = _decode(raw, lines.lineno)
        text = text.strip()
        if not text or text.startswith("#"):
            continue  # blank lines and comments are not records
        parts = text.split(maxsplit=1)
        if lines.lineno == 1 and parts[0].lower() in ("smiles", "smi"):
            continue  # a header line
        rows.append((parts[0], parts[1] if len(parts) > 1 else ""))
        numbers.append(lines.lineno)
        reasons.append(reason)
        if len(rows) == _BLOCK_RECORDS:
            yield _smi_block(rows, numbers, reasons)
            rows, numbers, reasons = [], [], []
    if rows:
        yield _smi_block(rows, numbers, reasons)


def _smi_block(rows: list[tuple[str, str]], numbers: list[int], reasons: list[str]) -> Rows:
    return Rows(pd.DataFrame(rows, columns=["smiles", "name"], dtype=object),
                np.asarray(numbers, dtype=np.int64), np.asarray(reasons, dtype=object))


def _sdf_rows(lines: _Lines, spec: TableSpec | None, only_records: bool) -> Iterator[Rows]:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    records: list[dict[str, object]] = []
    block: list[str] = []
    reason = ""
    n = 0
    while True:
        raw = lines.line()
        text, bad = _decode(raw, lines.lineno)
        reason = reason or bad
        if raw.startswith(b"$$$$") or (not raw and "".join(block).strip()):
            n += 1
            records.append(_sdf_record("".join(block), reason))
            block, reason = [], ""
        else:
            block.append(text)
        if records and (len(records) == _BLOCK_RECORDS or not raw):
            yield _sdf_block(records, n, spec, only_records)
            records = []
        if not raw:
            return


def _sdf_block(records: list[dict[str, object]], last: int, spec: TableSpec | None, only_records: bool) -> Rows:
    reasons = np.asarray([r.pop("pre_reject") for r in records], dtype=object)
    frame = pd.DataFrame(records)
    if spec is not None:
        text = {"_Name", *(c for c in _roles("sdf", spec, list(frame.columns), "") if c is not None)}
        frame = frame[[c for c in frame.columns if c in text]] if only_records else _as_values(frame, text)
    return Rows(frame, np.arange(last - len(records) + 1, last + 1, dtype=np.int64), reasons)


def _sdf_record(text: str, reason: str = "") -> dict[str, object]:
    """One SDF record's text (without the $$$$ line) as a row: _Name, properties, smiles, pre_reject."""
    from rdkit import Chem

    molblock, _, props_text = text.partition("M  END")
    record: dict[str, object] = {"_Name": text.split("\n", 1)[0].strip(), "pre_reject": reason}
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
        record["pre_reject"] = reason or "unreadable SDF record: RDKit could not read or sanitise the molblock"
    else:
        record["smiles"] = Chem.MolToSmiles(mol)
    return record


# -- chunks ------------------------------------------------------------------------------------
def _rechunk(frames: Iterator[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    """The rows of ``frames`` in frames of exactly ``size`` rows (the last may be shorter)."""
    pending: list[pd.DataFrame] = []
    n = 0
    for frame in frames:
        if not len(frame):
            continue
        pending.append(frame)
        n += len(frame)
        if n < size:
            continue
        whole = pd.concat(pending, ignore_index=True) if len(pending) > 1 else frame.reset_index(drop=True)
        cut = n - n % size
        for i in range(0, cut, size):
            yield whole.iloc[i:i + size].reset_index(drop=True)
        pending = [whole.iloc[cut:]] if cut < n else []
        n -= cut
    if pending:
        yield pd.concat(pending, ignore_index=True)
