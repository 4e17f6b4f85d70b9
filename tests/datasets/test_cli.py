"""`fedmol keygen` / `fedmol prepare` through the real entry point, including Tox21."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedmol.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert fragment in lines[0], err


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "keygen", str(tmp_path / "k.key"))
    assert code == 0 and "fingerprint" in out
    code, _, err = _run(capsys, "keygen", str(tmp_path / "k.key"))
    _assert_one_line_error(code, err, "already exists")


@pytest.mark.parametrize(
    ("key_text", "fragment"),
    [(None, "not found"), ("nothex" * 12, "malformed"), ("ab" * 8, "too short")],
)
def test_prepare_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], key_text: str | None,
                         fragment: str) -> None:
    data = tmp_path / "a.csv"
    data.write_text("smiles,y\nCCO,1\n")
    key = tmp_path / "k.key"
    if key_text is not None:
        key.write_text(key_text + "\n")
    code, _, err = _run(capsys, "prepare", str(data), "--key-file", str(key), "--out", str(tmp_path / "s"))
    _assert_one_line_error(code, err, fragment)


def test_prepare_unknown_column_and_empty_file(tmp_path: Path, key_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "a.csv"
    data.write_text("smiles,y\nCCO,1\n")
    code, _, err = _run(capsys, "prepare", str(data), "-k", str(key_file), "-o", str(tmp_path / "s"),
                        "--task-cols", "y,z")
    _assert_one_line_error(code, err, "'z' not found")
    assert "available columns: smiles, y" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, _, err = _run(capsys, "prepare", str(empty), "-k", str(key_file), "-o", str(tmp_path / "s2"))
    _assert_one_line_error(code, err, "is empty")
    code, _, err = _run(capsys, "prepare", str(tmp_path / "missing.csv"), "-k", str(key_file),
                        "-o", str(tmp_path / "s3"))
    _assert_one_line_error(code, err, "not found")


def test_prepare_long_format_with_threshold(tmp_path: Path, key_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "long.tsv"
    data.write_text("cid\tsmiles\tassay\tpIC50\nc1\tCCO\tA\t7.1\nc1\tCCO\tB\t<4\nc2\tCCN\tA\t>8\n")
    rejects = tmp_path / "rej.csv"
    code, out, err = _run(capsys, "prepare", str(data), "-k", str(key_file), "-o", str(tmp_path / "s"),
                          "--format", "long", "--task-col", "assay", "--value-col", "pIC50",
                          "--id-col", "cid", "--threshold", "A=6.5", "--rejects", str(rejects))
    assert code == 0, err
    assert "rows read" in out and "reference hash" in out
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["read"] == 3 and summary["kept"] == 3 and summary["compounds"] == 2
    tasks = json.loads((tmp_path / "s" / "tasks.json").read_text())["tasks"]
    assert [(t["name"], t["kind"], t["threshold"]) for t in tasks] == [
        ("A", "classification", 6.5), ("B", "regression", None)]
    assert rejects.exists()
    code, _, err = _run(capsys, "prepare", str(data), "-k", str(key_file), "-o", str(tmp_path / "s"))
    _assert_one_line_error(code, err, "--overwrite")


def _unparsable(smiles: pd.Series) -> set[str]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return {s for s in smiles if Chem.MolFromSmiles(s) is None}


def test_prepare_tox21_rejects_exactly_the_unparsable(tmp_path: Path, key_file: Path, data_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With structures taken as they are (no standardisation, stereo kept, no size cap), only the
    8 SMILES RDKit cannot parse are rejected."""
    source = data_dir / "tox21.csv.gz"
    rejects = tmp_path / "tox21_rejects.csv"
    code, out, err = _run(capsys, "prepare", str(source), "-k", str(key_file), "-o", str(tmp_path / "store"),
                          "--id-col", "mol_id", "--workers", "2", "--no-standardize", "--stereo", "keep",
                          "--max-heavy-atoms", "1000", "--rejects", str(rejects))
    assert code == 0, err
    raw = pd.read_csv(source)
    expected = _unparsable(raw["smiles"])
    assert len(expected) == 8
    rej = pd.read_csv(rejects)
    assert set(rej["smiles"]) == expected and len(rej) == 8
    assert rej["reason"].str.startswith("unparsable SMILES").all()
    # line numbers point at the rows of the file (header = line 1)
    assert (raw.loc[rej["line"] - 2, "smiles"].to_numpy() == rej["smiles"].to_numpy()).all()
    assert pd.read_csv(tmp_path / "store" / "rejects.csv").equals(rej)
    summary = json.loads((tmp_path / "store" / "summary.json").read_text())
    assert summary["kept"] + summary["rejected"] == summary["read"] == 7831
    assert summary["tasks_trainable"] == 12


@pytest.mark.slow
def test_prepare_tox21_default_settings(tmp_path: Path, key_file: Path, data_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """MELLODDY-style defaults: the 8 unparsable rows, the oversized ones and duplicate rows left
    with no label by conflicts are rejected, each with line and reason; folds balanced; a conflicting
    label is cleared alone and listed in conflicts.csv."""
    from fedmol.datasets.store import SiteStore

    source = data_dir / "tox21.csv.gz"
    code, out, err = _run(capsys, "prepare", str(source), "-k", str(key_file), "-o", str(tmp_path / "store"),
                          "--id-col", "mol_id", "--workers", "2")
    assert code == 0, err
    store = SiteStore.load(tmp_path / "store")
    rej = pd.read_csv(tmp_path / "store" / "rejects.csv")
    unparsable = rej[rej["reason"].str.startswith("unparsable SMILES")]
    assert set(unparsable["smiles"]) == _unparsable(pd.read_csv(source)["smiles"])
    categories = set(rej["reason"].str.split(":").str[0])
    assert categories <= {"unparsable SMILES", "too large", "all labels conflicting"}
    assert rej["line"].is_unique and rej["reason"].str.len().gt(0).all()
    s = store.summary
    assert s["kept"] + s["rejected"] == s["read"] == 7831
    assert s["compounds"] == store.n_compounds
    assert s["folds"]["max_over_min"] < 1.3  # acyclic and single-ring molecules spread out
    assert all(t.trainable for t in store.tasks)
    conflicts = pd.read_csv(tmp_path / "store" / "conflicts.csv", dtype=str)
    assert len(conflicts) == s["conflicts"]["labels_cleared"] > 0
    assert (conflicts["lines"].str.count(";") >= 1).all()  # each cleared label names >= 2 input lines
    assert "conflicting labels" in out


def test_prepare_embedded_demo(tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "prepare", "--embedded", "freesolv", "-k", str(key_file),
                          "-o", str(tmp_path / "demo"), "--no-standardize", "--workers", "1")
    assert code == 0, err
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["read"] == 642 and summary["kept"] + summary["rejected"] == 642
    assert summary["tasks_trainable"] == 1
    code, _, err = _run(capsys, "prepare", "--embedded", "tox99", "-k", str(key_file),
                        "-o", str(tmp_path / "x"))
    _assert_one_line_error(code, err, "solubility, freesolv")
