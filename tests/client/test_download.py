"""The site's side of int8 downloads (`fedmol.client.download`): it keeps the copy of the shared model
it received, applies the next round's change to it, and refuses a change it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest

from fedmol import wire
from fedmol.client import download
from fedmol.client.download import DownloadError, copy_path, received_model
from fedmol.transport import as_received, encode_download, encode_download_delta, model_tag


def _model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"trunk.w": rng.normal(size=(8, 5)).astype(np.float32), "head.b": rng.normal(size=3).astype(np.float32)}


def test_a_site_keeps_the_copy_and_applies_the_next_change_even_from_a_fresh_process(tmp_path):
    first = encode_download(_model(0), "float16")
    held = as_received(first)
    got = received_model(first, {wire.CFG_DOWNLOAD_TAG: model_tag(held)}, store_path=tmp_path, federation_id="f")
    assert all(np.array_equal(got[k], held[k]) for k in held)
    assert copy_path(tmp_path, "f").exists()
    download._memory.clear()  # a ClientApp process per message: the copy comes from the store
    change, after = encode_download_delta(_model(1), held)
    config = {wire.CFG_DOWNLOAD_BASE: model_tag(held), wire.CFG_DOWNLOAD_TAG: model_tag(after)}
    got = received_model(change, config, store_path=tmp_path, federation_id="f")
    assert model_tag(got) == model_tag(after)
    # Without a download tag (float16 or float32 transport, evaluate messages): the arrays as they came.
    plain = received_model(first, {}, store_path=tmp_path / "other", federation_id="f")
    assert plain["trunk.w"].dtype == np.float32 and not copy_path(tmp_path / "other", "f").exists()


def test_a_site_refuses_a_change_against_a_copy_it_does_not_hold(tmp_path):
    held = as_received(encode_download(_model(0), "float16"))
    change, after = encode_download_delta(_model(1), held)
    config = {wire.CFG_DOWNLOAD_BASE: model_tag(held), wire.CFG_DOWNLOAD_TAG: model_tag(after)}
    with pytest.raises(DownloadError, match="holds none.*whole model next round"):
        received_model(change, config, store_path=tmp_path, federation_id="f")
    # It holds another copy (say, from an older round): refused too, and the copy it has is kept.
    other = as_received(encode_download(_model(2), "float16"))
    received_model(encode_download(_model(2), "float16"), {wire.CFG_DOWNLOAD_TAG: model_tag(other)},
                   store_path=tmp_path, federation_id="f")
    with pytest.raises(DownloadError, match=f"holds {model_tag(other)}"):
        received_model(change, config, store_path=tmp_path, federation_id="f")
    # A result that does not match the server's checksum is refused, not trained on.
    config = {wire.CFG_DOWNLOAD_TAG: "00000000"}
    with pytest.raises(DownloadError, match="checksum"):
        received_model(encode_download(_model(3), "float16"), config, store_path=tmp_path, federation_id="f")
    with pytest.raises(DownloadError, match="without their checksum"):
        received_model(change, {}, store_path=tmp_path, federation_id="f")


def test_the_client_app_refuses_a_change_it_cannot_apply_and_sends_nothing(tmp_path):
    """The ClientApp's error reply names the site and the reason; the site trains nothing and its outbox
    ledger stays empty (nothing left the site). With the copy in place the same message trains."""
    import hashlib
    import json
    import time

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Metadata, RecordDict
    from flwr.app.message.message import make_message

    from fedmol.client import client_app
    from fedmol.config import FederationConfig
    from fedmol.records import PACKED, from_array_record, to_array_record
    from fedmol.server.federation import initial_shared_arrays
    from tests.server.synthetic import write_sites

    store = write_sites(tmp_path, 1, n=60, n_bits=128)[0]
    cfg = FederationConfig(n_bits=128, hidden="8", consortium_tasks="c1:classification,c2:classification",
                           num_threads=1)
    shared, _ = initial_shared_arrays(cfg)
    held = as_received(encode_download(shared, "float16"))  # what the site would hold, had it been in round 1
    change, after = encode_download_delta({k: v + 0.01 for k, v in shared.items()}, held)
    content = RecordDict({wire.ARRAYS: to_array_record(change), wire.CONFIG: ConfigRecord({
        wire.CFG_ROUND: 2, wire.CFG_FEDERATION_ID: "f", wire.CFG_DOWNLOAD_BASE: model_tag(held),
        wire.CFG_DOWNLOAD_TAG: model_tag(after)})})
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                    group_id="2", created_at=time.time(), ttl=3600, message_type="train")
    context = Context(run_id=1, node_id=5, node_config={"site-store": str(store), "site-name": "acme"},
                      state=RecordDict(), run_config=cfg.to_run_config())
    reply = client_app._handle("train", make_message(meta, content), context)
    assert reply.has_error()
    assert reply.error.reason.startswith("site acme: this round's model is a change against the copy")
    assert "holds none" in reply.error.reason
    outbox = store / "outbox.jsonl"
    assert not outbox.exists() or outbox.read_text().strip() == ""
    # Once it holds that copy (round 1's whole model), the same message trains: one update leaves.
    received_model(encode_download(shared, "float16"), {wire.CFG_DOWNLOAD_TAG: model_tag(held)},
                   store_path=store, federation_id="f")
    reply = client_app._handle("train", make_message(meta, content), context)
    assert not reply.has_error() and wire.ARRAYS in reply.content.array_records
    assert len(outbox.read_text().splitlines()) == 1
    # The update leaves packed in one array, and holds exactly the arrays the ledger lists.
    record = reply.content.array_records[wire.ARRAYS]
    assert list(record.keys()) == [PACKED]
    entry = json.loads(outbox.read_text())
    sent = from_array_record(record)
    assert entry["packed"] is True and [a["name"] for a in entry["arrays"]] == list(sent)
    assert all(hashlib.sha256(np.ascontiguousarray(sent[a["name"]]).tobytes()).hexdigest() == a["sha256"]
               for a in entry["arrays"])
    # A packed model that does not read back is refused the same way, naming why; nothing leaves.
    content[wire.ARRAYS] = ArrayRecord({PACKED: Array(np.zeros(64, np.uint8))})
    reply = client_app._handle("train", make_message(meta, content), context)
    assert reply.has_error() and reply.error.reason.startswith("site acme: the message's model cannot be read")
    assert len(outbox.read_text().splitlines()) == 1
