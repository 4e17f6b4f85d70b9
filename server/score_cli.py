"""`fedmol score`: a file of candidate molecules in, predictions with uncertainty out (streamed)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from fedmol.errors import InputError


def resolve_model_dir(model: str, tracking_uri: str | None) -> Path:
    """A model folder (spec.json, weights.pt, meta.json) from a path or a ``models:/NAME/VERSION`` URI."""
    if model.startswith(("models:/", "runs:/")):
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        local = Path(mlflow.artifacts.download_artifacts(model))
        found = [p.parent for p in local.rglob("spec.json")]
        if not found:
            raise InputError(f"{model} is not a fedmol model (no spec.json in its artifacts)")
        return found[0]
    path = Path(model)
    if not (path / "spec.json").exists():
        raise InputError(f"{path} is not a fedmol model folder (expected spec.json and weights.pt)")
    return path


def read_chunks(path: Path, smiles_col: str, id_col: str | None, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Chunks with columns line, id, smiles. CSV/TSV (header) or .smi (SMILES [id]), gzip allowed."""
    name = path.name.lower().removesuffix(".gz")
    if not path.exists():
        raise InputError(f"input file {path} not found")
    if name.endswith(".smi"):
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt") as fh:  # type: ignore[operator]
            rows: list[tuple[int, str, str]] = []
            for i, line in enumerate(fh, start=1):
                parts = line.strip().split()
                if not parts:
                    rows.append((i, "", ""))
                else:
                    rows.append((i, parts[1] if len(parts) > 1 else str(i), parts[0]))
                if len(rows) == chunk_size:
                    yield pd.DataFrame(rows, columns=["line", "id", "smiles"])
                    rows = []
            if rows:
                yield pd.DataFrame(rows, columns=["line", "id", "smiles"])
        return
    sep = "\t" if name.endswith((".tsv", ".tab")) else ","
    try:
        reader = pd.read_csv(path, sep=sep, chunksize=chunk_size, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path} is empty") from exc
    first_line = 2
    for chunk in reader:
        cols = {c.lower(): c for c in chunk.columns}
        if smiles_col.lower() not in cols:
            raise InputError(f"{path}: no column {smiles_col!r}; columns are {list(chunk.columns)} "
                             "(choose one with --smiles-col)")
        sc = cols[smiles_col.lower()]
        ids = chunk[cols[id_col.lower()]] if id_col and id_col.lower() in cols else None
        lines = range(first_line, first_line + len(chunk))
        first_line += len(chunk)
        yield pd.DataFrame({"line": list(lines), "id": ids.tolist() if ids is not None else [str(x) for x in lines],
                            "smiles": chunk[sc].tolist()})


def score(
    input: Annotated[Path, typer.Argument(help="CSV/TSV with a SMILES column, or .smi; gzip allowed.")],
    model: Annotated[str, typer.Option(help="A model folder or models:/NAME/VERSION from the registry.")],
    out: Annotated[Path, typer.Option(help="Predictions: .csv or .parquet.")],
    key_file: Annotated[Path | None, typer.Option(help="Consortium key file (default: $FEDMOL_KEY_FILE).")] = None,
    smiles_col: Annotated[str, typer.Option(help="Name of the SMILES column.")] = "smiles",
    id_col: Annotated[str | None, typer.Option(help="Column holding compound ids (default: the line number).")] = None,
    rejects: Annotated[Path | None, typer.Option(help="Rows that could not be scored (default: OUT.rejects.csv).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for models:/ URIs.")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Molecules per chunk (memory stays flat).")] = 5000,
    mc_samples: Annotated[int, typer.Option(min=0, help="MC-dropout passes for the uncertainty (0: none).")] = 20,
) -> None:
    """Score candidate molecules with a shared model: per task a prediction and its MC-dropout std.

    Rows that cannot be scored (empty or unparsable SMILES, too large) go to the rejects file with
    their line number and reason; every other row is scored: scored + rejected = read.

    Example: fedmol score candidates.csv --model models:/fedmol-shared/3 --key-file consortium.key --out preds.csv
    """
    from rich.console import Console
    from rich.progress import Progress

    from server.scoring import Scorer, resolve_key

    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"--out {out}: use a .csv or .parquet file name")
    scorer = Scorer(resolve_model_dir(model, tracking_uri), resolve_key(key_file), mc_samples=mc_samples)
    rejects = rejects or out.with_name(out.name + ".rejects.csv")
    n_read = n_scored = n_rejected = 0
    writer = _Writer(out)
    try:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("scoring", total=None)
            for chunk in read_chunks(input, smiles_col, id_col, chunk_size):
                res = scorer.score(chunk["smiles"].tolist())
                res.insert(0, "id", chunk["id"].to_numpy())
                res.insert(0, "line", chunk["line"].to_numpy())
                bad = res["error"] != ""
                bad_rows = res.loc[bad, ["line", "id", "smiles", "error"]].rename(columns={"error": "reason"})
                bad_rows.to_csv(rejects, mode="a" if n_read else "w", header=not n_read, index=False)
                writer.write(res.loc[~bad].drop(columns=["error"]))
                n_read += len(chunk)
                n_scored += int((~bad).sum())
                n_rejected += int(bad.sum())
                progress.update(task, advance=len(chunk), description=f"scored {n_read:,} molecules")
    finally:
        writer.close()
    if n_read == 0:
        raise InputError(f"{input} holds no molecules")
    assert n_scored + n_rejected == n_read
    Console(stderr=True).print(f"read {n_read:,}, scored {n_scored:,} -> {out}, rejected {n_rejected:,} -> {rejects}")


class _Writer:
    """Appends chunks to a CSV or a Parquet file, so memory does not grow with the input."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._parquet = None
        self._started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        else:
            frame.to_csv(self.path, mode="a" if self._started else "w", header=not self._started, index=False)
        self._started = True

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
