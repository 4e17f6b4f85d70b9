"""A small federated model and a site store for the scoring tests, built in seconds.

The shared model (trunk + consortium head ``logS``) is written as a federation writes it
(spec.json/weights.pt/meta.json with prep_settings, key_fingerprint, federation_id, run_config);
the site's store (embedded solubility data) holds the consortium task and a private
classification task ``soluble`` whose head lives in ``<store>/federations/<id>/private_heads.pt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FEDERATION_ID = "fed0test"
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "Clc1ccc(Cl)cc1", "OCC(O)CO",
          "c1ccc2ccccc2c1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "O=C(O)c1ccccc1", "CCCCCCCCO"]



@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"model": shared model folder, "key": key file, "store": site store} (session-wide, read-only)."""

    from fedmol.client.site import SiteNode
    from fedmol.config import FederationConfig
    from fedmol.datasets.embedded import solubility
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.keys import generate_key_file, key_fingerprint, load_key
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec
    from fedmol.datasets.standardize import StandardizeSettings
    from fedmol.models.data import TaskData
    from fedmol.models.network import MultiTaskNet
    from fedmol.models.spec import build_spec
    from fedmol.models.training import TrainConfig, fit_target_scaling, train_epochs
    from fedmol.server.registry import save_shared_model

    root = tmp_path_factory.mktemp("scoring")
    key_path = generate_key_file(root / "consortium.key")
    key = load_key(key_path)
    data = solubility().iloc[:400]
    frame = pd_frame(data)
    prep = PrepareSettings(table=TableSpec(smiles_col="smiles", task_cols=("logS", "soluble")),
                           standardize=StandardizeSettings(enabled=False),
                           featurize=FeaturizeSettings(radius=2, n_bits=256))
    result = prepare_frame(frame, key, None, prep, workers=1)
    result.store.settings["site_name"] = "site-a"
    store_path = result.store.save(root / "store")

    cfg = FederationConfig(n_bits=256, hidden="32", dropout=0.2, consortium_tasks="logS:regression",
                           output_dir=str(root / "server"))
    node = SiteNode(store_path)
    model = MultiTaskNet(node.spec(cfg), seed=0)
    train = TaskData.from_store(node.store, model.spec, node.rows(cfg, "train"))
    fit_target_scaling(model, train, heads=[h.name for h in model.spec.heads if h.kind == "regression"])
    train_epochs(model, train, TrainConfig(epochs=15, batch_size=64, seed=0, lr_step_epoch=100))
    node.save_private(model, FEDERATION_ID, 1)
    shared_spec = build_spec(256, cfg.consortium_task_list, [], hidden=(32,), dropout=0.2)
    arrays = {k: v.detach().numpy() for k, v in model.shared_state_dict().items()}
    meta = {"federation_id": FEDERATION_ID, "rounds": 1, "reference_hash": "ref",
            "key_fingerprint": key_fingerprint(key),
            "prep_settings": {"standardize": prep.standardize.to_dict(), "featurize": prep.featurize.to_dict()},
            "run_config": cfg.to_run_config()}
    model_dir = save_shared_model(root / "model", shared_spec, arrays, meta=meta)
    return {"model": model_dir, "key": key_path, "store": store_path}


def pd_frame(data):  # noqa: ANN001, ANN201
    import pandas as pd

    return pd.DataFrame({"smiles": data["smiles"], "logS": data["logS"],
                         "soluble": (data["logS"] > -3).astype(float)})
