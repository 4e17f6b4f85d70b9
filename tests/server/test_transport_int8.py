"""transport-dtype=int8 through the server: decoding before validation and aggregation, and a short
in-process federation on a Tox21 slice whose int8 model matches the float32 one at ~1/4 of the upload.

The federation runs the real site (`SiteNode.train_round`: encode, outbox ledger) and the real
server wrapper (`HookedStrategy.aggregate_train`: decode, validate, FedAvg), without Flower's
transport, so it runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedmol import wire
from fedmol.client.download import received_model
from fedmol.config import FederationConfig
from fedmol.records import from_array_record, to_array_record
from fedmol.server.rounds import HookedStrategy
from fedmol.transport import SCALE_SUFFIX, apply_download, as_received, download_dtype, encode_update
from tests.server.messages import reply

GLOBAL = {"trunk.w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
          "heads.consortium_classification.b": np.array([0.5, -0.5], np.float32)}


def _strategy() -> HookedStrategy:
    s = HookedStrategy(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS))
    s._expected = {k: (v.shape, str(v.dtype)) for k, v in GLOBAL.items()}
    s._sent = to_array_record(GLOBAL)  # what configure_train keeps of the round's global model
    s._sampled["train"] = [1, 2, 3]
    return s


def test_int8_updates_are_decoded_against_the_sent_model_and_averaged():
    s = _strategy()
    trained = [{k: v + d for k, v in GLOBAL.items()} for d in (0.1, -0.3)]
    replies = [reply(n + 1, encode_update(t, GLOBAL, "int8", seed=n), w)
               for n, (t, w) in enumerate(zip(trained, (10, 30), strict=True))]
    agg, _ = s.aggregate_train(1, replies)
    assert agg is not None and set(agg.keys()) == set(GLOBAL)  # no scale arrays in the model
    for k, v in GLOBAL.items():
        out = agg[k].numpy()
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, v + (0.1 * 10 - 0.3 * 30) / 40, atol=1e-6)  # constant updates are exact


def test_malformed_int8_replies_are_rejected_with_a_reason():
    from tests.server.test_rounds import Recorder

    s = _strategy()
    s.hooks = [rec := Recorder()]
    good = encode_update({k: v + 0.1 for k, v in GLOBAL.items()}, GLOBAL, "int8", seed=0)
    no_scale = {k: v for k, v in good.items() if k != "trunk.w" + SCALE_SUFFIX}
    nan_scale = {**good, "trunk.w" + SCALE_SUFFIX: np.full(4, np.nan, np.float32)}
    s.aggregate_train(1, [reply(1, good, 10), reply(2, no_scale, 10), reply(3, nan_scale, 10)])
    rejected = dict(rec.outcomes[-1].rejected)
    assert [r.site for r in rec.outcomes[-1].reports] == ["site1"]
    assert "scales 'trunk.w#int8-scale' are missing" in rejected["site2"]
    assert "finite" in rejected["site3"]


DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TASKS = ["NR-AhR", "SR-ARE", "SR-p53"]
N_SITES, ROWS, N_BITS, ROUNDS = 3, 300, 1024, 3


@pytest.fixture(scope="module")
def tox21_sites(tmp_path_factory) -> list[Path]:
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.keys import generate_key_file, load_key
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec

    root = tmp_path_factory.mktemp("int8")
    key = load_key(generate_key_file(root / "consortium.key"))
    df = pd.read_csv(DATA / "tox21.csv.gz").head(N_SITES * ROWS)
    paths = []
    for i in range(N_SITES):
        part = df.iloc[i * ROWS:(i + 1) * ROWS].reset_index(drop=True)
        settings = PrepareSettings(table=TableSpec(smiles_col="smiles", id_col="mol_id", task_cols=tuple(TASKS)),
                                   featurize=FeaturizeSettings(n_bits=N_BITS))
        res = prepare_frame(part, key, None, settings, workers=1)
        res.store.settings["site_name"] = f"site{i}"
        paths.append(res.store.save(root / f"site-{i}"))
    return paths


def _federate(cfg: FederationConfig, stores: list[Path], tmp: Path
              ) -> tuple[dict[str, np.ndarray], list[dict], list[int]]:
    """ROUNDS rounds of FedAvg in process (the server's `HookedStrategy.configure_train` and
    `aggregate_train`, the sites' `train_round` on what the message carries, as the ClientApp reads
    it: `received_model`); the final global model, the sites' train ledger entries and the bytes of
    the model in every train message (round by round, site by site)."""
    import shutil

    from fedmol.client.site import SiteNode
    from fedmol.server.federation import initial_shared_arrays

    nodes = []
    for i, path in enumerate(stores):  # fresh copies: private heads and ledgers of this run only
        nodes.append(SiteNode(shutil.copytree(path, tmp / f"site-{i}"), f"site{i}"))
    class Grid:
        def get_node_ids(self) -> list[int]:
            return list(range(1, len(nodes) + 1))

    shared, _ = initial_shared_arrays(cfg)
    s = HookedStrategy(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS),
                       download_dtype=download_dtype(cfg))
    downloads = []
    for rnd in range(1, ROUNDS + 1):
        messages = list(s.configure_train(rnd, to_array_record(shared), ConfigRecord(), Grid()))
        assert len(messages) == len(nodes)
        replies = []
        for n, node in enumerate(nodes, start=1):
            msg = next(m for m in messages if m.metadata.dst_node_id == n)
            carried = from_array_record(msg.content[wire.ARRAYS])  # what the site receives
            downloads.append(sum(v.nbytes for v in carried.values()))
            if download_dtype(cfg) != "int8" or rnd == 1:  # int8: the first round sends the model whole
                want = "float32" if download_dtype(cfg) == "float32" else "float16"
                assert {str(v.dtype) for v in carried.values()} == {want}
            received = received_model(carried, msg.content[wire.CONFIG], store_path=node.store_path,
                                      federation_id="int8-test")  # as the ClientApp hands it to the site
            out = node.train_round(cfg, received, server_round=rnd, federation_id="int8-test")
            assert out.arrays is not None
            replies.append(reply(n, out.arrays, out.metrics[wire.NUM_TRAIN_LABELS], site=node.name))
        assert s.download_bytes == np.mean(downloads[-N_SITES:])  # the server's download-bytes-per-site
        agg, _ = s.aggregate_train(rnd, replies)
        assert agg is not None, f"round {rnd}: no aggregate"
        shared = from_array_record(agg)
    ledgers = [json.loads(line) for node in nodes for line in node.ledger_path.read_text().splitlines()]
    return shared, [e for e in ledgers if e["phase"] == "train"], downloads


@pytest.fixture
def serverapp_task(monkeypatch):
    """Flower's strategies build messages for the ServerApp's own task (as in a real run)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_an_int8_federation_learns_the_float32_model_at_a_quarter_of_the_upload(tox21_sites, tmp_path,
                                                                                 serverapp_task):
    cfg = FederationConfig(n_bits=N_BITS, hidden="32", num_threads=1, local_epochs=1, min_sites=N_SITES,
                           consortium_tasks=",".join(f"{t}:classification" for t in TASKS),
                           finetune_epochs=0, local_baseline=False)
    runs = {dtype: _federate(cfg.replace(transport_dtype=dtype), tox21_sites, tmp_path / dtype)
            for dtype in ("float32", "int8")}
    (full, full_ledger, full_down), (small, small_ledger, small_down) = runs["float32"], runs["int8"]
    assert set(small) == set(full) and all(small[k].dtype == np.float32 for k in small)
    moved = np.sqrt(sum(float(np.sum((full[k] - v) ** 2)) for k, v in initial(cfg).items()))
    diff = np.sqrt(sum(float(np.sum((small[k] - full[k]) ** 2)) for k in full))
    norm = np.sqrt(sum(float(np.sum(v ** 2)) for v in full.values()))
    # The int8 model is the float32 one up to quantisation noise: small against the model and
    # against how far the federation moved it in ROUNDS rounds.
    # (measured: 0.0013 and 0.0034)
    assert diff / norm < 0.01, (diff, norm)
    assert diff / moved < 0.03, (diff, moved)
    # The model comes down whole in round 1 (float16: half of float32), then as its change against
    # the copy each site kept, in int8 with a scale per row (about a quarter of float32 or less).
    per_round = [sum(small_down[r * N_SITES:(r + 1) * N_SITES]) / sum(full_down[r * N_SITES:(r + 1) * N_SITES])
                 for r in range(ROUNDS)]
    assert abs(per_round[0] - 0.5) < 0.01, per_round
    assert all(r <= 0.25 + 1 / 32 + 0.01 for r in per_round[1:]), per_round  # (measured: 0.28, 0.24)
    # The ledger records what was sent: int8 arrays plus their float32 scales, at most ~1/4 of the
    # bytes: the input layer (n_bits, hidden) has a scale per row, 4 bytes per `hidden` int8 values,
    # so 1/4 + 1/hidden of float32 before compression (0.281 at hidden 32; 0.2525 at the default
    # 32,768 x 400), less where the compressed int8 is smaller.
    assert len(small_ledger) == len(full_ledger) == N_SITES * ROUNDS
    ratio = sum(e["bytes_total"] for e in small_ledger) / sum(e["bytes_total"] for e in full_ledger)
    assert ratio <= 0.25 + 1 / 32 + 0.002, ratio
    dtypes = {a["name"]: a["dtype"] for a in small_ledger[0]["arrays"]}
    # int8, or uint8: the int8 bytes zlib-compressed where that saves a tenth (the input layer's
    # rows that no compound of the site set are zeros)
    assert all(dtypes[k] in ("int8", "uint8") and dtypes[k + SCALE_SUFFIX] == "float32" for k in full)
    assert dtypes["trunk.input.bag.weight"] == "uint8", dtypes


