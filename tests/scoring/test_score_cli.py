"""`fedmol score` on a small model: predictions, rejects with line and reason, the key check."""

import pandas as pd
import pytest

from fedmol.cli import main
from fedmol.datasets.keys import generate_key_file, key_fingerprint, load_key
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


# -- `fedmol score` and `fedmol prepare` read a file alike (one reader) ------------------------
def _score(tmp_path, model_and_key, src, *extra):
    """(scored, rejects) frames of `fedmol score SRC`."""
    model_dir, key_path = model_and_key
    out = tmp_path / f"{src.name}.scored.csv"
    assert main(["score", str(src), "--model", str(model_dir), "--key-file", str(key_path), "--out", str(out),
                 "--mc-samples", "2", "--chunk-size", "2", *extra]) == 0
    return pd.read_csv(out), pd.read_csv(out.with_name(out.name + ".rejects.csv"))


def _prepare(tmp_path, model_and_key, src, *extra):
    """(compounds, rejects, summary) of `fedmol prepare SRC`."""
    import json

    store = tmp_path / f"{src.name}.store"
    assert main(["prepare", str(src), "--key-file", str(model_and_key[1]), "--out", str(store), "--n-bits", "256",
                 "--workers", "1", "--no-standardize", *extra]) == 0
    return (pd.read_csv(store / "compounds.csv"), pd.read_csv(store / "rejects.csv"),
            json.loads((store / "summary.json").read_text()))


def test_score_and_prepare_agree_on_a_smi_file_with_comments_and_blank_lines(tmp_path, model_and_key):
    src = tmp_path / "lib.smi"
    src.write_bytes(b"smiles name\nCCO ethanol\n# a comment\n\n   \nc1ccccc1O phenol\n  # CCN indented comment\n"
                    b"CC\xe9O latin-1\nnot_a_smiles junk\nCCCN propylamine\n")
    scored, rejects = _score(tmp_path, model_and_key, src)
    compounds, prep_rejects, summary = _prepare(tmp_path, model_and_key, src)
    # comments, blank lines and the header are no records in either command; lines are physical
    assert sorted([*scored["line"], *rejects["line"]]) == [2, 6, 8, 9, 10]
    assert sorted([*compounds["line"], *prep_rejects["line"]]) == [2, 6, 8, 9, 10]
    assert summary["read"] == len(scored) + len(rejects) == 5
    assert list(scored["line"]) == list(compounds["line"]) == [2, 6, 10]
    assert list(scored["id"]) == list(compounds["id"]) == ["ethanol", "phenol", "propylamine"]
    for frame in (rejects, prep_rejects):
        reasons = frame.set_index("line")["reason"]
        assert reasons[8].startswith("invalid UTF-8: byte 0xE9 in line 8") and reasons[9].startswith("unparsable")


def test_a_bad_byte_and_a_multiline_field_in_a_gzip_csv(tmp_path, model_and_key):
    """One invalid UTF-8 byte rejects only its row, with line and reason, in both commands (no
    traceback); lines stay physical after a quoted field that spans lines; gzip is read."""
    import gzip

    src = tmp_path / "lib.csv.gz"
    with gzip.open(src, "wb") as fh:
        fh.write(b'cid,smiles,y,note\n'
                 b'a,CCO,1.0,"first\nsecond line"\n'  # lines 2-3
                 b'b,CC\xe9N,2.0,bad byte\n'  # line 4
                 b'\n'  # line 5: blank, no record
                 b'c,c1ccccc1O,3.0,"x\n\ny"\n'  # lines 6-8
                 b'd,CCC,4.0,too,many\n'  # line 9
                 b'e,CCCN,5.0,end\n')  # line 10
    scored, rejects = _score(tmp_path, model_and_key, src, "--id-col", "cid")
    compounds, prep_rejects, summary = _prepare(tmp_path, model_and_key, src, "--id-col", "cid")
    assert list(scored["line"]) == list(compounds["line"]) == [2, 6, 10]
    assert list(scored["id"]) == list(compounds["id"]) == ["a", "c", "e"]
    for frame in (rejects, prep_rejects):
        assert list(frame["line"]) == [4, 9]
        assert frame["reason"][0] == "invalid UTF-8: byte 0xE9 in line 4, column 5 (save the file as UTF-8)"
        assert frame["reason"][1] == "too many fields: 5 where the header has 4"
        assert frame["smiles"][0] == "CC\\xe9N"
    assert summary["read"] == len(scored) + len(rejects) == 5
    assert summary["kept"] + summary["rejected"] == summary["read"]
