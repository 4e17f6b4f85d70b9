"""Scorer and `fedmol score`: shared model vs the site's full model, conformal outputs, SDF, workers."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from fedmol.cli import main
from fedmol.datasets.keys import load_key
from fedmol.scoring.scorer import NO_CALIBRATION_NOTE, Scorer
from tests.scoring.conftest import FEDERATION_ID, SMILES


def test_shared_model_scores_consortium_tasks_without_calibration(site):
    scorer = Scorer(site["model"], load_key(site["key"]), mc_samples=4)
    assert [(t.name, t.scope, t.calibrated) for t in scorer.tasks] == [("logS", "consortium", False)]
    out = scorer.score([*SMILES, "nonsense("])
    assert list(out.columns) == ["smiles", "canonical_smiles", "error", "logS", "logS_std"]
    assert out["logS"].iloc[:-1].notna().all() and (out["logS_std"].iloc[:-1] > 0).all()
    assert out["error"].iloc[-1].startswith("unparsable") and np.isnan(out["logS"].iloc[-1])
    assert scorer.calibration_note == NO_CALIBRATION_NOTE


def test_site_store_adds_private_heads_and_conformal_outputs(site):
    import torch

    from fedmol.client.site import SiteNode
    from fedmol.config import FederationConfig
    from fedmol.models.training import predict

    scorer = Scorer(site["model"], load_key(site["key"]), mc_samples=0, site_store=site["store"], confidence=0.9)
    tasks = {t.name: t for t in scorer.tasks}
    assert tasks["logS"].scope == "consortium" and tasks["soluble"].scope == "private"
    assert tasks["logS"].calibrated and tasks["soluble"].calibrated
    assert scorer.site == "site-a" and "validation fold 1" in scorer.calibration_note
    out = scorer.score(SMILES)
    assert list(out.columns) == ["smiles", "canonical_smiles", "error", "logS", "logS_lower", "logS_upper",
                                 "soluble", "soluble_p0", "soluble_p1"]
    assert (out["logS_lower"] < out["logS"]).all() and (out["logS"] < out["logS_upper"]).all()
    assert out[["soluble_p0", "soluble_p1"]].stack().between(0, 1).all()
    # The same predictions as the site's own model in the federation (shared arrays + private heads).
    cfg = FederationConfig.from_run_config(scorer.meta["run_config"])
    shared = {k: v.numpy() for k, v in torch.load(site["model"] / "weights.pt", weights_only=True).items()}
    model, fresh = SiteNode(site["store"]).build_model(cfg, shared, FEDERATION_ID)
    assert not fresh
    block = scorer.prepare(SMILES)
    expected = predict(model, block.X)
    np.testing.assert_allclose(out["soluble"], expected["soluble"], rtol=1e-5)
    np.testing.assert_allclose(out["logS"], expected["logS"], rtol=1e-5)


def test_site_store_of_another_federation_is_a_clear_error(site, tmp_path):
    import json
    import shutil

    other = shutil.copytree(site["model"], tmp_path / "model")
    meta = json.loads((other / "meta.json").read_text())
    meta["federation_id"] = "another"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="no private heads for federation another"):
        Scorer(other, load_key(site["key"]), site_store=site["store"])


def _write_sdf(path, smiles, bad_at=None):
    from rdkit import Chem

    blocks = []
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        mol.SetProp("_Name", f"mol{i}")
        mol.SetProp("REG", f"R{i}")
        block = Chem.MolToMolBlock(mol) + f">  <REG>\nR{i}\n\n$$$$\n"
        if i == bad_at:
            block = "broken\n  nonsense\n\nthis is not a molblock\nM  END\n$$$$\n"
        blocks.append(block)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as fh:
        fh.write("".join(blocks))


def test_score_cli_sdf_with_site_store(site, tmp_path):
    src = tmp_path / "in.sdf.gz"
    _write_sdf(src, SMILES[:5], bad_at=2)
    out = tmp_path / "out.csv"
    code = main(["score", str(src), "--model", str(site["model"]), "--key-file", str(site["key"]), "--out", str(out),
                 "--site-store", str(site["store"]), "--id-col", "REG", "--mc-samples", "3", "--chunk-size", "2"])
    assert code == 0
    scored = pd.read_csv(out)
    rejects = pd.read_csv(tmp_path / "out.csv.rejects.csv")
    assert list(scored["line"]) == [1, 2, 4, 5] and list(scored["id"]) == ["R0", "R1", "R3", "R4"]
    assert list(rejects["line"]) == [3] and "unreadable SDF record" in rejects["reason"][0]
    for col in ("logS", "logS_std", "logS_lower", "logS_upper", "soluble", "soluble_std", "soluble_p0", "soluble_p1"):
        assert scored[col].notna().all(), col


def test_score_cli_workers_keep_order_and_match_one_process(site, tmp_path):
    rng = np.random.default_rng(0)
    smiles = [SMILES[i] for i in rng.integers(0, len(SMILES), 300)]
    smiles[17] = "not-a-smiles"
    smiles[250] = ""
    src = tmp_path / "in.csv.gz"
    pd.DataFrame({"name": [f"m{i}" for i in range(300)], "smiles": smiles}).to_csv(src, index=False)
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.parquet"
        assert main(["score", str(src), "--model", str(site["model"]), "--key-file", str(site["key"]),
                     "--out", str(out), "--id-col", "name", "--chunk-size", "40", "--workers", str(workers),
                     "--mc-samples", "2"]) == 0
        outs[workers] = pd.read_parquet(out)
        rejects = pd.read_csv(tmp_path / f"out{workers}.parquet.rejects.csv")
        assert len(outs[workers]) + len(rejects) == 300
        assert list(rejects["line"]) == [19, 252]
    pd.testing.assert_frame_equal(outs[1], outs[2])
    assert list(outs[2]["id"]) == [f"m{i}" for i in range(300) if i not in (17, 250)]


def test_score_cli_all_rejected_still_writes_outputs(site, tmp_path):
    src = tmp_path / "in.smi"
    src.write_text("smiles\nxx(\n\nC1CC\n")
    out = tmp_path / "out.csv"
    assert main(["score", str(src), "--model", str(site["model"]), "--key-file", str(site["key"]),
                 "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 0
    # line 3 is blank: no record (the one reader's rule, shared with fedmol prepare), so not a reject
    assert list(pd.read_csv(tmp_path / "out.csv.rejects.csv")["line"]) == [2, 4]


@pytest.mark.parametrize("hidden", [(64,), (64, 32)])
def test_mc_dropout_with_shared_masks_matches_full_passes(hidden):
    """predict_units' MC dropout (masks shared across molecules, folded into the heads) estimates
    the same per-molecule mean and std as independent full forward passes, and a molecule's
    result does not depend on where it sits in the input."""
    import scipy.sparse as sp

    from fedmol.models.network import MultiTaskNet
    from fedmol.models.spec import build_spec
    from fedmol.models.training import predict
    from fedmol.scoring.scorer import predict_units

    spec = build_spec(512, [("c", "classification")], [("r", "regression")], hidden=hidden, dropout=0.3)
    model = MultiTaskNet(spec, seed=1)
    model.set_target_scaling("private_regression", np.array([1.0]), np.array([2.0]))
    X = sp.random(40, 512, density=0.05, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 1.0
    full = predict(model, X, mc_samples=2000, seed=0)
    values, std = predict_units(model, X, 2000, seed=0)
    for task in ("c", "r"):
        np.testing.assert_allclose(values[task], full.values[task], rtol=0.05, atol=0.01)
        np.testing.assert_allclose(std[task], full.std[task], rtol=0.15, atol=0.005)
    one, one_std = predict_units(model, X[7:8], 20)
    many, many_std = predict_units(model, X, 20)
    assert one["r"][0] == pytest.approx(many["r"][7]) and one_std["c"][0] == pytest.approx(many_std["c"][7])
    plain, no_std = predict_units(model, X, 0)
    assert no_std is None
    np.testing.assert_allclose(plain["c"], predict(model, X)["c"], rtol=1e-6)
