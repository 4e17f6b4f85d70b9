"""Property-based tests (hypothesis) of the one reader and of standardisation (#13, fuzzing).

Generated input: random bytes in every format, CSV/TSV written from random rows (quoted commas,
quotes and line breaks, CR/LF, wrong field counts) in odd encodings (UTF-8 with and without a BOM,
latin-1, UTF-16), tiny read blocks, gzip; SMILES-like text with brackets, ring digits, ``%``, dots,
NULs and lone surrogates. What must hold: nothing but an `InputError` (a whole file that cannot be
read) or a `MoleculeReject` (one structure) ever comes out; every record keeps its physical line and
is either accepted or rejected with a reason (one naming a line names one of the record's own);
``kept + rejected = read``; `fedmol prepare`'s whole-file read and `fedmol score`'s stream agree.

Bounded and deterministic: the examples per test are few (``FEDMOL_FUZZ_SCALE`` multiplies them), and
the "fedmol" profile of tests/conftest.py derandomises hypothesis, so CI draws the same ones each run.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdkit import Chem

import fedmol.datasets.readers as readers
from fedmol.datasets.readers import TableSpec, iter_records, read_table
from fedmol.datasets.standardize import MoleculeReject, Standardizer, StandardizeSettings
from fedmol.errors import InputError

SCALE = int(os.environ.get("FEDMOL_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


# -- SMILES-like text -------------------------------------------------------------------------------
SMILES_TOKENS = ["C", "c", "N", "n", "O", "o", "S", "P", "F", "Cl", "Br", "I", "B", "H", "[nH]", "[C@@H]",
                 "[C@H]", "[NH4+]", "[O-]", "[Na+]", "[Fe]", "[U+6]", "[13C]", "[2H]", "[300U]", "[Hg+2]", "*",
                 "[*:1]", "(", ")", "[", "]", "=", "#", "$", ":", "/", "\\", "@", "+", "-", ".", "%", "%10", "%99",
                 "1", "2", "3", "9", "0", "c1ccccc1", "C1CC1", " ", "\t", "\x00", "\ud800", "\udfff", "\udc80",
                 "é", "字", "\u200b", "\n"]
smiles_like = st.lists(st.sampled_from(SMILES_TOKENS), max_size=30).map("".join) | st.text(max_size=20)

STANDARDIZERS = {flag: Standardizer(StandardizeSettings(enabled=flag)) for flag in (True, False)}


@fuzz(300)
@given(smiles=smiles_like, enabled=st.booleans())
def test_standardisation_accepts_or_rejects_with_a_reason(smiles: str, enabled: bool) -> None:
    std = STANDARDIZERS[enabled]
    try:
        mol = std.from_smiles(smiles)
    except MoleculeReject as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip()
        return
    assert mol.GetNumAtoms() > 0 and mol.GetNumHeavyAtoms() <= std.settings.max_heavy_atoms
    Chem.MolToSmiles(mol).encode("utf-8")  # an accepted structure has a canonical SMILES to write


def test_a_lone_surrogate_is_a_reject_not_an_encoding_error() -> None:
    """Found by the fuzz test above: RDKit raised UnicodeEncodeError for "\\ud800" (and "C\\udcffO"),
    which `fedmol prepare` did not catch (a Python frame with such a SMILES failed as a whole)."""
    for smiles in ("\ud800", "C\udcffO"):
        for std in STANDARDIZERS.values():
            with pytest.raises(MoleculeReject, match="not valid Unicode"):
                std.from_smiles(smiles)


# -- records, as both commands read them ------------------------------------------------------------
def _records(path: Path, spec: TableSpec | None) -> list[dict]:
    return [r for chunk in iter_records(path, spec, chunk_size=7) for r in chunk.to_dict("records")]


def _physical_lines(data: bytes) -> int:
    return data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))


LINE_IN_REASON = re.compile(r"\bline (\d+)\b")


def _check_records(records: list[dict], n_lines: int, ends: list[int] | None = None) -> None:
    """Lines strictly increasing within the file; each reason names (if any) one of its record's lines;
    all text writable as UTF-8."""
    lines = [r["line"] for r in records]
    assert lines == sorted(set(lines)), lines
    assert all(1 <= n <= n_lines for n in lines), (lines, n_lines)
    for i, r in enumerate(records):
        assert isinstance(r["pre_reject"], str) and isinstance(r["smiles"], str) and isinstance(r["id"], str)
        (r["id"] + r["smiles"] + r["pre_reject"]).encode("utf-8")  # rejects.csv and outputs can hold it
        last = ends[i] if ends else (lines[i + 1] - 1 if i + 1 < len(lines) else n_lines)
        for named in LINE_IN_REASON.findall(r["pre_reject"]):
            assert r["line"] <= int(named) <= last, (r, last)


def _read_both(path: Path, spec: TableSpec | None) -> list[dict] | None:
    """The records `fedmol score` streams and, checked equal, those `fedmol prepare` reads (None:
    both refuse the whole file with an InputError)."""
    try:
        streamed = _records(path, spec)
    except InputError:
        streamed = None
    try:
        table = read_table(path, spec)
    except InputError:
        assert not streamed, "prepare refused a file that score reads"
        return streamed
    assert streamed is not None, "score refused a file that prepare reads"
    whole = table.frame[["line", "id", "smiles", "pre_reject"]].to_dict("records")
    assert whole == streamed
    return streamed


BYTE_TOKENS = [b"\n", b"\r\n", b"\r", b",", b"\t", b'"', b'""', b"\x00", b"\xff", b"\xe9", b"\xc3", b"\xef\xbb\xbf",
               b"\xff\xfe", b" ", b"$$$$\n", b"M  END\n", b"> <id>\n", b"CCO", b"c1ccccc1", b"smiles", b"#", b"x"]
random_bytes = st.lists(st.binary(max_size=6) | st.sampled_from(BYTE_TOKENS), max_size=40).map(b"".join)


@fuzz(120)
@given(fmt=st.sampled_from(["csv", "tsv", "smi", "sdf"]), header=st.booleans(), body=random_bytes,
       packed=st.booleans(), block=st.sampled_from([8, 64, 1 << 20]))
def test_random_bytes_become_records_or_one_input_error(fmt: str, header: bool, body: bytes, packed: bool,
                                                        block: int) -> None:
    data = ((b"id,smiles\n" if fmt == "csv" else b"id\tsmiles\n" if fmt == "tsv" else b"") if header else b"") + body
    spec = TableSpec(id_col="id") if fmt in ("csv", "tsv") and header else None
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(readers, "_BLOCK_BYTES", block)
        path = Path(tmp) / f"f.{fmt}{'.gz' if packed else ''}"
        path.write_bytes(gzip.compress(data) if packed else data)
        records = _read_both(path, spec)
    if not records:
        return
    if fmt == "sdf":  # line is the record's index; each record ends at $$$$ (or the end of the file)
        assert [r["line"] for r in records] == list(range(1, len(records) + 1))
        assert len(records) <= data.count(b"$$$$") + 1
        return
    _check_records(records, _physical_lines(data.removeprefix(codecs.BOM_UTF8)))


# -- CSV/TSV written from rows, with what each record must be -----------------------------------------
FIELD_TOKENS = ["C", "O", "N", "c1ccccc1", "(", ")", "=", "[nH]", "%10", ".", " ", ",", "\t", '"', "\n", "\r\n", "\r",
                "x", "#", "NA", "null", "1.5", "<5"]
WIDE_TOKENS = ["é", "ü", "µ", "字", "😀", "\u2028", "\x85"]  # non-ASCII (only é and ü in latin-1 files)
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16"]
HEADER = ["id", "smiles", "note"]


@dataclass
class Written:
    data: bytes
    expected: list[tuple[int, int, str, str, str]]  # (first line, last line, id, smiles, reason prefix)


@st.composite
def written_tables(draw: st.DrawFn) -> Written:
    encoding = draw(st.sampled_from(ENCODINGS))
    sep = draw(st.sampled_from([",", "\t"]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    wide = ["é", "ü"] if encoding == "latin-1" else WIDE_TOKENS
    # A lone CR goes into a field only where the writer quotes it (CRLF files): unquoted, it is a row
    # the CSV syntax cannot read (tests/datasets/test_readers.py), and what follows it on its line is lost.
    tokens = FIELD_TOKENS if newline == "\r\n" else [t for t in FIELD_TOKENS if t != "\r"]
    field = st.lists(st.sampled_from(tokens + wide), max_size=6).map("".join)
    rows = draw(st.lists(st.tuples(field, st.lists(field, max_size=4)), min_size=1, max_size=12))
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=sep, lineterminator=newline)
    writer.writerow(HEADER)
    line = buf.getvalue().count("\n") + 1
    expected = []
    for i, (smiles, rest) in enumerate(rows):
        fields = [f"r{i}", smiles, *rest]  # an id first: no row is blank
        start = len(buf.getvalue())
        writer.writerow(fields)
        text = buf.getvalue()[start:]
        last = line + text.count("\n") - 1
        if encoding == "latin-1" and any(c in text for c in wide):
            reason = "invalid UTF-8: byte 0x"
        elif len(fields) > len(HEADER):
            reason = f"too many fields: {len(fields)} where the header has {len(HEADER)}"
        else:
            reason = ""
        expected.append((line, last, f"r{i}", smiles.strip(), reason))
        line = last + 1
    return Written(buf.getvalue().encode(encoding), expected)


@fuzz(80)
@given(table=written_tables(), packed=st.booleans(), block=st.sampled_from([16, 100, 1 << 20]))
def test_written_rows_come_back_on_their_lines_with_their_reasons(table: Written, packed: bool, block: int) -> None:
    sep_tsv = b"id\tsmiles" in table.data.lstrip(codecs.BOM_UTF8)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(readers, "_BLOCK_BYTES", block)
        path = Path(tmp) / f"t.{'tsv' if sep_tsv else 'csv'}{'.gz' if packed else ''}"
        path.write_bytes(gzip.compress(table.data) if packed else table.data)
        records = _read_both(path, TableSpec(id_col="id"))
    if table.data.startswith(codecs.BOM_UTF16_LE):  # UTF-16: the header is no UTF-8, the file is refused
        assert records is None
        return
    assert records is not None
    got = [(r["line"], r["id"], r["pre_reject"]) for r in records]
    assert len(records) == len(table.expected), got
    for r, (first, _, rid, smiles, reason) in zip(records, table.expected, strict=True):
        assert r["line"] == first, (got, table.expected)
        assert r["pre_reject"].startswith(reason) and bool(r["pre_reject"]) == bool(reason), (r, reason)
        if not reason:
            assert (r["id"], r["smiles"]) == (rid, smiles)
    _check_records(records, _physical_lines(table.data), ends=[e[1] for e in table.expected])


# -- `fedmol prepare` on those files: kept + rejected = read, every reject on its line ----------------
@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from fedmol.datasets.keys import generate_key_file, load_key

    return load_key(generate_key_file(tmp_path_factory.mktemp("fuzz") / "consortium.key"))


@fuzz(8)
@given(table=written_tables())
def test_prepare_keeps_or_rejects_every_record_on_its_line(key: bytes, table: Written) -> None:
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.prepare import PrepareSettings, prepare_file

    settings_ = PrepareSettings(table=TableSpec(id_col="id", task_cols=()), featurize=FeaturizeSettings(n_bits=64))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("t.tsv" if b"id\tsmiles" in table.data else "t.csv")
        path.write_bytes(table.data)
        try:
            result = prepare_file(path, key, None, settings_, workers=1, progress=False)
        except InputError as exc:  # a whole file refused: UTF-16, or no structure left
            assert table.data.startswith(codecs.BOM_UTF16_LE) or "no " in str(exc), exc
            return
    summary, rejects = result.summary, result.rejects
    assert summary["read"] == len(table.expected)
    assert summary["kept"] + summary["rejected"] == summary["read"]
    assert len(rejects) == summary["rejected"] and (rejects["reason"].str.len() > 0).all()
    firsts = {e[0]: e for e in table.expected}
    for line, reason in zip(rejects["line"], rejects["reason"], strict=True):
        assert line in firsts
        assert reason.startswith(firsts[line][4])
    assert {e[0] for e in table.expected if e[4]} <= set(rejects["line"])
