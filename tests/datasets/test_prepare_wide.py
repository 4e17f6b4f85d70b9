"""`fedmol prepare` on a wide file of 155 assay columns: no pandas warnings, per-task notes counted."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmol.cli import main
from fedmol.datasets.tasks import reason_kinds


def _wide_file(path: Path, n_tasks: int = 155, n_rows: int = 400) -> Path:
    from fedmol.datasets.embedded import solubility

    rng = np.random.default_rng(0)
    smiles = solubility()["smiles"].head(n_rows).tolist()
    n = len(smiles)
    # sparse labels, ~40 per task: trainable where >= 25/25 is reached, otherwise excluded; few evaluable
    cols = {f"assay_{i:03d}": np.where(rng.random(n) < (0.3 if i % 2 else 0.1), rng.integers(0, 2, n), np.nan)
            for i in range(n_tasks)}
    pd.DataFrame({"cid": [f"c{i}" for i in range(n)], "smiles": smiles, **cols}).to_csv(path, index=False)
    return path


def test_wide_file_prepares_without_warnings_and_counts_task_notes(
        tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns otherwise
    source = _wide_file(tmp_path / "wide.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["prepare", str(source), "-k", str(key_file), "-o", str(tmp_path / "store"), "--id-col", "cid",
                     "--workers", "1", "--no-standardize"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [str(w.message) for w in caught] == []
    assert "PerformanceWarning" not in out + err
    summary = json.loads((tmp_path / "store" / "summary.json").read_text())
    assert summary["tasks_total"] == 155
    excluded, not_eval = summary["tasks_excluded"], summary["tasks_not_evaluable"]
    assert len(excluded) + len(not_eval) == 155 - summary["tasks_evaluable"] > 100  # the full list is here
    assert excluded and not_eval
    counts = summary["task_notes_by_reason"]
    expected: dict[str, int] = {}
    for reason in [*excluded.values(), *not_eval.values()]:
        for kind in set(reason_kinds(reason)):
            expected[kind] = expected.get(kind, 0) + 1
    assert counts == expected
    # the table: one line per kind of reason, no line per task
    assert "note:" not in out and "excluded assay_" not in out
    assert "not evaluable: actives/inactives below 10/10 in some fold" in out
    assert "tasks_excluded, tasks_not_evaluable" in out
    assert len(out.splitlines()) < 40


def test_reason_kinds_drop_the_counts() -> None:
    assert reason_kinds("") == []
    assert reason_kinds("12 actives < 25; 30 inactives < 25") == ["actives < 25", "inactives < 25"]
    assert reason_kinds("not evaluable, actives/inactives below 10/10 in fold 0: 8/15; fold 4: 12/9") == [
        "not evaluable: actives/inactives below 10/10 in some fold"]
    assert reason_kinds("40 values < 50; 20 uncensored values < 25") == ["values < 50", "uncensored values < 25"]
    assert reason_kinds("not evaluable, uncensored values below 10 in fold 2: 3") == [
        "not evaluable: uncensored values below 10 in some fold"]
