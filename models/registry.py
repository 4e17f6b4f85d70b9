"""A model folder as an MLflow pyfunc and a registry version: the one implementation the server
(the consortium's shared model, `fedmol.server.registry`) and every site (its own full model, in its
own registry, `fedmol.client.site_registry`) use.

A model folder is `fedmol.models.io`'s: ``spec.json`` + ``weights.pt`` + ``meta.json`` (+
``calibration.json``). It is logged as an MLflow "model from code": the code entry is
`PYFUNC_ENTRY`, named here as a string and never imported (the models layer does not depend on
the scoring package), so nothing is pickled and any fedmol install loads it.

The consortium key is never in a model: the features are in the key-permuted space, so a model
scores molecules only for someone who holds the key, given at load time as
``model_config={"key_file": ...}`` or the ``FEDMOL_KEY_FILE`` environment variable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fedmol.models.io import save_model
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import ModelSpec

__all__ = ["PYFUNC_ENTRY", "PYFUNC_MODEL_CONFIG", "pyfunc_entry_file", "pip_requirements", "save_shared_model",
           "ensure_experiment", "register_model_folder", "tracking_uri_of"]

log = logging.getLogger("fedmol.models")

# The registered model's code entry (MLflow "models from code"): every registered fedmol model loads
# this module by name at load time.
PYFUNC_ENTRY = "fedmol.scoring.pyfunc_entry"
# The keys a loader may set (model_config=...); the key file is never stored with the model.
PYFUNC_MODEL_CONFIG: dict[str, Any] = {"key_file": "", "mc_samples": 20}


def pyfunc_entry_file() -> Path:
    """The file of `PYFUNC_ENTRY` in the installed fedmol (MLflow copies it into the model)."""
    spec = importlib.util.find_spec(PYFUNC_ENTRY)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{PYFUNC_ENTRY} is missing from the installed fedmol: reinstall fedmol")
    return Path(spec.origin)


def pip_requirements() -> list[str]:
    """Pinned requirements of the scoring environment, taken from this one."""
    reqs = []
    for dist in ("torch", "rdkit", "numpy", "scipy", "pandas", "scikit-learn", "mlflow"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs


def save_shared_model(model_dir: Path, spec: ModelSpec, arrays: Mapping[str, np.ndarray], *,
                      meta: dict[str, Any]) -> Path:
    """Write the shared model (trunk + consortium heads) as spec + state_dict + meta."""
    model = MultiTaskNet(spec)
    model.load_shared_state_dict(arrays)
    save_model(model_dir, model, meta=meta)
    return model_dir


def tracking_uri_of(uri: str) -> str:
    """``uri`` with the folder of a ``sqlite:///`` database created (MLflow does not create it)."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def ensure_experiment(tracking_uri: str, name: str, artifact_location: Path | None) -> str:
    """The id of experiment ``name`` in ``tracking_uri``, created (artifacts under
    ``artifact_location`` for a local store, not ``./mlruns`` of the working directory) if new."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri_of(tracking_uri))
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if artifact_location is not None and not tracking_uri.startswith(("http://", "https://")):
        location = artifact_location.as_uri()
    return str(client.create_experiment(name, artifact_location=location))


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model) reads a process-wide tracking URI: set it for the block and
    put back the one before, so a site and a server in one process never write to each other's store."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def register_model_folder(tracking_uri: str, run_id: str, model_dir: Path, name: str, *,
                          artifact_name: str = "model", tags: Mapping[str, str] | None = None) -> str:
    """Log ``model_dir`` as a fedmol pyfunc in run ``run_id`` of ``tracking_uri`` and register it
    as a new version of ``name`` in that store's registry; returns ``models:/NAME/VERSION``.

    The version is tagged with the model's ``federation_id`` and ``reference_hash`` (from its
    meta.json) and ``tags``."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string", "smiles")]))
    with _tracking_uri(tracking_uri_of(tracking_uri)), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=str(pyfunc_entry_file()),  # models from code: no pickle
            artifacts={"model": str(model_dir)},
            pip_requirements=pip_requirements(),
            signature=signature,
            model_config=dict(PYFUNC_MODEL_CONFIG),
            registered_model_name=name,
        )
    model_version = str(info.registered_model_version)
    meta_path = model_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    client = MlflowClient(tracking_uri=tracking_uri)
    all_tags = {"federation_id": str(meta.get("federation_id", "")),
                "reference_hash": str(meta.get("reference_hash", "")), **(tags or {})}
    for key, value in all_tags.items():
        client.set_model_version_tag(name, model_version, key, value)
    uri = f"models:/{name}/{model_version}"
    log.info("registered %s in %s", uri, tracking_uri)
    return uri
