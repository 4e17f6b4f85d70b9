from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedmol.datasets.labels import parse_values
from fedmol.datasets.readers import TableSpec, iter_records, read_table
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


# -- the one streaming reader (iter_records / iter_rows), shared by prepare and score ----------
def _records(path: Path, spec: TableSpec | None = None, chunk_size: int = 1000) -> list[dict]:
    return [r for chunk in iter_records(path, spec, chunk_size) for r in chunk.to_dict("records")]


def test_line_numbers_stay_physical_after_a_quoted_multiline_field(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('id,smiles,note\nx1,CCO,"two\nlines"\nx2,CCN,ok\nx3,CCC,"three\n\nlines"\nx4,C,end\n')
    recs = _records(path, TableSpec(id_col="id"))
    assert [(r["line"], r["id"]) for r in recs] == [(2, "x1"), (4, "x2"), (5, "x3"), (8, "x4")]
    table = read_table(path, TableSpec(id_col="id"))  # prepare's whole-file read: the same lines
    assert table.frame["line"].tolist() == [2, 4, 5, 8]
    assert table.ignored_columns == ["note"]
    # a field opened by a quote after a quote inside another field (each line holds an even number)
    path.write_bytes(b'id,smiles,note\nx1,C"C,"two\nlines",x"\nx2,CCN,ok\n')
    recs = _records(path, TableSpec(id_col="id"))
    assert [(r["line"], r["pre_reject"]) for r in recs] == [(2, "too many fields: 4 where the header has 3"), (4, "")]


def test_an_invalid_utf8_byte_rejects_only_its_row(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"id,smiles,y\nx1,CCO,1\nx\xe9,CCN,2\nx3,CCC,3\n")
    recs = _records(path, TableSpec(id_col="id"))
    assert [r["line"] for r in recs] == [2, 3, 4]
    assert [r["pre_reject"] == "" for r in recs] == [True, False, True]
    assert recs[1]["pre_reject"].startswith("invalid UTF-8: byte 0xE9 in line 3, column 2")
    assert recs[1]["id"] == "x\\xe9"  # kept readable (and writable) with the byte escaped
    table = read_table(path, TableSpec(id_col="id"))
    assert table.frame["pre_reject"].str.startswith("invalid UTF-8").tolist() == [False, True, False]
    assert table.task_columns == ["y"]


def test_a_header_that_is_not_utf8_fails_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"id,smil\xe9s\nx1,CCO\n")
    with pytest.raises(InputError, match="header .* not text in UTF-8: invalid UTF-8: byte 0xE9 in line 1"):
        read_table(path)


def test_rows_with_too_many_fields_or_unreadable_csv_are_rejected_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b'id,smiles\nx1,CCO,extra\nx2,CCN\nx3,CC\rC\nx4,"C,C",more\nx5,C\n')
    recs = _records(path, TableSpec(id_col="id"))
    assert [r["line"] for r in recs] == [2, 3, 4, 5, 6]
    assert recs[0]["pre_reject"] == "too many fields: 3 where the header has 2"
    assert recs[1]["pre_reject"] == "" and recs[4]["pre_reject"] == ""
    assert recs[2]["pre_reject"].startswith("unreadable CSV row: a carriage return")
    assert recs[3]["pre_reject"] == "too many fields: 3 where the header has 2"  # the quoted comma is no separator
    # a quote inside a field is a character, as pandas reads it; the field counts after it stay right
    path.write_bytes(b'id,smiles\nx0,5" vial\nx1,"C,C"\nx2,CCO,extra\n')
    recs = _records(path, TableSpec(id_col="id"))
    assert [(r["line"], r["smiles"], r["pre_reject"]) for r in recs] == [
        (2, '5" vial', ""), (3, "C,C", ""), (4, "CCO", "too many fields: 3 where the header has 2")]


