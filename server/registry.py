"""Publishing the shared model: a model folder, an MLflow pyfunc, a registry version.

What a registered model contains (see README, "What a registered model contains"):

* ``spec.json`` + ``weights.pt``: the trunk and consortium heads (no private head ever reaches
  the server, so none is in the model; a federation whose tasks are all private registers a trunk
  without heads, which says so when loaded and points to each site's own model);
* ``meta.json``: rounds, federation id, the consortium's reference hash, and the sites'
  standardisation/featurisation settings (radius, bits, counts...), never the key;
* the pyfunc wrapper `fedmol.scoring.pyfunc.FedmolPyfunc`, which turns SMILES into predictions.

The folder and registry code is `fedmol.models.registry`, shared with the sites (each registers
its own full model in its own registry, `fedmol.client.site_registry`); this module adds the
server's MLflow run. The consortium key is **not** in the model: the features are in the
key-permuted space, so the model scores molecules only for someone who holds the key (a
consortium member), given at load time as ``model_config={"key_file": ...}`` or the
``FEDMOL_KEY_FILE`` environment variable.
"""

from __future__ import annotations

from pathlib import Path

from fedmol.models.registry import (
    PYFUNC_ENTRY,
    pip_requirements,
    pyfunc_entry_file,
    register_model_folder,
    save_shared_model,
)
from fedmol.server.tracking import MlflowTracker

__all__ = ["PYFUNC_ENTRY", "pip_requirements", "pyfunc_entry_file", "register_model", "save_shared_model"]


def register_model(tracker: MlflowTracker, model_dir: Path, name: str) -> str:
    """Log ``model_dir`` as a pyfunc in the tracker's run and register it; return models:/NAME/VERSION."""
    uri = register_model_folder(tracker.uri, tracker.run_id, model_dir, name, artifact_name="shared_model")
    tracker.set_tag("fedmol.registered-model", uri)
    return uri
