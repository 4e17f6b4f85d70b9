from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmol.datasets.structures as structures
from fedmol.datasets.prepare import PrepareSettings, prepare_file, prepare_frame
from fedmol.datasets.readers import TableSpec
from fedmol.datasets.store import SiteStore


def test_duplicates_merge_and_a_conflict_clears_only_its_label(tmp_path: Path, key: bytes) -> None:
    """Benzoic acid and its salt agree on tox, disagree on act; ethylamine's pic50 values span 3.5 > 1:
    every row stays, only those two labels are cleared and listed with their lines in conflicts.csv."""
    path = tmp_path / "dups.csv"
    path.write_text(
        "cid,smiles,act,tox,pic50\n"
        "e1,CCO,1,0,5.0\n"  # line 2
        "e2,OCC,1,,5.4\n"  # line 3: ethanol again, agrees: merged
        "b1,[Na+].[O-]C(=O)c1ccccc1,0,1,6.0\n"  # line 4
        "b2,OC(=O)c1ccccc1,1,1,6.1\n"  # line 5: act conflicts, tox and pic50 agree
        "n1,CCN,0,0,4.0\n"  # line 6
        "n2,NCC,0,,7.5\n"  # line 7: pic50 outside the tolerance
        "a1,c1ccccc1N,1,,<5\n"  # line 8
        "a2,Nc1ccccc1,,,4.2\n"  # line 9: '<5' and 4.2 agree
        "x1,not a smiles,1,,5\n"  # line 10
        "x2,,0,,5\n"  # line 11
    )
    res = prepare_file(path, key, tmp_path / "s", PrepareSettings(table=TableSpec(id_col="cid")), workers=1,
                       progress=False)
    assert res.rejects["line"].tolist() == [10, 11]
    s = res.summary
    assert (s["read"], s["kept"], s["rejected"]) == (10, 8, 2) and s["kept"] + s["rejected"] == s["read"]
    assert s["compounds"] == 4 and s["merged_duplicate_rows"] == 4
    c = s["conflicts"]
    assert (c["labels_cleared"], c["values_involved"], c["rows_involved"]) == (2, 4, 4)
    assert c["rows_rejected_all_labels_conflicting"] == 0
    assert c["by_task"] == {"act": 1, "pic50": 1}
    assert c["by_reason"] == {"classes differ": 1, "values spread beyond the tolerance": 1}
    store = SiteStore.load(tmp_path / "s")
    row = dict(zip(store.compounds["smiles"], range(store.n_compounds), strict=True))
    j = {t: store.task_names.index(t) for t in ("act", "tox", "pic50")}
    acid, amine, ethanol, aniline = row["O=C(O)c1ccccc1"], row["CCN"], row["CCO"], row["Nc1ccccc1"]
    assert np.isnan(store.Y[acid, j["act"]])  # cleared ...
    assert store.Y[acid, j["tox"]] == 1 and store.Y[acid, j["pic50"]] == pytest.approx(6.05)  # ... the rest kept
    assert np.isnan(store.Y[amine, j["pic50"]]) and store.Y[amine, j["act"]] == 0 and store.Y[amine, j["tox"]] == 0
    assert store.Y[ethanol, j["act"]] == 1 and store.Y[ethanol, j["pic50"]] == pytest.approx(5.2)
    assert store.Y[aniline, j["pic50"]] == pytest.approx(4.2) and store.censor[aniline, j["pic50"]] == 0
    assert store.compounds.set_index("smiles").loc["O=C(O)c1ccccc1", "id"] == "b1"
    on_disk = pd.read_csv(tmp_path / "s" / "conflicts.csv", dtype=str)
    assert on_disk.to_dict("records") == [
        {"task": "act", "smiles": "O=C(O)c1ccccc1", "id": "b1", "lines": "4;5", "values": "0;1",
         "reason": "classes differ"},
        {"task": "pic50", "smiles": "CCN", "id": "n1", "lines": "6;7", "values": "4;7.5",
         "reason": "values spread beyond the tolerance: span 3.5 > 1"},
    ]
    assert store.summary["conflicts"] == c
    assert res.conflicts.astype(str).equals(on_disk.astype(str))


