"""The chemist's commands: `fedmol score` (a file of candidate molecules in, predictions with
uncertainty out, streamed by fedmol.scoring.files) and `fedmol serve` (fedmol.scoring.service)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from fedmol.errors import InputError
from fedmol.scoring.tokens import TOKENS_ENV


def register(app: typer.Typer) -> None:
    """The chemist's commands: `fedmol score` (a file) and `fedmol serve` (HTTP API and web page)."""
    app.command("score")(score)
    app.command("serve")(serve)


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


def serve(
    model: Annotated[str, typer.Option(help="A model folder or models:/NAME/VERSION from the registry.")],
    key_file: Annotated[Path | None, typer.Option(help="Consortium key file (default: $FEDMOL_KEY_FILE).")] = None,
    tokens_file: Annotated[Path | None, typer.Option(
        help=f"Access tokens, one per line (also/or ${TOKENS_ENV}, comma-separated).")] = None,
    site_store: Annotated[Path | None, typer.Option(
        help="Serve the site's full model (shared + private heads, calibrated on its validation fold).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for models:/ URIs.")] = None,
    max_molecules: Annotated[int, typer.Option(min=1, help="Molecules per request at most (413 beyond).")] = 10_000,
    max_request_bytes: Annotated[int, typer.Option(min=1, help="Request body size at most (413 beyond).")] = 10_000_000,
    rate_limit: Annotated[int, typer.Option(
        min=1, help="Molecules per token per --rate-window (429 beyond).")] = 100_000,
    rate_window: Annotated[float, typer.Option(min=1.0, help="Rate-limit window in seconds.")] = 3600.0,
    body_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds a request body may take to arrive (408 beyond).")] = 30.0,
    workers: Annotated[int, typer.Option(
        min=1, help="Scoring processes (one request each at a time); the server itself stays responsive.")] = 1,
    request_timeout: Annotated[float, typer.Option(
        min=1.0, help="Seconds a request may take to score; its worker is then stopped (503).")] = 300.0,
    mc_samples: Annotated[int, typer.Option(min=0, help="MC-dropout passes for the uncertainty (0: none).")] = 20,
    confidence: Annotated[float, typer.Option(help="Confidence of the conformal regression intervals.")] = 0.8,
    standardize: Annotated[str, typer.Option(
        help="'model': standardise as the model's sites did; 'off': only for callers who send "
             "structures already standardised by fedmol.")] = "model",
) -> None:
    """Serve the model over HTTP: POST /v1/score, GET /v1/model, GET /healthz, the web page at /,
    the OpenAPI schema at /openapi.json. Scoring needs a bearer token; requests are limited in bytes and
    molecules, and every token in molecules per window (unlimited queries could leak training data).

    Example: FEDMOL_SERVE_TOKENS=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \
    fedmol serve --model models:/fedmol-shared/3 --key-file consortium.key --port 8000
    """
    import uvicorn

    from fedmol.scoring.access import MAX_HEADER_BYTES
    from fedmol.scoring.scorer import Scorer, resolve_key, resolve_model_dir
    from fedmol.scoring.service import ServiceSettings, create_app, model_name_version, score_answer
    from fedmol.scoring.tokens import load_tokens

    if standardize not in ("model", "off"):
        raise InputError(f"--standardize {standardize!r}: use 'model' or 'off'")
    settings_tokens = load_tokens(tokens_file)
    model_dir = resolve_model_dir(model, tracking_uri)
    name, version = model_name_version(model, model_dir)
    settings = ServiceSettings(tokens=settings_tokens, model_name=name, model_version=version,
                               max_molecules=max_molecules, max_request_bytes=max_request_bytes,
                               rate_molecules=rate_limit, rate_window=rate_window, body_timeout=body_timeout)
    scorer = Scorer(model_dir, resolve_key(key_file), mc_samples=mc_samples, site_store=site_store,
                    confidence=confidence, standardize=None if standardize == "model" else False)
    from fedmol.scoring.workers import WorkerPool

    pool = WorkerPool(scorer, score_answer, workers=workers, timeout=request_timeout)
    try:
        # h11, not httptools: h11 bounds the request line and headers (MAX_HEADER_BYTES; 400 beyond).
        uvicorn.run(create_app(scorer, settings, pool), host=host, port=port, log_level="info", http="h11",
                    h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=10)
    finally:
        pool.close()