def initial(cfg: FederationConfig) -> dict[str, np.ndarray]:
    from fedmol.server.federation import initial_shared_arrays

    return initial_shared_arrays(cfg)[0]


def test_the_ledger_holds_exactly_the_int8_bytes_a_site_sends(tmp_path):
    from fedmol.client.site import SiteNode
    from fedmol.server.federation import initial_shared_arrays
    from tests.server.synthetic import write_sites

    cfg = FederationConfig(n_bits=128, hidden="8", consortium_tasks="c1:classification,c2:classification",
                           transport_dtype="int8", num_threads=1, local_epochs=1, finetune_epochs=0,
                           local_baseline=False)
    node = SiteNode(write_sites(tmp_path / "a", 1, n=120, n_bits=128)[0], "site0")
    twin = SiteNode(write_sites(tmp_path / "b", 1, n=120, n_bits=128)[0], "site0")  # the same store, fresh state
    shared, _ = initial_shared_arrays(cfg)
    out = node.train_round(cfg, shared, server_round=1, federation_id="f")
    again = twin.train_round(cfg, shared, server_round=1, federation_id="f")
    assert out.arrays is not None and again.arrays is not None
    assert all(np.array_equal(out.arrays[k], again.arrays[k]) for k in out.arrays)  # seeded: reproducible
    entry = json.loads(node.ledger_path.read_text().splitlines()[0])
    logged = {a["name"]: a for a in entry["arrays"]}
    assert set(logged) == set(out.arrays) == set(shared) | {k + SCALE_SUFFIX for k in shared}
    for name, arr in out.arrays.items():
        data = np.ascontiguousarray(arr)
        assert logged[name]["sha256"] == hashlib.sha256(data.tobytes()).hexdigest()
        assert (logged[name]["dtype"], logged[name]["bytes"]) == (str(data.dtype), data.nbytes)
    assert entry["bytes_total"] == sum(a.nbytes for a in out.arrays.values())


