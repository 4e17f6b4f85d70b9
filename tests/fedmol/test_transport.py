"""The update transports of `fedmol.transport`: int8 with per-row scales and stochastic rounding,
float16, and the secure-aggregation fallback rule."""

from __future__ import annotations

import numpy as np
import pytest

from fedmol.config import FederationConfig
from fedmol.transport import (
    DOWNLOAD_DEADBAND,
    FLOAT16_MAX,
    SCALE_SUFFIX,
    TransportError,
    apply_download,
    as_received,
    compress_int8,
    decode_update,
    deflate,
    download_dtype,
    effective_transport,
    encode_download,
    encode_download_delta,
    encode_update,
    fallback_note,
    inflate_int8,
    model_tag,
    quantise_int8,
    round_seed,
    transport_label,
)


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"trunk.0.weight": rng.normal(size=(6, 40)).astype(np.float32),
            "trunk.0.bias": rng.normal(size=6).astype(np.float32),
            "heads.shared.weight": rng.normal(size=(3, 6)).astype(np.float32),
            "scalar": np.float32(0.5).reshape(())}


def _trained(shared: dict[str, np.ndarray], rng: np.random.Generator, size: float = 0.01) -> dict[str, np.ndarray]:
    return {k: (v + size * rng.normal(size=v.shape)).astype(np.float32) for k, v in shared.items()}


def test_int8_round_trip_is_within_one_step_of_its_row():
    rng = np.random.default_rng(0)
    shared = _model(rng)
    trained = _trained(shared, rng)
    sent = encode_update(trained, shared, "int8", seed=round_seed(0, 1, "site-a"))
    # One int8 array and one float32 scale per row (shape[0]) for each float32 array; no indices.
    assert set(sent) == set(shared) | {k + SCALE_SUFFIX for k in shared}
    for name, value in shared.items():
        assert sent[name].dtype == np.int8 and sent[name].shape == value.shape
        rows = value.shape[0] if value.ndim >= 2 else 1
        assert sent[name + SCALE_SUFFIX].dtype == np.float32 and sent[name + SCALE_SUFFIX].shape == (rows,)
        assert np.abs(sent[name].astype(int)).max() <= 127
    decoded = decode_update(sent, shared)
    for name, value in trained.items():
        assert decoded[name].dtype == np.float32 and decoded[name].shape == value.shape
        scales = sent[name + SCALE_SUFFIX]
        error = np.abs(decoded[name] - value).reshape(len(scales), -1)
        assert np.all(error <= scales[:, None] * (1 + 1e-5) + 1e-7), name  # within one step of its row
        assert scales.max() > 0
    # About a quarter of the float32 bytes (+ the scales).
    assert sum(v.nbytes for v in sent.values()) < 0.3 * sum(v.nbytes for v in trained.values())


def test_int8_rounding_is_unbiased_over_many_draws():
    rng = np.random.default_rng(1)
    update = rng.normal(size=(4, 50)).astype(np.float32)
    draws = 2000
    total = np.zeros(update.shape)
    scales = None
    for i in range(draws):
        values, scales = quantise_int8(update, np.random.default_rng(i))
        total += values.astype(np.float64) * scales[:, None]
    mean = total / draws
    # Each draw's error is within one step (variance <= step^2 / 4): the mean's standard error is step / (2 sqrt(n)).
    assert scales is not None
    bound = 5 * scales[:, None] / (2 * np.sqrt(draws))
    assert np.all(np.abs(mean - update) <= bound)
    # Deterministic rounding would be biased by up to half a step; this is far below that on average.
    assert np.abs(mean - update).mean() < 0.05 * scales.mean()


def test_int8_is_reproducible_and_differs_by_site_and_round():
    rng = np.random.default_rng(2)
    shared = _model(rng)
    trained = _trained(shared, rng)
    a = encode_update(trained, shared, "int8", seed=round_seed(7, 3, "site-a"))
    again = encode_update(trained, shared, "int8", seed=round_seed(7, 3, "site-a"))
    other_site = encode_update(trained, shared, "int8", seed=round_seed(7, 3, "site-b"))
    other_round = encode_update(trained, shared, "int8", seed=round_seed(7, 4, "site-a"))
    assert all(np.array_equal(a[k], again[k]) for k in a)
    name = "trunk.0.weight"
    assert not np.array_equal(a[name], other_site[name]) and not np.array_equal(a[name], other_round[name])


