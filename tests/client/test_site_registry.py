"""Each site registers its full model in its OWN MLflow registry at the end of a federation.

A federation whose tasks are all private (the shared model is a trunk without heads): the site's
registered model (shared trunk + its private heads, calibrated on its validation fold) loads with
``mlflow.pyfunc`` from the site's registry and with ``fedmol score``, and predicts the site's own
assays; the server's registry never gets it, and nothing new leaves the site.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedmol import wire
from fedmol.client.site import SiteNode, site_for
from fedmol.client.site_registry import SiteRegistry, default_model_name
from fedmol.config import FederationConfig
from fedmol.errors import ConfigError

SITE = "site-a"
MODEL_NAME = default_model_name(SITE)
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "Clc1ccc(Cl)cc1", "OCC(O)CO"]


@pytest.fixture(scope="module")
def private_site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real (SMILES) site store whose two tasks are private, and a run config with no consortium task."""
    from fedmol.datasets.embedded import solubility
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.keys import generate_key_file, load_key
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec
    from fedmol.datasets.standardize import StandardizeSettings

    root = tmp_path_factory.mktemp("site_registry")
    key_path = generate_key_file(root / "consortium.key")
    data = solubility().iloc[:300]
    frame = pd.DataFrame({"smiles": data["smiles"], "logS": data["logS"],
                          "soluble": (data["logS"] > -3).astype(float)})
    prep = PrepareSettings(table=TableSpec(smiles_col="smiles", task_cols=("logS", "soluble")),
                           standardize=StandardizeSettings(enabled=False),
                           featurize=FeaturizeSettings(radius=2, n_bits=256))
    result = prepare_frame(frame, load_key(key_path), None, prep, workers=1)
    result.store.settings["site_name"] = SITE
    store_path = result.store.save(root / "store")
    cfg = FederationConfig(
        transport_dtype="float32",  # a reply goes on as the next model, as a float32 server takes it
        n_bits=256, hidden="32", dropout=0.1, consortium_tasks="", num_server_rounds=1,
        local_epochs=5, lr=0.05, optimizer="sgd", batch_size=32, eval_min_labels=5,
        num_threads=1, finetune_epochs=3, finetune_lr=0.01, finetune_patience=2,
        local_baseline=False, register_model=True, output_dir=str(root / "server"),
        tracking_uri=f"sqlite:///{root / 'server' / 'mlflow.db'}")
    return {"root": root, "key": key_path, "store": store_path, "cfg": cfg}


def _ledger(store: Path) -> list[dict]:
    return [json.loads(line) for line in (store / "outbox.jsonl").read_text().splitlines()]


