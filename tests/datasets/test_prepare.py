from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmol.datasets.structures as structures
from fedmol.datasets.prepare import PrepareSettings, prepare_file, prepare_frame
from fedmol.datasets.readers import TableSpec
from fedmol.datasets.store import SiteStore


def test_duplicates_merge_or_conflict(tmp_path: Path, key: bytes) -> None:
    df = pd.DataFrame({
        "smiles": ["CCO", "OCC", "[Na+].[O-]C(=O)c1ccccc1", "OC(=O)c1ccccc1", "CCN", "NCC",
                   "c1ccccc1N", "Nc1ccccc1", "not a smiles", ""],
        "act": [1, 1, 0, 1, 0, 0, 1, np.nan, 1, 0],  # benzoic acid and its salt disagree
        "pic50": [5.0, 5.4, 6.0, 6.1, 4.0, 7.5, "<5", 4.2, 5, 5],  # ethylamine spread 3.5 > 1
    })
    res = prepare_frame(df, key, tmp_path / "s", PrepareSettings(), workers=1)
    rej = res.rejects.set_index("line")["reason"]
    assert rej[4].startswith("duplicate with conflicting labels: act") and rej[5] == rej[4]
    assert rej[6].startswith("duplicate with conflicting labels: pic50")
    assert rej[10].startswith("unparsable SMILES") and rej[11] == "empty SMILES"
    assert len(res.rejects) == 6
    s = res.summary
    assert (s["read"], s["kept"], s["rejected"]) == (10, 4, 6)
    assert s["compounds"] == 2 and s["merged_duplicate_rows"] == 2
    store = res.store
    by_smiles = dict(zip(store.compounds["smiles"], range(store.n_compounds), strict=True))
    j_act, j_pic = store.task_names.index("act"), store.task_names.index("pic50")
    ethanol, aniline = by_smiles["CCO"], by_smiles["Nc1ccccc1"]
    assert store.Y[ethanol, j_act] == 1 and store.Y[ethanol, j_pic] == pytest.approx(5.2)
    # '<5' and 4.2 agree (4.2 < 5): merged to the exact value
    assert store.Y[aniline, j_pic] == pytest.approx(4.2) and store.censor[aniline, j_pic] == 0
    assert store.tasks[j_act].kind == "classification" and store.tasks[j_pic].kind == "regression"
    on_disk = pd.read_csv(tmp_path / "s" / "rejects.csv")
    assert list(on_disk.columns) == ["line", "id", "smiles", "reason"] and len(on_disk) == 6


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
