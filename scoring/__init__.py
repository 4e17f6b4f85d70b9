"""Scoring for chemists: a registered (or a site's full) model applied to candidate molecules.

Modules (import them directly; nothing is imported here, so ``fedmol --help`` stays fast):

- `fedmol.scoring.scorer`: `Scorer` (standardise and featurise as the sites did, predict with
  MC-dropout std and, with a site store, conformal p-values/intervals), `predict_units`
- `fedmol.scoring.cli`: ``fedmol score`` and the registration of ``fedmol serve``
- `fedmol.scoring.files`: a file scored in streamed chunks (read by ``fedmol.datasets.readers``, as
  ``fedmol prepare`` reads it) over worker processes, predictions and rejects appended per chunk
- `fedmol.scoring.service`: ``fedmol serve``, the HTTP API (FastAPI under uvicorn) and the web page in ``web/``
- `fedmol.scoring.access`: the service's token auth (throttled), rate limit, request limits, security headers
- `fedmol.scoring.bodies`: the molecules of a request (JSON, CSV body, CSV upload), strict, with per-row rejects
- `fedmol.scoring.workers`: `WorkerPool`, scoring calls in worker processes with a time limit each
- `fedmol.scoring.pyfunc`: the MLflow pyfunc of a shared model
- `fedmol.scoring.pyfunc_entry`: the "models from code" file registered models load (its path is fixed)
"""