def test_int8_zero_and_constant_rows_are_exact():
    shared = {"w": np.ones((3, 5), np.float32), "b": np.zeros(4, np.float32)}
    trained = {"w": shared["w"].copy(), "b": np.full(4, 0.25, np.float32)}
    trained["w"][1] += 0.5  # one constant row; rows 0 and 2 unchanged
    sent = encode_update(trained, shared, "int8", seed=0)
    assert np.array_equal(sent["w" + SCALE_SUFFIX], np.array([0, 0.5 / 127, 0], np.float32))
    assert np.array_equal(sent["w"][[0, 2]], np.zeros((2, 5), np.int8))
    assert np.all(sent["w"][1] == 127) and np.all(sent["b"] == 127)
    decoded = decode_update(sent, shared)
    np.testing.assert_allclose(decoded["w"], trained["w"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(decoded["b"], trained["b"], rtol=0, atol=1e-7)
    # An unchanged model (all-zero update) travels as zeros and decodes to the received model.
    nothing = encode_update(shared, shared, "int8", seed=0)
    assert all(np.array_equal(decode_update(nothing, shared)[k], shared[k]) for k in shared)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_int8_refuses_non_finite_updates_naming_the_array_and_row(bad):
    shared = {"trunk.0.weight": np.zeros((3, 4), np.float32)}
    trained = {"trunk.0.weight": np.zeros((3, 4), np.float32)}
    trained["trunk.0.weight"][2, 1] = bad
    with pytest.raises(TransportError, match=r"'trunk.0.weight'.*NaN or infinite.*row 2"):
        encode_update(trained, shared, "int8", seed=0)


def test_int8_refuses_an_update_without_its_received_array():
    trained = {"w": np.zeros((2, 2), np.float32)}
    with pytest.raises(TransportError, match="'w'.*missing"):
        encode_update(trained, {}, "int8", seed=0)
    with pytest.raises(TransportError, match=r"'w'.*shape \(3, 2\)"):
        encode_update(trained, {"w": np.zeros((3, 2), np.float32)}, "int8", seed=0)


def test_decode_refuses_malformed_int8_replies():
    shared = {"w": np.zeros((3, 4), np.float32)}
    sent = encode_update({"w": np.ones((3, 4), np.float32)}, shared, "int8", seed=0)
    with pytest.raises(TransportError, match="scales .* are missing"):
        decode_update({"w": sent["w"]}, shared)
    with pytest.raises(TransportError, match="did not send"):
        decode_update(sent, {})
    with pytest.raises(TransportError, match="without an int8 array"):
        decode_update({"w" + SCALE_SUFFIX: sent["w" + SCALE_SUFFIX]}, shared)
    with pytest.raises(TransportError, match=r"shape \(3,\)"):
        decode_update({"w": sent["w"], "w" + SCALE_SUFFIX: np.ones(2, np.float32)}, shared)
    with pytest.raises(TransportError, match="finite"):
        decode_update({"w": sent["w"], "w" + SCALE_SUFFIX: np.array([1, np.nan, 1], np.float32)}, shared)
    with pytest.raises(TransportError, match="finite and >= 0"):
        decode_update({"w": sent["w"], "w" + SCALE_SUFFIX: np.array([1, -1, 1], np.float32)}, shared)


def _sparse_update_model(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An input layer most of whose rows (fingerprint bits) no training compound touched."""
    shared = {"trunk.input.bag.weight": rng.normal(size=(2000, 50)).astype(np.float32),
              "trunk.input.bias": rng.normal(size=50).astype(np.float32)}
    trained = {k: v.copy() for k, v in shared.items()}
    touched = rng.choice(2000, size=300, replace=False)
    trained["trunk.input.bag.weight"][touched] += 0.01 * rng.normal(size=(300, 50)).astype(np.float32)
    trained["trunk.input.bias"] += 0.01 * rng.normal(size=50).astype(np.float32)
    return shared, trained


def test_int8_of_untouched_rows_travels_compressed_and_decodes_to_the_same_values():
    rng = np.random.default_rng(4)
    shared, trained = _sparse_update_model(rng)
    sent = encode_update(trained, shared, "int8", seed=[1, 2, 3])
    weight = sent["trunk.input.bag.weight"]
    assert weight.dtype == np.uint8 and weight.ndim == 1  # zlib bytes: 85% of the rows are zeros
    assert weight.nbytes < 0.3 * 2000 * 50
    assert sent["trunk.input.bias"].dtype == np.int8  # 50 bytes of noise-like steps: not worth it
    # The same draw, uncompressed, decodes to exactly the same floats.
    values, scales = quantise_int8(trained["trunk.input.bag.weight"] - shared["trunk.input.bag.weight"],
                                   np.random.default_rng([1, 2, 3]), name="w")
    np.testing.assert_array_equal(inflate_int8("w", weight, (2000, 50)), values)
    decoded = decode_update(sent, shared)
    plain = decode_update({**sent, "trunk.input.bag.weight": values}, shared)
    np.testing.assert_array_equal(decoded["trunk.input.bag.weight"], plain["trunk.input.bag.weight"])
    untouched = np.setdiff1d(np.arange(2000), np.flatnonzero(np.any(values != 0, axis=1)))
    np.testing.assert_array_equal(decoded["trunk.input.bag.weight"][untouched],
                                  shared["trunk.input.bag.weight"][untouched])


def test_incompressible_int8_travels_as_int8():
    rng = np.random.default_rng(5)
    values = rng.integers(-127, 128, size=(100, 40)).astype(np.int8)
    assert compress_int8(values) is values


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 3 * 1000 + 17])
def test_deflate_in_pieces_is_one_standard_zlib_stream(size):
    """Compressed side by side in pieces of 1,000 bytes (the default is 2 MB), the bytes are still one
    zlib stream that any zlib reads back to its end, checksum included."""
    import zlib

    raw = np.random.default_rng(size).integers(0, 4, size, dtype=np.uint8).tobytes()
    packed = deflate(raw, 1, piece=1000, workers=3)
    assert zlib.decompress(packed) == raw
    reader = zlib.decompressobj()
    assert reader.decompress(packed) == raw and reader.eof and reader.unused_data == b""
    if size > 1000:  # the Adler-32 of all the bytes ends the stream: a wrong one and zlib refuses it
        with pytest.raises(zlib.error):
            zlib.decompress(packed[:-4] + bytes(4))


def test_a_large_int8_array_compressed_in_pieces_inflates_to_the_same_values():
    values = np.zeros((3000, 1600), np.int8)  # 4.8 MB: three pieces of 2 MB
    values[::7] = np.random.default_rng(8).integers(-5, 6, (len(values[::7]), 1600), dtype=np.int8)
    packed = compress_int8(values)
    assert packed.dtype == np.uint8 and packed.nbytes < 0.5 * values.nbytes
    np.testing.assert_array_equal(inflate_int8("w", packed, values.shape), values)


def test_decode_refuses_malformed_compressed_int8():
    rng = np.random.default_rng(6)
    shared, trained = _sparse_update_model(rng)
    sent = encode_update(trained, shared, "int8", seed=0)
    packed = sent["trunk.input.bag.weight"]
    with pytest.raises(TransportError, match="cannot be inflated"):
        decode_update({**sent, "trunk.input.bag.weight": np.full(50, 7, np.uint8)}, shared)
    short = np.frombuffer(__import__("zlib").compress(b"\0" * 99), np.uint8)
    with pytest.raises(TransportError, match="does not inflate to shape"):
        decode_update({**sent, "trunk.input.bag.weight": short}, shared)
    bomb = np.frombuffer(__import__("zlib").compress(b"\0" * 10_000_000), np.uint8)  # 10 MB for a 100 kB array
    with pytest.raises(TransportError, match="does not inflate to shape"):
        decode_update({**sent, "trunk.input.bag.weight": bomb}, shared)
    with pytest.raises(TransportError, match="flat"):
        decode_update({**sent, "trunk.input.bag.weight": packed.reshape(1, -1)}, shared)


def test_float16_and_float32_paths_are_unchanged():
    rng = np.random.default_rng(3)
    shared = _model(rng)
    trained = _trained(shared, rng) | {"count": np.arange(3)}
    assert encode_update(trained, shared, "float32") == trained
    half = encode_update(trained, shared, "float16")
    assert set(half) == set(trained) and half["count"] is trained["count"]
    for k in shared:
        assert half[k].dtype == np.float16 and np.array_equal(half[k], trained[k].astype(np.float16))
    back = decode_update(half, None)  # float16 needs no received arrays
    for k in shared:
        assert back[k].dtype == np.float32 and np.array_equal(back[k], trained[k].astype(np.float16).astype(np.float32))
    assert back["count"] is trained["count"]


def test_secure_aggregation_falls_back_to_float32_by_a_stated_rule():
    for dtype in ("float16", "int8"):
        cfg = FederationConfig(secure_aggregation=True, transport_dtype=dtype)
        cfg.validate()  # no longer refused
        assert effective_transport(cfg) == "float32"
        assert transport_label(cfg) == f"float32 (SecAgg+ fallback from {dtype})"
        note = fallback_note(cfg)
        assert note is not None and f"transport-dtype={dtype} falls back to float32" in note
        plain = FederationConfig(transport_dtype=dtype)
        assert effective_transport(plain) == transport_label(plain) == dtype and fallback_note(plain) is None
    secure = FederationConfig(secure_aggregation=True, transport_dtype="float32")
    assert transport_label(secure) == "float32" and fallback_note(secure) is None
    # The default transport is int8: a secure-aggregation run with the defaults sends float32 by the rule.
    default = FederationConfig(secure_aggregation=True)
    assert default.transport_dtype == "int8" and effective_transport(default) == "float32"


def test_the_download_follows_the_sites_transport():
    assert download_dtype(FederationConfig()) == "int8"  # the default transport, int8: changes in int8
    assert download_dtype(FederationConfig(transport_dtype="float16")) == "float16"
    assert download_dtype(FederationConfig(transport_dtype="float32")) == "float32"
    assert download_dtype(FederationConfig(secure_aggregation=True)) == "float32"  # SecAgg+ sums float32
    rng = np.random.default_rng(4)
    model = _model(rng) | {"count": np.arange(3), "huge": np.array([1.0, 2 * FLOAT16_MAX], np.float32)}
    assert encode_download(model, "float32") == model
    down = encode_download(model, "float16")
    for k in _model(rng):
        assert down[k].dtype == np.float16 and np.array_equal(down[k], model[k].astype(np.float16))
    assert down["huge"] is model["huge"] and down["count"] is model["count"]  # beyond float16: as it was
    got = as_received(down)
    assert all(got[k].dtype == np.float32 for k in _model(rng)) and got["count"] is model["count"]
    with pytest.raises(TransportError, match="download dtype"):
        encode_download(model, "int8")


@pytest.mark.parametrize("transport", ["float16", "int8"])
def test_updates_to_a_float16_download_are_applied_to_the_servers_float32_model(transport):
    """Error feedback: a site trains from the float16 copy; the server adds the site's update to its
    own float32 model, so updates smaller than float16's step are not lost."""
    sent = {"w": np.full((4, 8), 1.0 + 1e-4, np.float32), "b": np.linspace(-1, 1, 8, dtype=np.float32)}
    received = as_received(encode_download(sent, "float16"))
    assert not np.array_equal(received["w"], sent["w"])  # 1 + 1e-4 is between two float16 values
    step = 3e-5  # well under float16's step at 1.0 (2^-10)
    trained = {k: v + np.float32(step) for k, v in received.items()}
    reply = encode_update(trained, received, transport, seed=0)
    decoded = decode_update(reply, sent, received=received)
    for k in sent:
        # int8: within a step of the row's scale (float32 rounding of the update); float16: its rounding
        tol = 1e-6 if transport == "int8" else 2 ** -11 + 1e-6
        np.testing.assert_allclose(decoded[k], sent[k] + step, atol=tol, rtol=0)
    # Without the correction a float16 reply would pull the model back to the rounded copy.
    if transport == "float16":
        plain = decode_update(reply, None)
        assert np.abs(plain["w"] - (sent["w"] + step)).max() > 1e-5


def test_int8_decoding_touches_only_the_rows_with_a_scale_and_matches_the_plain_formula():
    rng = np.random.default_rng(5)
    sent = {"w": rng.normal(size=(50, 7)).astype(np.float32)}
    trained = {"w": sent["w"].copy()}
    trained["w"][::3] += rng.normal(0, 1e-2, size=trained["w"][::3].shape).astype(np.float32)  # 1 row in 3 moved
    reply = encode_update(trained, sent, "int8", seed=1)
    q = inflate_int8("w", reply["w"], (50, 7)) if reply["w"].dtype == np.uint8 else reply["w"]
    scale = reply["w" + SCALE_SUFFIX]
    assert np.count_nonzero(scale) == 17
    plain = sent["w"] + q.astype(np.float32) * scale[:, None]  # every row, as the formula says
    decoded = decode_update(reply, sent)["w"]
    assert decoded.dtype == np.float32 and np.array_equal(decoded, plain)
    assert np.array_equal(decoded[1::3], sent["w"][1::3]) and decoded is not sent["w"]


def test_an_int8_download_makes_at_the_site_exactly_the_copy_the_server_keeps():
    rng = np.random.default_rng(11)
    held = as_received(encode_download(_model(rng), "float16"))  # round 1: the model whole, in float16
    model = _trained(held, rng, 0.05)
    model["trunk.0.weight"][2] = held["trunk.0.weight"][2]  # a row that did not move
    model["count"] = np.arange(3)  # not float32: travels as it is
    wire, after = encode_download_delta(model, held)
    assert wire["trunk.0.weight"].dtype in (np.int8, np.uint8) and wire["count"] is model["count"]
    assert wire["trunk.0.weight" + SCALE_SUFFIX][2] == 0  # the unchanged row: no scale, nothing to add
    site = apply_download({k: v.copy() for k, v in wire.items()}, held)
    assert set(site) == set(model) and model_tag(site) == model_tag(after)
    assert all(np.array_equal(site[k], after[k]) for k in after)
    for k, v in model.items():  # within half a step of the row's change
        if v.dtype == np.float32:
            rows = v.reshape(v.shape[0] if v.ndim >= 2 else 1, -1)
            change = np.abs(rows - held[k].reshape(rows.shape)).max(axis=1, keepdims=True)
            assert np.all(np.abs(after[k].reshape(rows.shape) - rows) <= change / 254 + 1e-7)
    assert model_tag(held) != model_tag(after)
    # int8 of every float32 array plus a scale per row: under a third of float32 here (6 x 40 is small)
    assert sum(v.nbytes for v in wire.values()) < 0.35 * sum(v.nbytes for v in model.values())


def test_what_an_int8_download_leaves_out_travels_in_a_later_round():
    """A change under the deadband stays out of the copy, but not out of the next round's change: the
    sites' copy follows the server's float32 model, and the rounding never accumulates."""
    held = {"w": np.ones((3, 5), np.float32)}
    model = {"w": held["w"] + np.float32(DOWNLOAD_DEADBAND / 4)}  # a quarter of the deadband
    for _ in range(3):  # three rounds of slow drift: each change alone is under the deadband
        wire, held = encode_download_delta(model, held)
        model = {"w": model["w"] + np.float32(DOWNLOAD_DEADBAND / 4)}
    assert np.all(wire["w" + SCALE_SUFFIX] == 0) and np.array_equal(held["w"], np.ones((3, 5), np.float32))
    model = {"w": model["w"] + np.float32(DOWNLOAD_DEADBAND / 2)}
    wire, held = encode_download_delta(model, held)  # the drift has passed the deadband: it travels whole
    assert np.all(wire["w" + SCALE_SUFFIX] > 0)
    np.testing.assert_allclose(held["w"], model["w"], atol=1e-7, rtol=0)
    for k in range(20):  # many rounds of changes: the copy stays within a step of the model
        model = {"w": model["w"] + np.float32(0.01) * np.float32(np.sin(k + np.arange(15))).reshape(3, 5)}
        wire, held = encode_download_delta(model, held)
        assert np.abs(held["w"] - model["w"]).max() <= DOWNLOAD_DEADBAND * np.abs(model["w"]).max() + 1e-6


def test_an_int8_download_sends_whole_what_has_no_held_copy_or_is_not_finite():
    held = {"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    model = {"a": np.array([[1, np.inf], [0, 0]], np.float32), "b": np.ones(3, np.float32),
             "new": np.ones((2, 2), np.float32)}
    wire, after = encode_download_delta(model, held)
    assert wire["a"] is model["a"] and wire["new"] is model["new"] and "a" + SCALE_SUFFIX not in wire
    assert wire["b"].dtype == np.int8 and np.array_equal(apply_download(wire, held)["b"], model["b"])
    with pytest.raises(TransportError, match="scales"):
        apply_download({"b": wire["b"]}, held)
