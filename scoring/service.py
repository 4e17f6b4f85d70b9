"""`fedmol serve`: the scoring model behind an HTTP API (FastAPI under uvicorn) and a web page.

Endpoints:

* ``POST /v1/score``: a JSON list of SMILES (or ``{"smiles": [...], "ids": [...]}``), a CSV body
  (``Content-Type: text/csv``) or a CSV file upload (``multipart/form-data``, field ``file``) →
  one record per molecule: index, id, smiles, canonical_smiles, error, and per task the columns of
  `fedmol.scoring.scorer` (prediction, MC-dropout std, conformal p-values or interval when calibrated).
  ``?depict=true`` adds each molecule's 2D depiction (RDKit SVG); ``?format=csv`` answers CSV.
* ``GET /v1/model``: name, version, tasks, calibration, training summary. ``GET /healthz``.
* ``GET /``: the web page (``scoring/web/``); ``GET /openapi.json``: the OpenAPI schema (no ``/docs``:
  FastAPI's docs pages load Swagger UI from a CDN, and this origin keeps the page's token).

Access: scoring and the model description need a bearer token (``Authorization: Bearer T``);
tokens come from a file (one per line, ``#`` comments) or an environment variable (comma-separated).
Every request body is limited in bytes (413), every scoring request in molecules (413), and every
token in molecules per time window (429 with Retry-After): a shared model answers membership and
reconstruction queries, so unlimited querying could leak what it was trained on. Scoring runs in
worker processes (`fedmol.scoring.workers`) with a time limit per request (503 beyond), so one
request cannot hold up the server: RDKit holds the GIL for each of its calls. The parts live apart
and are tested alone: tokens, limits and headers in `fedmol.scoring.access`, request bodies in
`fedmol.scoring.bodies`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response

from fedmol.errors import InputError
from fedmol.scoring.access import (
    MAX_HEADER_BYTES,
    BodyLimitMiddleware,
    RateLimiter,
    SecurityHeadersMiddleware,
    TokenAuth,
    charge_quota,
)
from fedmol.scoring.bodies import MoleculeReader, Molecules, encodable
from fedmol.scoring.tokens import TOKENS_ENV

log = logging.getLogger("fedmol.scoring")

__all__ = ["ServiceSettings", "create_app", "model_name_version", "score_answer", "score_frame"]

WEB_DIR = Path(__file__).with_name("web")
MAX_DEPICTIONS = 2000  # depictions per answer (for the web page) ...
MAX_DEPICTION_BYTES = 2_000_000  # ... and their SVG text at most: a 4-byte "C" draws as ~2 kB


@dataclass(frozen=True)
class ServiceSettings:
    """Limits of the service. rate_molecules per rate_window seconds and token (a token bucket)."""

    tokens: frozenset[str]
    model_name: str = ""
    model_version: str = ""
    max_molecules: int = 10_000
    max_request_bytes: int = 10_000_000
    rate_molecules: int = 100_000
    rate_window: float = 3600.0
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.tokens:
            raise InputError(f"no access tokens: give --tokens-file FILE or set ${TOKENS_ENV} (comma-separated)")
        if self.max_molecules < 1 or self.max_request_bytes < 1:
            raise InputError("--max-molecules and --max-request-bytes must be positive")
        if self.rate_molecules < self.max_molecules:
            raise InputError(f"--rate-limit ({self.rate_molecules}) must be at least --max-molecules "
                             f"({self.max_molecules}), or a full request could never pass")


def depict_svg(smiles: str, width: int = 220, height: int = 160) -> str:
    """A 2D depiction of a (canonical) SMILES as an SVG document ("" when it cannot be drawn)."""
    from rdkit import Chem
    from rdkit.Chem.Draw import rdMolDraw2D

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return ""
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    drawer.drawOptions().clearBackground = False
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    svg = drawer.GetDrawingText()
    return svg[svg.index("<svg"):] if "<svg" in svg else svg


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (NaN -> null)."""
    cols = list(frame.columns)
    out = []
    for row in frame.itertuples(index=False, name=None):
        out.append({c: (None if isinstance(v, float) and not math.isfinite(v) else
                        v.item() if isinstance(v, np.generic) else v) for c, v in zip(cols, row, strict=True)})
    return out