def test_a_row_whose_every_label_conflicts_is_rejected_with_its_reason(key: bytes) -> None:
    """Long format: each row holds one label. Rows left with nothing are rejected ('all labels
    conflicting'); the compound stays through its other rows; censored values can conflict too."""
    df = pd.DataFrame({
        "cid": ["e1", "e2", "e3", "n1", "n2", "b1", "b2"],
        "smiles": ["CCO", "OCC", "CCO", "CCN", "CCN", "c1ccccc1", "c1ccccc1"],
        "task": ["A", "A", "B", "A", "A", "A", "A"],
        "value": ["5.0", "8.0", "3.0", "<4", ">6", "7.0", "<5"],
    })
    settings = PrepareSettings(table=TableSpec(id_col="cid", layout="long"))
    res = prepare_frame(df, key, None, settings, workers=1)
    rej = res.rejects.set_index("line")["reason"]
    assert rej.index.tolist() == [2, 3, 5, 6, 7, 8]  # line 4 (CCO, B) keeps ethanol in the store
    assert rej[2] == "all labels conflicting: A (lines 2, 3; see conflicts.csv)"
    s = res.summary
    assert (s["read"], s["kept"], s["rejected"]) == (7, 1, 6)
    assert s["rejected_by_reason"] == {"all labels conflicting": 6}
    assert s["conflicts"]["labels_cleared"] == 3 and s["conflicts"]["rows_rejected_all_labels_conflicting"] == 6
    assert res.store.compounds[["id", "smiles"]].values.tolist() == [["e3", "CCO"]]
    assert np.isnan(res.store.Y[0, res.store.task_names.index("A")])
    assert res.store.Y[0, res.store.task_names.index("B")] == 3
    reasons = dict(zip(res.conflicts["smiles"], res.conflicts["reason"], strict=True))
    assert reasons["CCN"] == "censored values point both ways"
    assert reasons["c1ccccc1"].startswith("censored value contradicts the exact ones: '<5' is below their mean 7")
    assert res.conflicts.set_index("smiles").loc["CCN", "values"] == "<4;>6"
    # id: the compound's id in the store (its first kept row), else the first line's
    assert res.conflicts.set_index("smiles")["id"].to_dict() == {"CCO": "e3", "CCN": "n1", "c1ccccc1": "b1"}


def test_bad_value_rejects_the_row_naming_the_column(key: bytes) -> None:
    df = pd.DataFrame({"smiles": ["CCO", "CCN", "CCC"], "y": ["1.0", "oops", "<2"]})
    res = prepare_frame(df, key, None, PrepareSettings(), workers=1)
    assert res.rejects["reason"].tolist() == ["bad value: 'oops' in column y"]
    assert res.rejects["line"].tolist() == [3]
    assert res.summary["kept"] + res.summary["rejected"] == 3


