"""`fedmol site ledger`: one line per reply within 80 columns by default, every array in full with --full,
the raw lines with --json; the ledger written by the site's own `SiteNode.record_outbox`."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fedmol import wire
from fedmol.cli import main
from fedmol.client.ledger import compact_lines, digest, read_ledger
from fedmol.client.site import RoundReply, SiteNode

ARRAYS = {  # long names and a large trunk, as the real model sends
    "trunk.layers.0.weight": np.arange(64 * 2048, dtype=np.float32).reshape(64, 2048),
    "trunk.layers.0.bias": np.zeros(64, np.float32),
    "heads.consortium.classification.weight": np.ones((12, 64), np.float32),
    "heads.consortium.classification.bias": np.zeros(12, np.float32),
}
REPORT = {wire.REP_SITE: "acme", wire.REP_TASK_METRICS: json.dumps({"test": {"NR-AR": {"roc_auc": 0.7}}})}


@pytest.fixture
def store(tmp_path):
    """A site that sent three rounds of a federation: a train reply (the update) and an evaluate reply each."""
    site = SiteNode(tmp_path / "acme")
    site.store_path.mkdir()
    for rnd in (1, 2, 3):
        arrays = {k: v + rnd for k, v in ARRAYS.items()}
        site.record_outbox(RoundReply(arrays, {wire.TRAIN_LOSS: 0.5, wire.NUM_TRAIN_LABELS: 40.0}, REPORT),
                           phase="train", server_round=rnd, federation_id="3f2a9c1b7d0e")
        site.record_outbox(RoundReply(None, {wire.VALID_LOSS: 0.4, wire.TEST_LOSS: 0.5}, REPORT),
                           phase="evaluate", server_round=rnd, federation_id="3f2a9c1b7d0e")
    return site.store_path


def test_the_default_view_is_one_line_per_reply_within_80_columns(store, capsys):
    assert main(["site", "ledger", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    header, rows, total = lines[0], lines[1:-1], lines[-1]
    assert header.split() == ["time", "federation", "round", "phase", "arrays", "bytes", "digest"]
    assert len(rows) == 6  # three rounds, a train and an evaluate reply each
    entries = read_ledger(store)
    for row, entry in zip(rows, entries, strict=True):
        cells = row.split()
        assert cells[2:5] == ["3f2a9c1b7d0e", str(entry["round"]), entry["phase"]]
        if entry["phase"] == "train":
            assert cells[5:] == ["4", "527.7", "kB", digest(entry)[:12]]  # (64 x 2048 + 64 + 768 + 12) x 4 B
        else:
            assert cells[5:] == ["0", "0", "B", "-"]
    digests = {row.split()[-1] for row in rows if " train " in row}
    assert len(digests) == 3  # each round's update has its own digest
    assert total == "6 replies, 1 federation, 1.6 MB sent"


def test_the_digest_is_the_sha256_of_the_arrays_sha256s_in_order(store):
    entry = read_ledger(store)[0]
    hashes = [hashlib.sha256(np.ascontiguousarray(v + 1).tobytes()).hexdigest() for v in ARRAYS.values()]
    assert digest(entry) == hashlib.sha256("".join(hashes).encode()).hexdigest()


def test_full_shows_every_array_with_its_whole_sha256_and_the_keys_sent(store, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # the width that used to cut every column
    assert main(["site", "ledger", str(store), "--full"]) == 0
    out = capsys.readouterr().out
    expected = [[a["name"], "x".join(map(str, a["shape"])), "float32", f"{a['bytes']:,}", a["sha256"]]
                for entry in read_ledger(store) for a in entry["arrays"]]
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip().startswith(("trunk.", "heads."))]
    assert rows == expected  # one row per array, whole: as wide as it takes
    assert "…" not in out  # nothing cut
    assert "train-loss" in out and "NR-AR" in out
    assert out.count("round 2 train") == 1 and out.count("round 2 evaluate") == 1


def test_json_prints_the_raw_lines(store, capsys):
    assert main(["site", "ledger", str(store), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == read_ledger(store)


def test_a_missing_or_broken_ledger_is_named(tmp_path, store, capsys):
    assert main(["site", "ledger", str(tmp_path / "nowhere")]) == 2
    with (store / "outbox.jsonl").open("a") as fh:
        fh.write("{not json\n")
    assert main(["site", "ledger", str(store)]) == 2
    assert "outbox.jsonl line 7: not a JSON object" in capsys.readouterr().err.replace("\n", "")


def test_compact_lines_fit_80_columns_with_long_values():
    entry = {"time": "2026-12-01T10:22:01+0100", "federation_id": "f" * 40, "round": 12345, "phase": "evaluate",
             "arrays": [{"sha256": "a" * 64}] * 999, "bytes_total": 9.99e12}
    assert all(len(line) <= 80 for line in compact_lines([entry] * 3))


def test_help_teaches_the_views(capsys):
    assert main(["site", "ledger", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--full" in out and "--json" in out and "one line per reply" in out and "80 columns" in out