def bearer_token(request: Request) -> str:
    """Dependency: the request's checked token, by the app's `TokenAuth` (``app.state.auth``)."""
    return request.app.state.auth(request)


async def request_molecules(request: Request) -> Molecules:
    """Dependency: the request's molecules, by the app's `MoleculeReader` (``app.state.read_molecules``)."""
    return await request.app.state.read_molecules(request)


BearerToken = Annotated[str, Depends(bearer_token)]
RequestMolecules = Annotated[Molecules, Depends(request_molecules)]


# -- scoring -------------------------------------------------------------------------------------

def score_frame(scorer: Any, molecules: Molecules, depict: bool) -> pd.DataFrame:
    """index, id, then the scorer's columns (and ``svg`` with ``depict``), one row per molecule."""
    smiles, errors = molecules.smiles, molecules.errors
    if errors is None:
        frame = scorer.score(smiles)
    else:  # rows rejected while reading are not scored, and keep their reason and their text
        frame = scorer.score([s if not e else "" for s, e in zip(smiles, errors, strict=True)])
        frame["error"] = [e or f for e, f in zip(errors, frame["error"], strict=True)]
        frame["smiles"] = [encodable(s) for s in smiles]
    frame.insert(0, "id", molecules.ids if molecules.ids is not None else [str(i) for i in range(len(smiles))])
    frame.insert(0, "index", np.arange(len(smiles)))
    if depict:
        frame["svg"] = depictions(frame["canonical_smiles"])
    return frame


def depictions(smiles: Any, max_count: int = MAX_DEPICTIONS, max_bytes: int = MAX_DEPICTION_BYTES) -> list[str]:
    """SVG depictions of ``smiles`` in order until ``max_count`` are drawn or the next would take
    their text beyond ``max_bytes``; "" for the rest (and for what cannot be drawn)."""
    out: list[str] = []
    drawn = total = 0
    for smi in smiles:
        svg = depict_svg(smi) if drawn < max_count and total < max_bytes else ""
        if total + len(svg) > max_bytes:
            svg, total = "", max_bytes  # the budget is spent: no more depictions
        drawn += bool(svg)
        total += len(svg)
        out.append(svg)
    return out


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """``text`` with a leading ' when a spreadsheet would take it for a formula (=, +, -, @, tab, CR)."""
    return "'" + text if text.startswith(CSV_FORMULA_START) else text


def score_answer(scorer: Any, molecules: Molecules, depict: bool, fmt: str,
                 model: dict[str, str]) -> tuple[bytes, str, int]:
    """A scoring request's answer, encoded: (body, media type, molecules scored). Runs in a worker
    process (`fedmol.scoring.workers`), so that building a large answer does not hold up the server."""
    frame = score_frame(scorer, molecules, depict)
    n_rejected = int((frame["error"] != "").sum())
    n_scored = len(frame) - n_rejected
    if fmt == "csv":
        out = frame.drop(columns=["svg"], errors="ignore")
        for col in ("id", "smiles", "canonical_smiles", "error"):  # the text a caller controls
            out[col] = [csv_safe(v) for v in out[col]]
        return out.to_csv(index=False).encode("utf-8"), "text/csv", n_scored
    depicted = {"n_depicted": int((frame["svg"] != "").sum())} if "svg" in frame.columns else {}
    content = {
        "model": model,
        "n_read": len(frame), "n_scored": n_scored, "n_rejected": n_rejected, **depicted,
        "tasks": [t.__dict__ for t in scorer.tasks], "columns": scorer.columns,
        "calibration": scorer.calibration_note,
        "results": _records(frame),
    }
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return body, "application/json", n_scored


SCORE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"oneOf": [
        {"type": "array", "items": {"type": "string"}, "example": ["CCO", "c1ccccc1O"]},
        {"type": "object", "properties": {"smiles": {"type": "array", "items": {"type": "string"}},
                                          "ids": {"type": "array", "items": {"type": "string"}}},
         "required": ["smiles"]}]}},
    "text/csv": {"schema": {"type": "string"}, "example": "id,smiles\nm1,CCO\n"},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}}}}}}


