"""`fedmol site audit`: the membership-inference audit tells an overfit model from a regularised one on a
small real store (BACE from ../shared/data, 1024 bits), canaries inserted into an overfit training are
exposed, and the command writes the audit file (PREAMBLE contract 3) and its plot from a site's federation.

The store's folds are random here, not scaffold folds: with scaffold folds the held-out compounds are
also other chemistry, harder for any model, and a loss attack then scores the scaffold gap too (a
3-epoch model reached ROC-AUC 0.64-0.74 on scaffold folds of this set); random folds isolate what the
test is about, memorisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedmol.client.audit import SHARED_FINAL, AuditSettings, audit_models
from fedmol.config import FederationConfig
from fedmol.datasets.store import SiteStore
from fedmol.models.data import TaskData
from fedmol.models.network import MultiTaskNet
from fedmol.models.site_model import federation_dir, site_spec, split_rows
from fedmol.models.training import TrainConfig, fit_target_scaling, train_epochs

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
N_BITS, ROWS, SITE = 1024, 400, "site-a"
ATTACK_KEYS = {"auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "n_members", "n_nonmembers"}


@pytest.fixture(scope="module")
def bace_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 random BACE compounds (a balanced classification task and pIC50), prepared at 1024 bits."""
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec

    root = tmp_path_factory.mktemp("audit")
    df = pd.read_csv(DATA / "bace.csv.gz", usecols=["smiles", "Class", "pIC50"])
    df = df.sample(ROWS, random_state=0).reset_index(drop=True)
    settings = PrepareSettings(table=TableSpec(smiles_col="smiles", task_cols=("Class", "pIC50")),
                               featurize=FeaturizeSettings(n_bits=N_BITS))
    store = prepare_frame(df, bytes(range(32)), None, settings, workers=1).store
    store.settings["site_name"] = SITE
    store.folds = np.random.default_rng(0).integers(0, 5, store.n_compounds).astype(store.folds.dtype)
    return store.save(root / "store")


def _cfg(**kw) -> FederationConfig:
    base = dict(n_bits=N_BITS, hidden="64", dropout=0.0, consortium_tasks="", device="cpu", num_threads=1,
                optimizer="adam", lr=0.01, batch_size=64, local_epochs=1)
    return FederationConfig(**{**base, **kw})


def _trained(store: SiteStore, cfg: FederationConfig, tc: TrainConfig) -> MultiTaskNet:
    model = MultiTaskNet(site_spec(store, cfg, SITE), seed=0)
    train = TaskData.from_store(store, model.spec, split_rows(store, cfg, "train"))
    fit_target_scaling(model, train)
    train_epochs(model, train, tc)
    return model


def test_the_audit_tells_an_overfit_model_from_a_regularised_one(bace_store):
    torch.set_num_threads(1)
    store = SiteStore.load(bace_store)
    cfg = _cfg()
    # Overfit: no dropout, many epochs to ~zero training loss. Regularised: dropout, weight decay, 3 epochs.
    overfit = _trained(store, cfg, TrainConfig(epochs=25, lr=1e-2, batch_size=32, lr_step_epoch=10**6,
                                               device="cpu"))
    regular = _trained(store, cfg.replace(dropout=0.5),
                       TrainConfig(epochs=3, lr=1e-3, batch_size=64, optimizer="adamw", weight_decay=1e-2,
                                   device="cpu"))
    settings = AuditSettings(lira_models=4, lira_epochs=5, max_compounds=500)
    res = audit_models(store, cfg, {"overfit": overfit, "regular": regular}, settings)
    loss = {name: res.attacks[name]["loss"] for name in ("overfit", "regular")}
    print({n: {a: round(r.auc, 3) for a, r in res.attacks[n].items()} for n in res.attacks})  # the measured AUCs
    assert loss["overfit"].auc > 0.8
    assert loss["regular"].auc < 0.65
    assert res.attacks["overfit"]["confidence"].auc > 0.8
    lira = res.attacks["overfit"]["lira"]
    assert lira is not None and lira.auc > res.attacks["regular"]["lira"].auc
    # Balanced: every non-member of the test fold, as many members from the training folds.
    n_test = int(np.isin(np.flatnonzero(store.folds == cfg.test_fold), np.flatnonzero(~np.isnan(store.Y).all(1))).sum())
    assert loss["overfit"].n_members == loss["overfit"].n_nonmembers == n_test
    assert "training folds" in res.members and f"test fold {cfg.test_fold}" in res.nonmembers


def test_canaries_inserted_into_an_overfit_training_are_exposed(bace_store):
    torch.set_num_threads(1)
    store = SiteStore.load(bace_store)
    cfg = _cfg()
    start = MultiTaskNet(site_spec(store, cfg, SITE), seed=0)
    fit_target_scaling(start, TaskData.from_store(store, start.spec, split_rows(store, cfg, "train")))
    exposed = audit_models(store, cfg, {"shared": start},
                           AuditSettings(lira_models=0, canaries=8, canary_references=255, canary_epochs=40)).canaries
    assert exposed is not None and exposed["n"] == 8 and exposed["reference_size"] == 255
    assert exposed["max_possible_exposure"] == pytest.approx(8.0)
    assert exposed["mean_exposure"] > 6.0  # ranked among the 3 % lowest losses of 256, on average
    # The same canaries with one epoch at a tiny lr: the model has not learnt them, no exposure to speak of.
    faint = audit_models(store, cfg.replace(lr=1e-6), {"shared": start},
                         AuditSettings(lira_models=0, canaries=8, canary_references=255, canary_epochs=1)).canaries
    assert faint is not None and faint["mean_exposure"] < 3.0


