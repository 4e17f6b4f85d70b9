"""A site's own model at the end of a federation, registered in the site's own MLflow registry.

At the final evaluation each site writes its full model: the shared trunk and consortium heads it
received, its private heads, fine-tuned where the site chose so (`SiteNode.finetune`), and
split-conformal calibrated on its validation fold (`fedmol.models.uncertainty.calibrate`, the
calibration the shared model gets with ``fedmol score --site-store``). The folder is
``<store>/federations/<federation-id>/site_model`` and it is registered, as a fedmol pyfunc, in the
site's registry, never the server's. Nothing of it leaves the site: the outbox ledger and the
reply to the server are the same as without it.

The site's chemists then load one model that predicts their own assays::

    mlflow.set_tracking_uri("sqlite:////data/fedmol/store/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/fedmol-site-acme/latest",
                                     model_config={"key_file": "consortium.key"})

or ``fedmol score ... --model models:/fedmol-site-acme/latest --tracking-uri sqlite:///...``.

Node-config keys (a SuperNode's ``--node-config``, the site's own choice):

* ``tracking-uri``: the site's MLflow store (default ``sqlite:///<site store>/mlflow.db``; artifacts
  of a local store go to ``<site store>/mlartifacts``);
* ``model-name``: the registered model's name (default ``fedmol-site-<site name>``);
* ``register-model``: ``true``/``false`` (default: the run config's ``register-model``, the
  consortium's default; a run that registers no shared model registers no site model either).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmol.config import FederationConfig
from fedmol.datasets.store import SiteStore
from fedmol.errors import ConfigError
from fedmol.models.data import TaskData
from fedmol.models.io import save_model
from fedmol.models.network import MultiTaskNet
from fedmol.models.site_model import federation_dir, split_rows
from fedmol.models.uncertainty import calibrate

__all__ = ["SITE_EXPERIMENT", "SITE_MODEL_DIR", "SiteRegistry", "publish_site_model"]

log = logging.getLogger("fedmol.client")

SITE_EXPERIMENT = "fedmol-site"
SITE_MODEL_DIR = "site_model"
SITE_MODEL_RECORD = "site_model.json"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def default_model_name(site: str) -> str:
    """``fedmol-site-<site>``, with characters a registry name should not hold replaced."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in site)
    return f"fedmol-site-{safe}"


@dataclass
class SiteRegistry:
    """Where and whether a site registers its own model (from its node config)."""

    tracking_uri: str = ""  # "": sqlite:///<store>/mlflow.db
    model_name: str = ""  # "": fedmol-site-<site name>
    register: bool | None = None  # None: the run config's register-model

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SiteRegistry:
        flag = str(node_config.get("register-model", "")).strip().lower()
        if flag and flag not in _TRUE + _FALSE:
            raise ConfigError(f"node config register-model={flag!r}: use true or false")
        return cls(tracking_uri=str(node_config.get("tracking-uri", "") or ""),
                   model_name=str(node_config.get("model-name", "") or ""),
                   register=None if not flag else flag in _TRUE)

    def enabled(self, cfg: FederationConfig) -> bool:
        return cfg.register_model if self.register is None else self.register

    def uri_for(self, store_path: Path) -> str:
        return self.tracking_uri or f"sqlite:///{Path(store_path) / 'mlflow.db'}"

    def name_for(self, site: str) -> str:
        return self.model_name or default_model_name(site)


def publish_site_model(model: MultiTaskNet, *, store: SiteStore, store_path: Path, site: str,
                       cfg: FederationConfig, federation_id: str, server_round: int, settings: SiteRegistry,
                       prep_settings: dict[str, Any], facts: Mapping[str, Any]) -> str:
    """Calibrate ``model`` on the site's validation fold, write it as a model folder in the site's
    federation folder and register it in the site's own registry; returns ``models:/NAME/VERSION``.

    facts: the site's own numbers of this evaluation (scores, ``personalised``), logged in the site's
    MLflow run and kept in the model's meta.json; they stay at the site.
    """
    from fedmol.models.registry import ensure_experiment, register_model_folder

    model.eval()
    valid = TaskData.from_store(store, model.spec, split_rows(store, cfg, "valid"), trainable_only=False)
    calibration = calibrate(model, valid, fold=cfg.valid_fold) if valid.n else None
    numbers = {k: float(v) for k, v in facts.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    settings_ = store.settings
    meta = {"scope": "site", "site": site, "federation_id": federation_id, "rounds": server_round,
            "personalised": bool(numbers.get("personalised", 0)),
            "key_fingerprint": settings_.get("key_fingerprint", ""),
            "reference_hash": settings_.get("reference_hash", ""),
            "prep_settings": prep_settings, "run_config": cfg.to_run_config(), "site_metrics": numbers}
    folder = federation_dir(store_path, federation_id) / SITE_MODEL_DIR
    if folder.exists():
        shutil.rmtree(folder)  # a rerun of the final round: no stale calibration.json
    save_model(folder, model, meta=meta, calibration=calibration)

    uri, name = settings.uri_for(store_path), settings.name_for(site)
    from mlflow.tracking import MlflowClient

    experiment = ensure_experiment(uri, SITE_EXPERIMENT, store_path / "mlartifacts")
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment, run_name=f"{site}-{federation_id}",
                            tags={"fedmol.kind": "site-model", "fedmol.site": site,
                                  "fedmol.federation-id": federation_id})
    run_id = run.info.run_id
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param("federation_id", federation_id), Param("rounds", str(server_round))],
                     metrics=[Metric(k, v, now, server_round) for k, v in sorted(numbers.items())])
    model_uri = register_model_folder(uri, run_id, folder, name, artifact_name="site_model",
                                      tags={"site": site, "personalised": str(meta["personalised"]).lower()})
    record = {"model_uri": model_uri, "tracking_uri": uri, "model_dir": str(folder), "mlflow_run_id": run_id,
              "personalised": meta["personalised"], "calibrated": calibration is not None}
    (folder.parent / SITE_MODEL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("site %s: its own model is %s in its registry %s (%s, %s)", site, model_uri, uri,
             "personalised" if meta["personalised"] else "the federated model",
             "calibrated on its validation fold" if calibration is not None else "no validation labels to calibrate")
    return model_uri
