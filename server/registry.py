"""Publishing the shared model: a model folder, an MLflow pyfunc, a registry version.

What a registered model contains (see README, "What a registered model contains"):

* ``spec.json`` + ``weights.pt``: the trunk and consortium heads (no private head ever reaches
  the server, so none is in the model);
* ``meta.json``: rounds, federation id, the consortium's reference hash, and the sites'
  standardisation/featurisation settings (radius, bits, counts...), never the key;
* the pyfunc wrapper `fedmol.scoring.pyfunc.FedmolPyfunc`, which turns SMILES into predictions.

The consortium key is **not** in the model: the features are in the key-permuted space, so the
model scores molecules only for someone who holds the key (a consortium member), given at load
time as ``model_config={"key_file": ...}`` or the ``FEDMOL_KEY_FILE`` environment variable.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from fedmol.models.io import save_model
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import ModelSpec
from fedmol.server.tracking import MlflowTracker

log = logging.getLogger("fedmol.server")

# The registered model's code entry (MLflow "models from code"), named here and never imported: the
# server does not depend on the scoring package; every registered model loads this module by name.
PYFUNC_ENTRY = "fedmol.scoring.pyfunc_entry"


def pyfunc_entry_file() -> Path:
    """The file of `PYFUNC_ENTRY` in the installed fedmol (MLflow copies it into the model)."""
    spec = importlib.util.find_spec(PYFUNC_ENTRY)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{PYFUNC_ENTRY} is missing from the installed fedmol: reinstall fedmol")
    return Path(spec.origin)


def save_shared_model(model_dir: Path, spec: ModelSpec, arrays: dict[str, np.ndarray], *,
                      meta: dict[str, Any]) -> Path:
    """Write the shared model (trunk + consortium heads) as spec + state_dict + meta."""
    model = MultiTaskNet(spec)
    model.load_shared_state_dict(arrays)
    save_model(model_dir, model, meta=meta)
    return model_dir


def pip_requirements() -> list[str]:
    """Pinned requirements of the scoring environment, taken from this one."""
    reqs = []
    for dist in ("torch", "rdkit", "numpy", "scipy", "pandas", "scikit-learn", "mlflow"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs


def register_model(tracker: MlflowTracker, model_dir: Path, name: str) -> str:
    """Log ``model_dir`` as a pyfunc in the tracker's run and register it; return models:/NAME/VERSION."""
    mlflow.set_tracking_uri(tracker.uri)
    signature = ModelSignature(inputs=Schema([ColSpec("string", "smiles")]))
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pyfunc.log_model(
            name="shared_model",
            python_model=str(pyfunc_entry_file()),  # models from code: no pickle
            artifacts={"model": str(model_dir)},
            pip_requirements=pip_requirements(),
            signature=signature,
            # Declares the keys a loader may set; the key file is never stored with the model.
            model_config={"key_file": "", "mc_samples": 20},
            registered_model_name=name,
        )
    version = info.registered_model_version
    uri = f"models:/{name}/{version}"
    tracker.set_tag("fedmol.registered-model", uri)
    meta = json.loads((model_dir / "meta.json").read_text()) if (model_dir / "meta.json").exists() else {}
    client = tracker.client
    client.set_model_version_tag(name, str(version), "federation_id", str(meta.get("federation_id", "")))
    client.set_model_version_tag(name, str(version), "reference_hash", str(meta.get("reference_hash", "")))
    log.info("registered %s", uri)
    return uri