def create_app(scorer: Any, settings: ServiceSettings, workers: Any = None) -> Any:
    """The FastAPI app around a loaded `fedmol.scoring.scorer.Scorer`.

    workers: where `score_answer` runs, a `fedmol.scoring.workers.WorkerPool` (``fedmol serve``:
    processes with a time limit per request) or, by default, `InProcess` (a thread of this process).
    """
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    from fedmol.scoring.workers import InProcess, WorkerDied, WorkerError, WorkersBusy, WorkerTimeout

    workers = workers if workers is not None else InProcess(scorer, score_answer)
    model = {"name": settings.model_name, "version": settings.model_version}

    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, and this origin keeps the
    # web page's token in sessionStorage; fastapi ships no local copy. The schema is at /openapi.json.
    app = FastAPI(
        title="fedmol scoring service",
        version="1",
        description=("Score molecules with a federated fedmol model: per task a prediction, its MC-dropout "
                     "standard deviation and, when calibrated, conformal p-values or intervals. "
                     "Send `Authorization: Bearer TOKEN`."),
        docs_url=None, redoc_url=None,
    )
    limiter = app.state.limiter = RateLimiter(settings.rate_molecules, settings.rate_window)
    app.state.auth = TokenAuth(settings.tokens)
    app.state.read_molecules = MoleculeReader(settings.max_molecules)

    @app.get("/healthz", tags=["service"], summary="Liveness: the model is loaded")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "tasks": len(scorer.tasks)}

    @app.get("/v1/model", tags=["scoring"], summary="The model: name, version, tasks, training summary")
    async def model_info(token: BearerToken) -> dict[str, Any]:
        return {"name": settings.model_name, "version": settings.model_version, **scorer.describe(),
                "limits": {"max_molecules": settings.max_molecules, "max_request_bytes": settings.max_request_bytes,
                           "rate_molecules": settings.rate_molecules, "rate_window_s": settings.rate_window}}

    @app.post("/v1/score", tags=["scoring"], openapi_extra=SCORE_BODY, response_model=None,
              summary="Score molecules: predictions, uncertainty, conformal p-values/intervals")
    async def score(token: BearerToken, molecules: RequestMolecules, depict: bool = False,
                    format: str = "json") -> Response:  # noqa: A002
        if format not in ("json", "csv"):
            raise HTTPException(422, "format must be json or csv")
        # The whole request is taken from the token's bucket before scoring (so concurrent requests cannot
        # overdraw it), and what was not scored (rejects, or all of a request that failed) is given back.
        charge_quota(limiter, token, len(molecules))
        scored = 0
        try:
            body, media_type, scored = await run_in_threadpool(workers.call, molecules, depict, format, model)
        except WorkerTimeout as exc:
            raise HTTPException(503, f"{exc}, the time limit per request: split the molecules over smaller "
                                     "requests") from None
        except WorkersBusy as exc:
            raise HTTPException(503, f"{exc}; try again later", headers={"Retry-After": "10"}) from None
        except (WorkerDied, WorkerError) as exc:
            log.error("scoring failed: %s", exc)
            raise HTTPException(500, f"scoring failed ({exc})") from None
        finally:
            limiter.refund(token, len(molecules) - scored)
        return Response(body, media_type=media_type)

    @app.get("/", include_in_schema=False, response_model=None)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.state.scorer = scorer
    app.state.settings = settings
    app.state.workers = workers
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes, timeout=settings.body_timeout,
                       header_limit=MAX_HEADER_BYTES)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def model_name_version(model: str, model_dir: Path) -> tuple[str, str]:
    """(name, version) of ``models:/NAME/VERSION``, or (folder name, federation id) of a folder."""
    if model.startswith("models:/"):
        name, _, version = model.removeprefix("models:/").partition("/")
        return name, version
    meta = json.loads((model_dir / "meta.json").read_text()) if (model_dir / "meta.json").exists() else {}
    return model_dir.name, str(meta.get("federation_id", ""))
