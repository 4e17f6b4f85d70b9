"""`fedmol score` on a small model: predictions, rejects with line and reason, the key check."""

import pandas as pd
import pytest

from fedmol.datasets.keys import generate_key_file, key_fingerprint, load_key
from fedmol.cli import main
from fedmol.models.io import save_model
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import build_spec


@pytest.fixture()
def model_and_key(tmp_path):
    key_path = generate_key_file(tmp_path / "consortium.key")
    spec = build_spec(256, [("active", "classification"), ("logS", "regression")], [], hidden=(16,), dropout=0.2)
    meta = {"prep_settings": {"standardize": {}, "featurize": {"radius": 2, "n_bits": 256}},
            "key_fingerprint": key_fingerprint(load_key(key_path))}
    model_dir = save_model(tmp_path / "model", MultiTaskNet(spec, seed=0), meta=meta)
    return model_dir, key_path


def test_score_writes_predictions_and_rejects(tmp_path, model_and_key):
    model_dir, key_path = model_and_key
    src = tmp_path / "in.csv"
    pd.DataFrame({"SMILES": ["CCO", "not a smiles", "", "c1ccccc1O", "C" * 150]}).to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    code = main(["score", str(src), "--model", str(model_dir), "--key-file", str(key_path), "--out", str(out),
                 "--smiles-col", "SMILES", "--chunk-size", "2", "--mc-samples", "5"])
    assert code == 0
    scored = pd.read_parquet(out)
    rejects = pd.read_csv(tmp_path / "out.parquet.rejects.csv")
    assert list(scored["line"]) == [2, 5]
    assert ((scored["active"] >= 0) & (scored["active"] <= 1)).all()
    assert (scored["active_std"] >= 0).all() and scored["logS"].notna().all()
    assert list(rejects["line"]) == [3, 4, 6]
    assert rejects["reason"].str.len().gt(0).all()
    assert len(scored) + len(rejects) == 5
    assert list(scored["canonical_smiles"]) == ["CCO", "Oc1ccccc1"]

    fast = tmp_path / "fast.csv"
    assert main(["score", str(src), "--model", str(model_dir), "--key-file", str(key_path), "--out", str(fast),
                 "--smiles-col", "SMILES", "--mc-samples", "5", "--no-canonical-smiles"]) == 0
    fast_scored = pd.read_csv(fast)
    assert "canonical_smiles" not in fast_scored.columns
    pd.testing.assert_series_equal(fast_scored["active"], scored["active"], check_names=False, atol=1e-6)


def test_wrong_key_and_missing_column_are_clear_errors(tmp_path, model_and_key, capsys):
    model_dir, _ = model_and_key
    other = generate_key_file(tmp_path / "other.key")
    src = tmp_path / "in.csv"
    pd.DataFrame({"smiles": ["CCO"]}).to_csv(src, index=False)
    args = ["score", str(src), "--model", str(model_dir), "--out", str(tmp_path / "o.csv")]
    assert main([*args, "--key-file", str(other)]) == 2
    assert "not the consortium key" in capsys.readouterr().err
    assert main([*args, "--key-file", str(tmp_path / "consortium.key"), "--smiles-col", "smi"]) == 2
    assert "SMILES column 'smi' not found" in capsys.readouterr().err
