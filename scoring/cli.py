"""`fedmol score`: a file of candidate molecules in, predictions with uncertainty out (streamed).

Chunks of the input are read, scored (in this process or a pool of worker processes, order
kept) and appended to the output, so memory stays flat however large the input is.
"""

from __future__ import annotations

import gzip
import io
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from fedmol.errors import InputError

CHUNK_COLUMNS = ["line", "id", "smiles", "pre_reject"]


def register(app: typer.Typer) -> None:
    """The chemist's commands: `fedmol score` (a file) and `fedmol serve` (HTTP API and web page)."""
    from fedmol.scoring.service import serve_command

    app.command("score")(score)
    app.command("serve")(serve_command)


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115


def read_chunks(path: Path, smiles_col: str, id_col: str | None, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Chunks with columns line, id, smiles, pre_reject (a reason known while reading, else "").

    CSV/TSV (header line; ``line`` is the physical line, blank lines are records with no SMILES),
    .smi (SMILES [id] per line), SDF (``line`` is the 1-based record index, id the title line or
    the property ``id_col``); gzip allowed.
    """
    from fedmol.datasets.readers import sniff_format

    if not path.exists():
        raise InputError(f"input file {path} not found")
    if path.is_dir():
        raise InputError(f"{path} is a folder: pass a CSV, TSV, SDF or .smi file")
    fmt = sniff_format(path)
    if fmt == "smi":
        yield from _read_smi(path, chunk_size)
    elif fmt == "sdf":
        yield from _read_sdf(path, id_col, chunk_size)
    else:
        yield from _read_delimited(path, "," if fmt == "csv" else "\t", smiles_col, id_col, chunk_size)


def _frame(rows: list[tuple[int, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=CHUNK_COLUMNS)


def _read_smi(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    with _open_text(path) as fh:
        rows: list[tuple[int, str, str, str]] = []
        for i, line in enumerate(fh, start=1):
            parts = line.strip().split(maxsplit=1)
            if i == 1 and parts and parts[0].lower() in ("smiles", "smi"):
                continue  # a header line
            rows.append((i, parts[1] if len(parts) > 1 else str(i), parts[0] if parts else "", ""))
            if len(rows) == chunk_size:
                yield _frame(rows)
                rows = []
        if rows:
            yield _frame(rows)


def _read_sdf(path: Path, id_col: str | None, chunk_size: int) -> Iterator[pd.DataFrame]:
    from rdkit import RDLogger

    from fedmol.datasets.readers import _sdf_record

    RDLogger.DisableLog("rdApp.*")
    rows: list[tuple[int, str, str, str]] = []
    n = 0

    def record(text: str) -> tuple[int, str, str, str]:
        rec = _sdf_record(text)
        ident = str(rec.get(id_col, "")) if id_col else str(rec.get("_Name", ""))
        return (n, ident or str(n), str(rec["smiles"]), str(rec["pre_reject"]))

    with _open_text(path) as fh:
        block: list[str] = []
        for raw in fh:
            if raw.startswith("$$$$"):
                n += 1
                rows.append(record("".join(block)))
                block = []
                if len(rows) == chunk_size:
                    yield _frame(rows)
                    rows = []
            else:
                block.append(raw)
        if "".join(block).strip():
            n += 1
            rows.append(record("".join(block)))
    if rows:
        yield _frame(rows)


def _read_delimited(path: Path, sep: str, smiles_col: str, id_col: str | None,
                    chunk_size: int) -> Iterator[pd.DataFrame]:
    try:
        header = list(pd.read_csv(path, sep=sep, nrows=0, dtype=str).columns)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path} is empty") from exc
    cols = {c.lower(): c for c in header}
    if smiles_col.lower() not in cols:
        raise InputError(f"{path}: no column {smiles_col!r}; columns are {header} (choose one with --smiles-col)")
    if id_col and id_col.lower() not in cols:
        raise InputError(f"{path}: no id column {id_col!r}; columns are {header}")
    # Only the SMILES and id columns are parsed (a library's other columns can be many). Blank
    # lines are kept (as empty records) so that ``line`` stays the physical line number.
    wanted = [cols[smiles_col.lower()], *([cols[id_col.lower()]] if id_col else [])]
    reader = pd.read_csv(path, sep=sep, chunksize=chunk_size, dtype=str, keep_default_na=False,
                         skip_blank_lines=False, usecols=wanted)
    first_line = 2
    for chunk in reader:
        lines = list(range(first_line, first_line + len(chunk)))
        first_line += len(chunk)
        ids = chunk[cols[id_col.lower()]].fillna("").tolist() if id_col else [str(x) for x in lines]
        yield pd.DataFrame({"line": lines, "id": ids, "smiles": chunk[cols[smiles_col.lower()]].fillna("").tolist(),
                            "pre_reject": ""})


# -- scoring chunks, in this process or in a pool ---------------------------------------------
_WORKER_SCORER: Any = None


def _init_worker(scorer: Any) -> None:
    import torch

    global _WORKER_SCORER
    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism
    _WORKER_SCORER = scorer


def score_chunk(scorer: Any, chunk: pd.DataFrame) -> pd.DataFrame:
    """The scorer's frame for one chunk with line and id first; pre-rejected rows keep their reason."""
    smiles = chunk["smiles"].tolist()
    pre = chunk["pre_reject"].to_numpy()
    known = pre != ""  # rows already rejected while reading: not parsed, their reason kept
    for i in known.nonzero()[0]:
        smiles[i] = ""
    res = scorer.score(smiles)
    if known.any():
        res.loc[known, "error"] = pre[known]
        res.loc[known, "smiles"] = chunk["smiles"].to_numpy()[known]
    res.insert(0, "id", chunk["id"].to_numpy())
    res.insert(0, "line", chunk["line"].to_numpy())
    return res


def _score_in_worker(chunk: pd.DataFrame) -> pd.DataFrame:
    return score_chunk(_WORKER_SCORER, chunk)


def scored_chunks(scorer: Any, chunks: Iterator[pd.DataFrame], workers: int) -> Iterator[pd.DataFrame]:
    """Scored chunks in input order; with workers > 1 over a process pool, a bounded number in flight."""
    if workers <= 1:
        import torch

        # One core per process as in the pool: the model's batches are small, and a second
        # thread mostly waits (measured: 2.3x less time in the model on a busy 2-core machine).
        torch.set_num_threads(1)
        for chunk in chunks:
            yield score_chunk(scorer, chunk)
        return
    import multiprocessing

    # spawn, not fork: torch's OpenMP pool (used by this process) is not fork-safe.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(scorer,)) as pool:
        pending: deque[Future[pd.DataFrame]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_score_in_worker, chunk))
            if len(pending) >= 2 * workers:  # memory: at most 2 chunks per worker in flight
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def score(
    input: Annotated[Path, typer.Argument(help="CSV/TSV with a SMILES column, .smi or SDF; gzip allowed.")],
    model: Annotated[str, typer.Option(help="A model folder or models:/NAME/VERSION from the registry.")],
    out: Annotated[Path, typer.Option(help="Predictions: .csv or .parquet.")],
    key_file: Annotated[Path | None, typer.Option(help="Consortium key file (default: $FEDMOL_KEY_FILE).")] = None,
    site_store: Annotated[Path | None, typer.Option(
        help="Your site store: score with the shared trunk plus your private heads too, calibrated "
             "(conformal) on the store's validation fold. Nothing leaves the site.")] = None,
    smiles_col: Annotated[str, typer.Option(help="Name of the SMILES column (CSV/TSV).")] = "smiles",
    id_col: Annotated[str | None, typer.Option(
        help="Column (CSV/TSV) or SDF property holding compound ids (default: line number; SDF title).")] = None,
    rejects: Annotated[Path | None, typer.Option(
        help="Rows that could not be scored (default: OUT.rejects.csv).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for models:/ URIs.")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Molecules per chunk (memory stays flat).")] = 2000,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes over chunks, order kept (0: all cores).")] = 1,
    mc_samples: Annotated[int, typer.Option(min=0, help="MC-dropout passes for the uncertainty (0: none).")] = 20,
    confidence: Annotated[float, typer.Option(help="Confidence of the conformal regression intervals.")] = 0.8,
    canonical_smiles: Annotated[bool, typer.Option(
        "--canonical-smiles/--no-canonical-smiles",
        help="Write each molecule's canonical SMILES (standardised as the model's inputs). Off: the "
             "column is left out and scoring takes about a quarter less time.")] = True,
    standardize: Annotated[str, typer.Option(
        help="'model': standardise as the model's sites did (faithful, slow: tautomer canonicalisation); "
             "'off': skip it, only for inputs already standardised by fedmol (e.g. canonical SMILES it wrote).")
    ] = "model",
) -> None:
    """Score candidate molecules: per task a prediction, its MC-dropout std and, when calibrated,
    the conformal p-values (classification) or interval (regression).

    Output columns: line, id, smiles, canonical_smiles (unless --no-canonical-smiles), then per
    task T: T (P(active), or the value in the task's units), T_std, T_p0/T_p1 or T_lower/T_upper.
    The shared model has no calibration data; with --site-store the site's full model (shared +
    private heads) is calibrated on its validation fold. Rows that cannot be scored (empty or
    unparsable SMILES, unreadable SDF records, too large) go to the rejects file with their line
    and reason: scored + rejected = read.

    Example: fedmol score candidates.sdf --model models:/fedmol-shared/3 --key-file consortium.key --out preds.parquet
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from fedmol.scoring.scorer import Scorer, resolve_key, resolve_model_dir

    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"--out {out}: use a .csv or .parquet file name")
    if standardize not in ("model", "off"):
        raise InputError(f"--standardize {standardize!r}: use 'model' or 'off'")
    workers = workers or (os.cpu_count() or 1)
    scorer = Scorer(resolve_model_dir(model, tracking_uri), resolve_key(key_file), mc_samples=mc_samples,
                    site_store=site_store, confidence=confidence,
                    standardize=None if standardize == "model" else False, canonical_smiles=canonical_smiles)
    err = Console(stderr=True)
    err.print(scorer.calibration_note, highlight=False)
    rejects = rejects or out.with_name(out.name + ".rejects.csv")
    n_read = n_scored = n_rejected = 0
    leading = [c for c in TEXT_COLUMNS if canonical_smiles or c != "canonical_smiles"]
    writer = _Writer(out, [*leading, *scorer.columns])
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                      transient=True) as progress:
            task = progress.add_task("scoring", total=None)
            for res in scored_chunks(scorer, read_chunks(input, smiles_col, id_col, chunk_size), workers):
                bad = res["error"] != ""
                bad_rows = res.loc[bad, ["line", "id", "smiles", "error"]].rename(columns={"error": "reason"})
                bad_rows.to_csv(rejects, mode="a" if n_read else "w", header=not n_read, index=False)
                writer.write(res.loc[~bad, writer.columns])
                n_read += len(res)
                n_scored += int((~bad).sum())
                n_rejected += int(bad.sum())
                elapsed = progress.tasks[0].elapsed or 1e-9
                progress.update(task, advance=len(res), description=(
                    f"scored {n_read:,} molecules ({n_read / elapsed:,.0f}/s)"))
    finally:
        writer.close()
    if n_read == 0:
        raise InputError(f"{input} holds no molecules")
    assert n_scored + n_rejected == n_read
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    err.print(f"read {n_read:,}, scored {n_scored:,} -> {out}, rejected {n_rejected:,} -> {rejects} "
              f"in {seconds:.1f} s ({n_read / seconds:,.0f} molecules/s; {cpu:.1f} CPU s with workers)",
              highlight=False, soft_wrap=True)


TEXT_COLUMNS = ("line", "id", "smiles", "canonical_smiles")  # the output's leading columns


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker pool, once shut down)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class _Writer:
    """Appends chunks to a CSV or a Parquet file, so memory does not grow with the input."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self._parquet: Any = None
        self._started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                # No dictionary encoding: SMILES, ids and predictions are (nearly) all distinct, so
                # it only costs time (~1 us per row) and makes the file larger.
                self._parquet = pq.ParquetWriter(self.path, table.schema, use_dictionary=False)
            self._parquet.write_table(table.cast(self._parquet.schema))
        else:
            frame.to_csv(self.path, mode="a" if self._started else "w", header=not self._started, index=False)
        self._started = True

    def close(self) -> None:
        if not self._started:  # no scored row: still an output file, with the header
            frame = pd.DataFrame({c: pd.Series(dtype="object" if c in TEXT_COLUMNS else "float64")
                                  for c in self.columns})
            self.write(frame)
        if self._parquet is not None:
            self._parquet.close()
