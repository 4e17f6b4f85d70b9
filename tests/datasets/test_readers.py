from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedmol.datasets.labels import parse_values
from fedmol.datasets.readers import TableSpec, read_table
from fedmol.errors import InputError


def test_wide_csv_keeps_physical_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("cid,smiles,A,B,note\nx1,CCO,1,,hello\n\nx2,c1ccccc1,0,<5.2,world\n")
    table = read_table(path, TableSpec(id_col="cid"))
    assert table.frame["line"].tolist() == [2, 4]
    assert table.frame["id"].tolist() == ["x1", "x2"]
    assert table.task_columns == ["A", "B"]
    assert table.ignored_columns == ["note"]  # not numeric: reported, never silently used


def test_tsv_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("SMILES\tpIC50\nCCO\t5.0\nCCN\t>7\n")
    table = read_table(path, TableSpec(task_cols=("pIC50",)))  # column names match case-insensitively
    assert table.frame["smiles"].tolist() == ["CCO", "CCN"]
    value, censor, bad = parse_values(table.frame["pIC50"])
    assert value.tolist() == [5.0, 7.0] and censor.tolist() == [0, 1] and not bad.any()


def test_long_format_with_qualifiers(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text(
        "id,smiles,assay,val,rel\n"
        "a,CCO,T1,5.0,=\n"
        "a,CCO,T2,6.0,>\n"
        "b,CCN,T1,<4.5,\n"
        "b,CCN,T2,7,>=\n"
    )
    spec = TableSpec(id_col="id", layout="long", task_col="assay", value_col="val", qualifier_col="rel")
    table = read_table(path, spec)
    assert table.layout == "long" and table.task_columns == ["T1", "T2"]
    value, censor, bad = parse_values(table.frame["value"], table.frame["qualifier"])
    assert value.tolist() == [5.0, 6.0, 4.5, 7.0]
    assert censor.tolist() == [0, 1, -1, 1]
    assert not bad.any()


def test_sdf_reader(tmp_path: Path) -> None:
    from rdkit import Chem

    path = tmp_path / "m.sdf"
    writer = Chem.SDWriter(str(path))
    for i, smi in enumerate(["CCO", "c1ccccc1O"]):
        mol = Chem.MolFromSmiles(smi)
        mol.SetProp("_Name", f"mol{i}")
        mol.SetProp("activity", str(5.0 + i))
        writer.write(mol)
    writer.close()
    # a third, broken record: a carbon with five bonds cannot be sanitised
    broken = Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False)
    with path.open("a") as fh:
        fh.write(Chem.MolToMolBlock(broken, kekulize=False))
        fh.write(">  <activity>\n7.5\n\n$$$$\n")
    table = read_table(path)
    assert table.frame["line"].tolist() == [1, 2, 3]  # record index
    assert table.frame["id"].tolist()[:2] == ["mol0", "mol1"]
    assert table.frame["smiles"].tolist()[:2] == ["CCO", "Oc1ccccc1"]
    assert table.task_columns == ["activity"]
    assert table.frame["pre_reject"].tolist()[:2] == ["", ""]
    assert "unreadable SDF record" in table.frame["pre_reject"].iloc[2]


def test_smi_reader(tmp_path: Path) -> None:
    path = tmp_path / "lib.smi"
    path.write_text("smiles name\nCCO ethanol\n# a comment\n\nc1ccccc1 benzene ring\nCCN\n")
    table = read_table(path)
    assert table.frame["line"].tolist() == [2, 5, 6]
    assert table.frame["id"].tolist() == ["ethanol", "benzene ring", ""]
    assert table.task_columns == []


def test_unknown_column_lists_the_available_ones(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("smiles,A\nCCO,1\n")
    with pytest.raises(InputError, match=r"'B' not found .* available columns: smiles, A"):
        read_table(path, TableSpec(task_cols=("B",)))
    with pytest.raises(InputError, match="SMILES column 'structure'"):
        read_table(path, TableSpec(smiles_col="structure"))


@pytest.mark.parametrize("content", ["", "smiles,A\n", "\n\n"])
def test_empty_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "e.csv"
    path.write_text(content)
    with pytest.raises(InputError, match="empty|no records"):
        read_table(path)


def test_bad_values_are_flagged() -> None:
    value, censor, bad = parse_values(np.array(["1.5", "abc", "", None, "<2", "> 3e1"], dtype=object))
    assert bad.tolist() == [False, True, False, False, False, False]
    assert censor.tolist() == [0, 0, 0, 0, -1, 1]
    assert value[5] == 30.0