def test_int8_downloads_send_the_change_to_the_sites_that_hold_last_rounds_copy(serverapp_task):
    """Round 1 sends the model whole (float16) to everyone; round 2 the change to the sites that answered
    round 1 (against the copy they hold) and the whole copy, float32, to the one that did not."""
    class Grid:
        def get_node_ids(self) -> list[int]:
            return [1, 2, 3]

    rng = np.random.default_rng(0)
    model = {"trunk.w": rng.normal(size=(64, 16)).astype(np.float32), "b": np.zeros(16, np.float32)}
    s = HookedStrategy(FedAvg(weighted_by_key=wire.NUM_TRAIN_LABELS, arrayrecord_key=wire.ARRAYS),
                       download_dtype="int8")

    def send(rnd: int) -> dict[int, tuple[dict[str, np.ndarray], ConfigRecord]]:
        messages = s.configure_train(rnd, to_array_record(model), ConfigRecord(), Grid())
        return {m.metadata.dst_node_id: (from_array_record(m.content[wire.ARRAYS]), m.content[wire.CONFIG])
                for m in messages}

    first = send(1)
    assert all(v.dtype == np.float16 for arrays, _ in first.values() for v in arrays.values())
    tags = {str(config[wire.CFG_DOWNLOAD_TAG]) for _, config in first.values()}
    assert len(tags) == 1 and all(wire.CFG_DOWNLOAD_BASE not in config for _, config in first.values())
    held = as_received(first[1][0])
    s.aggregate_train(1, [reply(n, encode_update(held, held, "int8", seed=n), 10) for n in (1, 2)])  # 3: silent
    assert s.download_bytes == sum(v.nbytes for v in first[1][0].values())
    model["trunk.w"][:8] += 0.5  # the federation moved 8 rows
    second = send(2)
    (tag,) = tags
    for n in (1, 2):
        arrays, config = second[n]
        assert str(config[wire.CFG_DOWNLOAD_BASE]) == tag and arrays["trunk.w"].dtype in (np.int8, np.uint8)
    whole, config = second[3]
    assert wire.CFG_DOWNLOAD_BASE not in config and whole["trunk.w"].dtype == np.float32
    # The sites that applied the change and the one sent the whole copy hold the same model: the server's.
    applied = apply_download(second[1][0], held)
    assert all(np.array_equal(applied[k], whole[k]) for k in whole)
    assert all(np.array_equal(applied[k], s._received[k]) for k in whole)  # replies are decoded against it
    assert str(second[1][1][wire.CFG_DOWNLOAD_TAG]) == str(config[wire.CFG_DOWNLOAD_TAG])
    # 8 of 64 rows moved: the change is a small fraction of the float16 model
    assert sum(v.nbytes for v in second[1][0].values()) < 0.2 * sum(v.nbytes for v in first[1][0].values())