def test_site_registers_its_full_model_in_its_own_registry_at_the_final_round(private_site, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from fedmol.cli import main
    from fedmol.server.federation import initial_shared_arrays
    from fedmol.server.tracking import MlflowTracker

    cfg, store, key = private_site["cfg"], private_site["store"], private_site["key"]
    server = MlflowTracker(cfg)  # the server's store exists, in the same process as the site
    shared, spec = initial_shared_arrays(cfg)
    assert not spec.heads  # every task is private: the shared model is a trunk only
    node = SiteNode(store)
    shared = node.train_round(cfg, shared, server_round=1, federation_id="fed1").arrays
    site_uri = f"sqlite:///{store / 'mlflow.db'}"
    tracking_before = mlflow.get_tracking_uri()

    node.evaluate_round(cfg, shared, server_round=1, federation_id="fed1", final=False)
    assert not (store / "mlflow.db").exists()  # only the final evaluation registers
    reply = node.evaluate_round(cfg, shared, server_round=1, federation_id="fed1", final=True)

    # In the site's own registry, never the server's; the process-wide tracking URI is put back.
    assert mlflow.get_tracking_uri() == tracking_before
    site_client = MlflowClient(tracking_uri=site_uri)
    versions = site_client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    summary = json.loads(reply.report[wire.REP_SUMMARY])
    personalised = bool(summary["personalised"])
    assert versions[0].tags["personalised"] == str(personalised).lower()
    assert versions[0].tags["federation_id"] == "fed1" and versions[0].tags["site"] == SITE
    assert [m.name for m in server.client.search_registered_models()] == []
    assert (private_site["root"] / "server" / "mlflow.db").exists()

    # Nothing new left the site: the final evaluate reply sent what a non-final one sends.
    mid, final = [e for e in _ledger(store) if e["phase"] == "evaluate"]
    assert final["arrays"] == [] and final["report_keys"] == mid["report_keys"]
    assert final["metric_names"] == mid["metric_names"]

    # The model folder: the site's private heads (personalised where the site chose so), calibrated.
    fed_dir = node.private_dir("fed1")
    record = json.loads((fed_dir / "site_model.json").read_text())
    assert record["model_uri"] == f"models:/{MODEL_NAME}/1" and record["tracking_uri"] == site_uri
    folder = Path(record["model_dir"])
    calibration = json.loads((folder / "calibration.json").read_text())
    assert set(calibration["classification"]) == {"soluble"} and set(calibration["regression"]) == {"logS"}
    weights = torch.load(folder / "weights.pt", weights_only=True)
    kept = torch.load(fed_dir / ("personalised.pt" if personalised else "private_heads.pt"), weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in kept.items())
    if not personalised:  # the trunk is the federated one, unchanged
        assert all(np.array_equal(weights[k].numpy(), v) for k, v in shared.items())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["scope"] == "site" and meta["site"] == SITE and meta["personalised"] == personalised

    # The site's chemists: one models:/ URI that predicts their own assays, with mlflow.pyfunc ...
    mlflow.set_tracking_uri(site_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/latest",
                                         model_config={"key_file": str(key), "mc_samples": 0})
        preds = model.predict(pd.DataFrame({"smiles": SMILES}))
    finally:
        mlflow.set_tracking_uri(tracking_before)
    for col in ("logS", "logS_lower", "logS_upper", "soluble", "soluble_p0", "soluble_p1"):
        assert preds[col].notna().all(), col
    assert ((preds["soluble"] >= 0) & (preds["soluble"] <= 1)).all()

    # ... and with fedmol score (no --site-store: the heads and the calibration are in the model).
    src, out = private_site["root"] / "in.csv", private_site["root"] / "out.csv"
    pd.DataFrame({"smiles": SMILES}).to_csv(src, index=False)
    code = main(["score", str(src), "--model", f"models:/{MODEL_NAME}/1", "--tracking-uri", site_uri,
                 "--key-file", str(key), "--out", str(out), "--mc-samples", "0"])
    assert code == 0, capsys.readouterr().err
    scored = pd.read_csv(out)
    assert np.allclose(scored["soluble"], preds["soluble"], atol=1e-5)
    assert scored["soluble_p1"].notna().all() and scored["logS_upper"].notna().all()
    assert "site-a" in capsys.readouterr().err  # the calibration note names the site's validation fold


def test_node_config_chooses_the_registry_the_name_and_whether_to_register(private_site, tmp_path):
    cfg, store = private_site["cfg"], private_site["store"]
    own = SiteRegistry.from_node_config({"tracking-uri": "sqlite:////elsewhere/site.db", "model-name": "acme-adme",
                                         "register-model": "false"})
    assert own.uri_for(store) == "sqlite:////elsewhere/site.db" and own.name_for(SITE) == "acme-adme"
    assert not own.enabled(cfg)
    default = SiteRegistry.from_node_config({})
    assert default.uri_for(store) == f"sqlite:///{store / 'mlflow.db'}" and default.name_for("a b") == "fedmol-site-a-b"
    assert default.enabled(cfg) and not default.enabled(cfg.replace(register_model=False))
    assert SiteRegistry.from_node_config({"register-model": "true"}).enabled(cfg.replace(register_model=False))
    with pytest.raises(ConfigError, match="register-model"):
        SiteRegistry.from_node_config({"register-model": "maybe"})

    node = site_for({"site-store": str(store), "tracking-uri": f"sqlite:///{tmp_path / 'own.db'}",
                     "model-name": "acme-adme"}, cfg)
    assert node.registry.uri_for(store) == f"sqlite:///{tmp_path / 'own.db'}"
    assert node.registry.name_for(node.name) == "acme-adme"
    assert site_for({"site-store": str(store)}, cfg).registry == SiteRegistry()  # the next run's own settings


def test_a_broken_site_registry_does_not_fail_the_final_round(private_site, tmp_path, caplog):
    from fedmol.server.federation import initial_shared_arrays

    cfg, store = private_site["cfg"], private_site["store"]
    node = SiteNode(store)
    node.registry = SiteRegistry(tracking_uri="unknown-scheme://nowhere")
    shared, _ = initial_shared_arrays(cfg)
    reply = node.evaluate_round(cfg.replace(finetune_epochs=0), shared, server_round=1, federation_id="fed2",
                                final=True)
    assert reply.metrics  # the round's reply still goes to the server
    assert "could not be registered" in caplog.text


def test_the_clientapps_final_evaluate_registers_where_the_node_config_says(private_site, tmp_path):
    import time

    from flwr.app import ConfigRecord, Context, Metadata, RecordDict
    from flwr.app.message.message import make_message
    from mlflow.tracking import MlflowClient

    from fedmol.client import client_app
    from fedmol.records import to_array_record
    from fedmol.server.federation import initial_shared_arrays

    cfg, store = private_site["cfg"].replace(finetune_epochs=0), private_site["store"]
    own_uri = f"sqlite:///{tmp_path / 'own' / 'registry.db'}"
    shared, _ = initial_shared_arrays(cfg)
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600, message_type="evaluate")
    config = ConfigRecord({wire.CFG_ROUND: 1, wire.CFG_FEDERATION_ID: "fed3", wire.CFG_FINAL: True})
    message = make_message(meta, RecordDict({wire.ARRAYS: to_array_record(shared), wire.CONFIG: config}))
    context = Context(run_id=1, node_id=5, state=RecordDict(), run_config=cfg.to_run_config(),
                      node_config={"site-store": str(store), "tracking-uri": own_uri, "model-name": "acme-adme"})

    reply = client_app.evaluate(message, context)

    assert not reply.has_error()
    versions = MlflowClient(tracking_uri=own_uri).search_model_versions("name='acme-adme'")
    assert [v.tags["federation_id"] for v in versions] == ["fed3"]
