"""The chemist's commands: `fedmol score` (a file of candidate molecules in, predictions with
uncertainty out, streamed by fedmol.scoring.files) and `fedmol serve` (fedmol.scoring.service)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from fedmol.errors import InputError


def register(app: typer.Typer) -> None:
    """The chemist's commands: `fedmol score` (a file) and `fedmol serve` (HTTP API and web page)."""
    from fedmol.scoring.service import serve_command

    app.command("score")(score)
    app.command("serve")(serve_command)


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
        help="Column (CSV/TSV) or SDF property holding compound ids (default: the .smi name, the SDF title; "
             "an empty id becomes the line number).")] = None,
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
    unparsable SMILES, unreadable SDF records, too large, a line that is not valid UTF-8, a CSV row
    with more fields than the header) go to the rejects file with their line and reason: scored +
    rejected = read. The file is read as `fedmol prepare` reads it: line is the physical line
    (the SDF record number), and blank lines and .smi comment lines (#) are not molecules.

    Example: fedmol score candidates.sdf --model models:/fedmol-shared/3 --key-file consortium.key --out preds.parquet
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from fedmol.datasets.readers import TableSpec
    from fedmol.scoring.files import FileCounts, score_file
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
    spec = TableSpec(smiles_col=smiles_col, id_col=id_col)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("scoring", total=None)

        def on_chunk(counts: FileCounts) -> None:
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(task, completed=counts.read,
                            description=f"scored {counts.read:,} molecules ({counts.read / elapsed:,.0f}/s)")

        counts = score_file(scorer, input, out, rejects, spec, chunk_size=chunk_size, workers=workers,
                            canonical_smiles=canonical_smiles, on_chunk=on_chunk)
    if counts.read == 0:
        raise InputError(f"{input} holds no molecules")
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    err.print(f"read {counts.read:,}, scored {counts.scored:,} -> {out}, rejected {counts.rejected:,} -> {rejects} "
              f"in {seconds:.1f} s ({counts.read / seconds:,.0f} molecules/s; {cpu:.1f} CPU s with workers)",
              highlight=False, soft_wrap=True)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker pool, once shut down)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