def test_blank_lines_bom_crlf_and_gzip(tmp_path: Path) -> None:
    content = b'\xef\xbb\xbfsmiles,id\r\nCCO,a\r\n\r\n , ,\r\nCCN,b\r\n,c\r\n'
    plain, packed = tmp_path / "a.csv", tmp_path / "a.csv.gz"
    plain.write_bytes(content)
    with gzip.open(packed, "wb") as fh:
        fh.write(content)
    for path in (plain, packed):
        recs = _records(path, TableSpec(id_col="ID"))
        # blank and separator-only lines are no records; an empty SMILES with an id is one
        assert [(r["line"], r["id"], r["smiles"]) for r in recs] == [(2, "a", "CCO"), (5, "b", "CCN"), (6, "c", "")]


def test_smi_comments_blank_lines_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "lib.smi.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"smiles name\nCCO ethanol\n# a comment\n\n   \n  #CCN indented comment\nCC\xe9O latin\nCCN\n")
    recs = _records(path)
    assert [(r["line"], r["id"], r["smiles"]) for r in recs] == [(2, "ethanol", "CCO"), (7, "latin", "CC\\xe9O"),
                                                                (8, "", "CCN")]
    assert recs[1]["pre_reject"].startswith("invalid UTF-8") and recs[2]["pre_reject"] == ""
    assert read_table(path).frame["line"].tolist() == [2, 7, 8]


def test_sdf_records_stream_with_an_id_property_and_gzip(tmp_path: Path) -> None:
    from rdkit import Chem

    path = tmp_path / "m.sdf.gz"
    with gzip.open(path, "wt") as fh:
        for i, smi in enumerate(["CCO", "c1ccccc1O", "CCN"]):
            mol = Chem.MolFromSmiles(smi)
            mol.SetProp("_Name", f"title{i}")
            if i != 1:
                mol.SetProp("CID", f"c{i}")
            fh.write(Chem.MolToMolBlock(mol) + f">  <CID>\nc{i}\n\n$$$$\n" * (i != 1) + "$$$$\n" * (i == 1))
    recs = _records(path, TableSpec(id_col="cid"), chunk_size=2)
    assert [(r["line"], r["id"], r["smiles"]) for r in recs] == [(1, "c0", "CCO"), (2, "", "Oc1ccccc1"),
                                                                (3, "c2", "CCN")]
    assert [r["id"] for r in _records(path)] == ["title0", "title1", "title2"]


def test_chunks_have_exactly_chunk_size_records(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("smiles\n" + "".join(f"{'C' * (1 + i % 5)}\n" for i in range(25)))
    sizes = [len(c) for c in iter_records(path, chunk_size=7)]
    assert sizes == [7, 7, 7, 4]
    assert list(next(iter_records(path, chunk_size=7)).columns) == ["line", "id", "smiles", "pre_reject"]


def test_random_csv_lines_stay_physical_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random rows (quoted newlines, commas, quotes, non-ASCII, bad bytes, blank lines) in tiny
    blocks, so that records straddle blocks and both parsers run: every record keeps its line."""
    import csv
    import io

    import fedmol.datasets.readers as readers

    rng = np.random.default_rng(0)
    pieces = ["C", "O", "N", "c1ccccc1", ",", '"', "\n", "é", " ", "x"]
    for trial in range(20):
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "smiles", "note"])
        expected = []  # (physical line, id, has a bad byte)
        chunks: list[bytes] = [buf.getvalue().encode()]
        line = 2
        for i in range(int(rng.integers(1, 40))):
            if rng.random() < 0.1:
                chunks.append(b"\n")
                line += 1
                continue
            note = "".join(rng.choice(pieces, size=int(rng.integers(0, 8))))
            buf = io.StringIO(newline="")
            csv.writer(buf, lineterminator="\n").writerow([f"r{i}", "CCO", note])
            row = buf.getvalue().encode()
            bad = rng.random() < 0.1
            if bad:
                row = row.replace(b"CCO", b"C\xffO")
            chunks.append(row)
            expected.append((line, f"r{i}", bad))
            line += row.count(b"\n")
        path = tmp_path / f"r{trial}.csv"
        path.write_bytes(b"".join(chunks))
        monkeypatch.setattr(readers, "_BLOCK_BYTES", int(rng.integers(8, 64)))
        recs = _records(path, TableSpec(id_col="id"), chunk_size=3)
        got = [(r["line"], r["id"], r["pre_reject"] != "") for r in recs]
        assert got == expected, path.read_bytes()