def _federation(store_path: Path, cfg: FederationConfig) -> None:
    """One round of a one-site federation in process, with the final evaluation (personalisation on)."""
    from fedmol.client.site import SiteNode
    from fedmol.server.federation import initial_shared_arrays
    from fedmol.transport import decode_update

    node = SiteNode(store_path, SITE)
    sent, _ = initial_shared_arrays(cfg)
    reply = node.train_round(cfg, sent, server_round=1, federation_id="fed-1").arrays
    assert reply is not None
    shared = decode_update(reply, sent)  # what the server makes of the reply (int8 by default)
    node.evaluate_round(cfg, shared, server_round=1, federation_id="fed-1", final=True)


def test_site_audit_writes_the_audit_file_and_its_plot(bace_store, tmp_path, capsys):
    from fedmol.cli import main

    store_path = Path(shutil.copytree(bace_store, tmp_path / "store"))
    cfg = _cfg(optimizer="sgd", lr=0.1, local_epochs=5, num_server_rounds=1, register_model=False,
               local_baseline=False, finetune_epochs=3, finetune_lr=0.1, eval_min_labels=5)
    _federation(store_path, cfg)
    folder = federation_dir(store_path, "fed-1")
    assert (folder / SHARED_FINAL).exists()  # the site kept the shared model it received
    code = main(["site", "audit", str(store_path), "--lira-models", "2", "--lira-epochs", "2", "--canaries", "3",
                 "--canary-references", "63", "--canary-epochs", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    files = sorted((store_path / "privacy").glob("audit-*.json"))
    assert len(files) == 1 and files[0].name in out.replace("\n", "")
    report = json.loads(files[0].read_text())
    assert report["kind"] == "fedmol.site-audit" and report["version"] == 1
    assert report["site"] == SITE and report["federation_id"] == "fed-1"
    assert {"created", "members", "nonmembers", "models", "canaries", "plot"} <= set(report)
    personalised = (folder / "personalised.pt").exists()
    assert set(report["models"]) == {"shared", "personalised"}
    assert (report["models"]["personalised"] is not None) == personalised
    for entry in filter(None, report["models"].values()):
        assert set(entry["attacks"]) == {"loss", "confidence", "lira"}
        for attack in entry["attacks"].values():
            assert set(attack) == ATTACK_KEYS and 0.0 <= attack["auc"] <= 1.0 and attack["n_members"] > 0
    assert set(report["canaries"]) == {"n", "mean_exposure", "max_exposure", "max_possible_exposure",
                                       "reference_size"}
    assert report["canaries"]["max_possible_exposure"] == pytest.approx(6.0)
    png = files[0].parent / report["plot"]
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ROC-AUC" in out and "lira" in out
    assert not list(store_path.glob("mlflow.db")) and not (store_path / "mlartifacts").exists()  # no MLflow asked


def test_site_audit_of_a_model_folder_and_a_store_without_federation(bace_store, tmp_path, capsys):
    from fedmol.cli import main
    from fedmol.models.io import save_model

    store_path = Path(shutil.copytree(bace_store, tmp_path / "store"))
    code = main(["site", "audit", str(store_path)])
    err = capsys.readouterr().err
    assert code != 0 and "run one first" in err and "--model" in err

    store = SiteStore.load(store_path)
    model = _trained(store, _cfg(), TrainConfig(epochs=2, device="cpu"))
    save_model(tmp_path / "model", model, meta={})
    code = main(["site", "audit", str(store_path), "--model", str(tmp_path / "model"), "--no-lira"])
    assert code == 0, capsys.readouterr()
    report = json.loads(next((store_path / "privacy").glob("audit-*.json")).read_text())
    assert report["federation_id"] is None and report["models"]["personalised"] is None
    assert report["models"]["shared"]["attacks"]["lira"] is None and report["canaries"] is None


def test_site_audit_logs_to_the_sites_own_mlflow(bace_store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from fedmol.cli import main
    from fedmol.models.io import save_model

    store_path = Path(shutil.copytree(bace_store, tmp_path / "store"))
    store = SiteStore.load(store_path)
    save_model(tmp_path / "model", _trained(store, _cfg(), TrainConfig(epochs=2, device="cpu")), meta={})
    uri = f"sqlite:///{tmp_path / 'site-mlflow.db'}"
    code = main(["site", "audit", str(store_path), "--model", str(tmp_path / "model"), "--no-lira",
                 "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(next((store_path / "privacy").glob("audit-*.json")).read_text())
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fedmol-site-audit").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id in out
    auc = report["models"]["shared"]["attacks"]["loss"]["auc"]
    assert runs[0].data.metrics["shared.loss.auc"] == pytest.approx(auc)
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {report["plot"], report["plot"].replace(".png", ".json")} <= names