def test_censored_values_survive_the_store_round_trip(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "long.csv"
    rows = ["cid,smiles,assay,value,qualifier"]
    smiles = ["CCO", "CCN", "CCC", "c1ccccc1", "CC(=O)O", "c1ccncc1"]
    quals = ["<", ">", "", "=", ">", ""]
    for i, (s, q) in enumerate(zip(smiles, quals, strict=True)):
        rows.append(f"c{i},{s},A,{5 + i},{q}")
        rows.append(f"c{i},{s},B,{'<' if i % 2 else ''}{3 + i},")
    path.write_text("\n".join(rows) + "\n")
    settings = PrepareSettings(table=TableSpec(id_col="cid", layout="long", task_col="assay",
                                               qualifier_col="qualifier"))
    res = prepare_file(path, key, tmp_path / "store", settings, workers=1, progress=False)
    assert res.summary["read"] == 12 and res.summary["kept"] == 12 and res.summary["compounds"] == 6
    loaded = SiteStore.load(tmp_path / "store")
    order = loaded.compounds["id"].tolist()
    assert order == [f"c{i}" for i in range(6)]
    a, b = loaded.task_names.index("A"), loaded.task_names.index("B")
    assert loaded.censor[:, a].tolist() == [-1, 1, 0, 0, 1, 0]
    assert loaded.Y[:, a].tolist() == [5, 6, 7, 8, 9, 10]
    assert loaded.censor[:, b].tolist() == [0, -1, 0, -1, 0, -1]
    assert loaded.tasks[a].n_censored == 3 and loaded.tasks[a].kind == "regression"
    assert not loaded.tasks[a].trainable and "values < 50" in loaded.tasks[a].reason
    assert loaded.settings["key_fingerprint"] == res.summary["key_fingerprint"]
    assert loaded.settings["reference_hash"] == res.summary["reference_hash"]


def test_unreadable_rows_are_rejected_alone_and_lines_stay_physical(tmp_path: Path, key: bytes) -> None:
    """A bad UTF-8 byte or an extra field rejects its row only (the file is no longer refused as a
    whole); a quoted field over two lines does not shift the lines after it; labels read as before."""
    path = tmp_path / "a.csv"
    path.write_bytes(b'cid,smiles,y,note\nc1,CCO,1.5,"two\nlines"\nc2,CC\xffN,NA,x\nc3,CCC,2.5,a,b\n'
                     b"c4,c1ccccc1O,NA,\nc5,CCCN,3.5,z\n")
    res = prepare_file(path, key, None, PrepareSettings(table=TableSpec(id_col="cid")), workers=1, progress=False)
    assert res.rejects["line"].tolist() == [4, 5]
    assert res.rejects["reason"].tolist() == [
        "invalid UTF-8: byte 0xFF in line 4, column 6 (save the file as UTF-8)",
        "too many fields: 5 where the header has 4"]
    assert res.store.compounds["line"].tolist() == [2, 6, 7]
    assert res.store.task_names == ["y"]  # "NA" is a missing value, as pd.read_csv reads it
    assert np.array_equal(res.store.Y[:, 0], [1.5, np.nan, 3.5], equal_nan=True)
    assert (res.summary["read"], res.summary["kept"], res.summary["rejected"]) == (5, 3, 2)


def test_threshold_turns_values_into_classes(key: bytes) -> None:
    df = pd.DataFrame({"smiles": ["CCO", "CCN", "CCC", "CCCC"], "p": ["7", ">8", "<5", ">5"]})
    settings = PrepareSettings(thresholds=(("p", 6.0),))
    res = prepare_frame(df, key, None, settings, workers=1)
    task = res.store.tasks[0]
    assert task.kind == "classification" and task.threshold == 6.0
    assert np.array_equal(res.store.Y[:, 0], [1, 1, 0, np.nan], equal_nan=True)
    assert res.summary["ambiguous_censored"] == {"p": 1}
    assert res.summary["kept"] == 4


def test_pool_and_in_process_give_the_same_store(key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmol.datasets.embedded import freesolv

    df = freesolv().head(300)
    settings = PrepareSettings(table=TableSpec(id_col="iupac", task_cols=("expt",)))
    one = prepare_frame(df, key, None, settings, workers=1).store
    monkeypatch.setattr(structures, "_IN_PROCESS_BELOW", 0)
    two = prepare_frame(df, key, None, settings, workers=2).store
    assert (one.X != two.X).nnz == 0
    assert np.array_equal(one.folds, two.folds)
    assert np.array_equal(one.Y, two.Y, equal_nan=True)
    assert one.compounds.equals(two.compounds)


def test_unknown_threshold_task_is_an_input_error(key: bytes) -> None:
    from fedmol.errors import InputError

    df = pd.DataFrame({"smiles": ["CCO"], "p": [1.0]})
    with pytest.raises(InputError, match="unknown task"):
        prepare_frame(df, key, None, PrepareSettings(thresholds=(("q", 1.0),)), workers=1)


def test_loading_and_subsetting_a_store_needs_no_rdkit(tmp_path: Path, key: bytes) -> None:
    import subprocess
    import sys

    df = pd.DataFrame({"smiles": ["CCO", "CCN", "c1ccccc1"], "y": [1, 0, 1]})
    prepare_frame(df, key, tmp_path / "s", PrepareSettings(), workers=1)
    code = (
        "import sys\n"
        "from fedmol.datasets.store import SiteStore\n"
        f"s = SiteStore.load({str(tmp_path / 's')!r}).subset([0, 2])\n"
        "assert s.n_compounds == 2 and s.X.shape[1] == 32768\n"
        "assert 'rdkit' not in sys.modules, 'rdkit imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
