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
