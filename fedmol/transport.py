"""How a site's trained shared arrays travel to the server, and back to float32 there.

Run config ``transport-dtype`` (`fedmol.config.TransportDtype`), per float32 array of the shared model:

* ``float32``: the trained values as they are;
* ``float16``: the trained values in float16 (half the bytes); the server upcasts them;
* ``int8``: the dense update (trained value minus the shared value the site received this round)
  quantised to int8 with one float32 scale per row (``shape[0]`` scales; a 1-D or 0-D array has
  one), scale = max |update of the row| / 127, and stochastic rounding, so the decoded update is
  unbiased: E[decoded] = trained, each value off by less than one step (its row's scale). A row is
  an output unit of a Linear weight (out, in) and an input bit of the input layer's EmbeddingBag
  weight (n_bits, hidden): the bits' updates differ by orders of magnitude (frequent and rare
  bits), and a scale per bit kept a site's round-1 update at 1.4% relative error on Tox21 at
  32,768 x 400, against 9.1% with one scale per hidden unit, for 4 bytes per row (1% of the
  bytes). The scales of array ``NAME`` travel as ``NAME`` + `SCALE_SUFFIX`, a name no state-dict
  key has (``#`` is not a Python identifier character). About a quarter of the float32 bytes.
  Never sparse, no indices: every value of every array travels, as with float32. (A row's zero
  scale says what the float32 update says too, that the row did not change: the unchanged rows of
  the input layer are the bits no training compound of the site set. Only secure aggregation hides
  individual updates.)

On the wire an int8 array is compressed with zlib (level 1) when that saves at least a tenth of its
bytes: it then travels as a flat uint8 array of the compressed bytes, and the server, which knows
the shape from the array it sent, inflates it back (bounded: never more than that shape's bytes).
The rows a site's compounds did not touch are zeros, so this pays most at the default 32,768 bits
(a Tox21 site of 800 compounds left 79% of the input layer's rows unchanged in a round: 13.2 MB of
int8 became 2.2 MB); an update that is noise everywhere (per-compound DP) stays as it is.

The other way, the train messages carry the global model in float16 whenever the sites send float16
(`download_dtype`): half the 52 MB of the default model, which every site receives every round. An
array float16 cannot hold (a value beyond +-65,504 or not finite) goes in float32. With int8 (the
default) only the first round sends the model whole, in float16; from then on a site that answered
the last round holds last round's copy, and its train message carries the change against that copy
in int8 with a scale per row (`encode_download_delta`: the same encoding as the updates, rounded to
nearest, a row that moved less than float16's relative step left for a later round): about the size
of an update instead of 26 MB. The message names the copy it applies to and the copy it makes
(`model_tag`, a checksum); a site that no longer holds that copy refuses the round, and the next
round sends it the whole copy (float32). In every case the server keeps its float32 model and
applies each site's update to it, not to the rounded copy the site trained from (`decode_update`'s
``received``): the rounding never accumulates in the shared model (error feedback), and a round
moves the model by what the sites learned, even where that is less than a rounding step. With
evaluate-in-train a site's evaluation of round r is of the copy it received (float16: relative
error < 2^-11 per weight; int8: per row, within the deadband and half a step); the model the server
registers and sends for the final evaluation is float32.

Arrays of another dtype (none in today's models) travel unchanged. `encode_update` runs on the
site (`fedmol.client.site.SiteNode.train_round`), `decode_update` on the server
(`fedmol.server.rounds`) with the arrays it sent that round.

With secure aggregation the transport is what SecAgg+ can sum: float32 values, which SecAgg+
quantises itself (clipped, 2^22 levels). Any other ``transport-dtype`` then falls back to float32
(`effective_transport`), and the server logs and tags it (`transport_label`, `fallback_note`).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedmol.config import FederationConfig

SCALE_SUFFIX = "#int8-scale"  # ARRAY + SCALE_SUFFIX: the per-row float32 scales of int8 array ARRAY
INT8_LEVELS = 127  # symmetric: -127..127 (-128 never used)
ZLIB_LEVEL = 1  # the fastest: 13 MB in ~0.2 s; higher levels gained <5% more
ZLIB_MIN_SAVING = 0.1  # compress an int8 array only when that saves at least this fraction of its bytes
ZLIB_PIECE = 1 << 21  # bytes per piece that `deflate` compresses on a thread of its own


class TransportError(ValueError):
    """An update that cannot be encoded (non-finite values) or decoded (a malformed reply)."""


# -- the rule -------------------------------------------------------------------------------------
def effective_transport(cfg: FederationConfig) -> str:
    """What the sites actually send: ``cfg.transport_dtype``, or float32 with secure aggregation."""
    return "float32" if cfg.secure_aggregation else cfg.transport_dtype


def fallback_note(cfg: FederationConfig) -> str | None:
    """The warning for a transport that secure aggregation overrides, or None when none is."""
    if effective_transport(cfg) == cfg.transport_dtype:
        return None
    return (f"transport-dtype={cfg.transport_dtype} falls back to float32 with secure-aggregation=true: "
            "SecAgg+ sums float32 values, which it quantises itself (2^22 levels)")


def transport_label(cfg: FederationConfig) -> str:
    """The transport as the run's MLflow tag ``fedmol.transport`` says it."""
    used = effective_transport(cfg)
    return used if used == cfg.transport_dtype else f"{used} (SecAgg+ fallback from {cfg.transport_dtype})"


def download_dtype(cfg: FederationConfig) -> str:
    """How train messages carry the global model: ``int8`` when the sites send int8 (the change
    against the copy a site already holds, `encode_download_delta`; the whole model in float16 to a
    site that holds none), ``float16`` when they send float16, else ``float32`` (float32 transport,
    and secure aggregation)."""
    return {"int8": "int8", "float16": "float16"}.get(effective_transport(cfg), "float32")


def round_seed(seed: int, server_round: int, site: str) -> list[int]:
    """The stochastic rounding's seed: the run's seed, the round and the site (reproducible runs;
    different draws at every site and round)."""
    return [int(seed) & 0xFFFFFFFF, int(server_round) & 0xFFFFFFFF, zlib.crc32(site.encode())]


# -- the site: encode -----------------------------------------------------------------------------
def encode_update(trained: Mapping[str, np.ndarray], shared: Mapping[str, np.ndarray], transport: str, *,
                  seed: list[int] | int | None = None) -> dict[str, np.ndarray]:
    """What a site sends for its ``trained`` shared arrays, given the ``shared`` arrays it received.

    transport: float32 | float16 | int8 (see the module docstring); seed: the stochastic rounding's
    (int8 only; `round_seed`). Raises `TransportError` on non-finite int8 updates, naming the array.
    """
    if transport == "float32":
        return dict(trained)
    if transport == "float16":
        return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in trained.items()}
    if transport != "int8":
        raise TransportError(f"transport {transport!r} is not one of float32, float16, int8")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, value in trained.items():
        if value.dtype != np.float32:
            out[name] = value
            continue
        if name.endswith(SCALE_SUFFIX):
            raise TransportError(f"array {name!r}: the name ends with {SCALE_SUFFIX!r}, reserved for int8 scales")
        reference = shared.get(name)
        if reference is None or reference.shape != value.shape:
            got = "missing" if reference is None else f"shape {reference.shape}"
            raise TransportError(f"array {name!r}: the received shared array is {got}, the trained one "
                                 f"has shape {value.shape}: cannot send an update")
        values, out[name + SCALE_SUFFIX] = quantise_int8(value - reference.astype(np.float32), rng, name=name)
        out[name] = compress_int8(values)
    return out


def compress_int8(values: np.ndarray) -> np.ndarray:
    """``values`` (int8) as a flat uint8 array of their zlib-compressed bytes, or unchanged when
    compression saves less than `ZLIB_MIN_SAVING` of the bytes (the receiver knows the shape)."""
    raw = np.ascontiguousarray(values).tobytes()
    packed = deflate(raw, ZLIB_LEVEL)
    if len(packed) > (1 - ZLIB_MIN_SAVING) * len(raw):
        return values
    return np.frombuffer(packed, dtype=np.uint8)


def deflate(raw: bytes, level: int, *, piece: int = ZLIB_PIECE, workers: int | None = None) -> bytes:
    """``raw`` as one standard zlib stream (what `zlib.compress` makes and `zlib.decompress` reads),
    compressed in pieces side by side (as pigz does): each piece is raw deflate ended on a byte
    boundary (a sync flush; the last one finishes the stream), behind the zlib header, with the
    Adler-32 of all of ``raw`` at the end. zlib releases the GIL while it compresses, so the pieces
    use the cores; a piece does not refer back into the one before, which costs a little of the ratio
    (0.03 % on a 13 MB int8 model update)."""
    workers = workers or min(os.cpu_count() or 1, 8)
    if len(raw) <= piece or workers <= 1:
        return zlib.compress(raw, level)
    view = memoryview(raw)
    pieces = [view[i: i + piece] for i in range(0, len(raw), piece)]
    last = len(pieces) - 1

    def compress(i: int) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate: no header, no checksum
        return c.compress(pieces[i]) + c.flush(zlib.Z_FINISH if i == last else zlib.Z_SYNC_FLUSH)

    with ThreadPoolExecutor(max_workers=min(workers, len(pieces))) as pool:
        body = b"".join(pool.map(compress, range(len(pieces))))
    header = zlib.compress(b"", level)[:2]  # CMF and FLG for this level
    return header + body + zlib.adler32(raw).to_bytes(4, "big")


def inflate_int8(name: str, packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The int8 array of ``shape`` that `compress_int8` packed; `TransportError` when ``packed`` does
    not inflate to exactly that many bytes (never inflates more than that, whatever it holds)."""
    size = int(np.prod(shape, dtype=np.int64))
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(np.ascontiguousarray(packed).tobytes(), size + 1)
    except zlib.error as exc:
        raise TransportError(f"array {name!r}: compressed int8 update cannot be inflated ({exc})") from None
    if len(raw) != size or not inflater.eof:
        raise TransportError(f"array {name!r}: compressed int8 update does not inflate to shape {shape} "
                             f"({size} bytes)")
    return np.frombuffer(raw, dtype=np.int8).reshape(shape)


def quantise_int8(update: np.ndarray, rng: np.random.Generator, *,
                  name: str = "update") -> tuple[np.ndarray, np.ndarray]:
    """(int8 values of ``update``'s shape, float32 scales of shape (rows,)) with stochastic rounding.

    rows = ``update.shape[0]`` for a 2-D or wider array, 1 otherwise.
    update ≈ values * scales[row]; unbiased; a row of zeros has scale 0 and values 0.
    """
    rows = update.reshape(update.shape[0], -1) if update.ndim >= 2 else update.reshape(1, -1)
    rows = rows.astype(np.float32, copy=False)
    largest = np.max(np.abs(rows), axis=1) if rows.size else np.zeros(rows.shape[0], np.float32)
    if not np.all(np.isfinite(largest)):  # a row's maximum is NaN or infinite exactly when one of its values is
        bad = int(np.flatnonzero(~np.isfinite(largest))[0])
        raise TransportError(f"array {name!r}: the update holds NaN or infinite values (row {bad}): "
                             "it cannot be quantised; the site's training diverged")
    scales = (largest / INT8_LEVELS).astype(np.float32)
    values = np.zeros(rows.shape, np.int8)
    # Only the rows that moved: most of the input layer's rows are zeros (the bits no compound of the site set).
    moved = np.flatnonzero(scales)
    if moved.size:
        # Clip guards the last ulp: x/scale can exceed 127 by rounding when x is the row's maximum.
        steps = np.clip(rows[moved] / scales[moved, None], -INT8_LEVELS, INT8_LEVELS)
        low = np.floor(steps)
        # Round up with probability equal to the fraction: E[result] = steps (unbiased).
        values[moved] = low + (rng.random(steps.shape, dtype=np.float32) < (steps - low))
    return values.reshape(update.shape), scales


# -- the server: the global model it sends, and the site: what it received -----------------------
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65,504


def encode_download(arrays: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The global model's arrays as a train message carries them (``dtype``: `download_dtype`):
    float32 arrays in float16 (round to nearest) unless a value is beyond float16's range or not
    finite; any other array, and everything when ``dtype`` is float32, unchanged."""
    if dtype == "float32":
        return dict(arrays)
    if dtype != "float16":
        raise TransportError(f"download dtype {dtype!r} is not one of float32, float16")
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        fits = value.dtype == np.float32 and bool(np.all(np.abs(value) <= FLOAT16_MAX))  # False for NaN/inf
        out[name] = value.astype(np.float16) if fits else value
    return out


def as_received(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A message's shared arrays as the site trains from them: float16 (`encode_download`) upcast to
    float32 (exactly), anything else as it came."""
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in arrays.items()}


# -- int8 downloads: the change of the global model against the copy a site already holds ------
DOWNLOAD_DEADBAND = 2.0 ** -11  # float16's relative step: a row smaller than this stays for a later round


def model_tag(arrays: Mapping[str, np.ndarray]) -> str:
    """A checksum of a model's arrays (names, dtypes, shapes and bytes; CRC-32, ~0.05 s for 52 MB): the
    server and a site compare their copies by it."""
    crc = 0
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        crc = zlib.crc32(f"{name}|{value.dtype.str}|{value.shape}".encode(), crc)
        crc = zlib.crc32(value.reshape(-1).view(np.uint8).data, crc)
    return f"{crc:08x}"


def encode_download_delta(model: Mapping[str, np.ndarray], held: Mapping[str, np.ndarray]
                          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A train message's arrays for a site that holds ``held`` (the copy every site got last round),
    and the copy that site holds once it applies them (`apply_download`), which is the copy the next
    round's change is taken against: ``(wire arrays, new held copy)``.

    Per float32 array: the change ``model - held`` in int8 with a float32 scale per row (as a site's
    update, `quantise_int8`'s rows, zlib-compressed where that pays), rounded to nearest. A row whose
    largest change is at most `DOWNLOAD_DEADBAND` of the row's largest weight does not travel this
    round (scale 0). Whatever a round leaves out or rounds off is still in the next round's change
    (``model`` is the server's float32 model, ``held`` the sites' copy): the copy follows the model
    within a step, and the rounding never accumulates. An array that is new, of another shape or
    dtype, or not finite travels whole."""
    wire: dict[str, np.ndarray] = {}
    after: dict[str, np.ndarray] = {}
    for name, value in model.items():
        base = held.get(name)
        if (value.dtype != np.float32 or base is None or base.dtype != np.float32 or base.shape != value.shape
                or name.endswith(SCALE_SUFFIX)):
            wire[name] = after[name] = value
            continue
        n_rows = value.shape[0] if value.ndim >= 2 else 1
        rows = value.reshape(n_rows, -1)
        change = rows - base.reshape(n_rows, -1)
        if not np.all(np.isfinite(change)):
            wire[name] = after[name] = value
            continue
        largest = np.max(np.abs(change), axis=1) if change.size else np.zeros(n_rows, np.float32)
        moved = largest > DOWNLOAD_DEADBAND * (np.max(np.abs(rows), axis=1) if rows.size else largest)
        scales = np.where(moved, largest / INT8_LEVELS, 0).astype(np.float32)
        steps = np.zeros(change.shape, np.int8)
        idx = np.flatnonzero(moved)
        if idx.size:
            steps[idx] = np.clip(np.rint(change[idx] / scales[idx, None]), -INT8_LEVELS, INT8_LEVELS)
        steps = steps.reshape(value.shape)
        after[name] = _dequantise(name, steps, scales, held)  # exactly what the site computes
        wire[name] = compress_int8(steps)
        wire[name + SCALE_SUFFIX] = scales
    return wire, after


def apply_download(arrays: Mapping[str, np.ndarray], held: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The site's side of `encode_download_delta`: its ``held`` copy moved by the int8 changes, and
    every array that travelled whole as it came (float16 upcast). `TransportError` names a malformed array.
    The server decodes a site's int8 update against the model it sent the same way (`decode_update`)."""
    return decode_update(arrays, held)


# -- the server: decode ---------------------------------------------------------------------------
def decode_update(arrays: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray] | None, *,
                  received: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A site's reply as float32 shared arrays: float16 upcast; int8 + scales added to ``sent``
    (the server's float32 shared arrays of that round; needed only when the reply holds int8 arrays).

    ``received``: the arrays as the sites received them (`as_received` of `encode_download`), when
    the train message carried them rounded; a trained float16/float32 array then gets back what the
    rounding took (+ ``sent`` - ``received``), so every decoded array is ``sent`` plus the site's
    update (error feedback). Raises `TransportError` naming the array when the reply is malformed."""
    scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in arrays.items() if k.endswith(SCALE_SUFFIX)}
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if value.dtype in (np.int8, np.uint8):  # uint8: int8 compressed on the wire
            out[name] = _dequantise(name, value, scales.pop(name, None), sent)
            continue
        out[name] = value.astype(np.float32) if value.dtype == np.float16 else value
        base, got = (sent or {}).get(name), (received or {}).get(name)
        if (base is not None and got is not None and base.dtype == got.dtype == out[name].dtype == np.float32
                and base.shape == got.shape == out[name].shape):
            out[name] = out[name] + (base - got)
    if scales:
        raise TransportError(f"int8 scale(s) without an int8 array: {sorted(k + SCALE_SUFFIX for k in scales)[:5]}")
    return out


def _dequantise(name: str, value: np.ndarray, scale: np.ndarray | None,
                sent: Mapping[str, np.ndarray] | None) -> np.ndarray:
    if scale is None:
        raise TransportError(f"array {name!r} is int8 but its scales {name + SCALE_SUFFIX!r} are missing")
    reference = None if sent is None else sent.get(name)
    if reference is None:
        raise TransportError(f"array {name!r} is an int8 update of an array the server did not send this round")
    if reference.dtype != np.float32:
        raise TransportError(f"array {name!r}: int8 update of an array the server sent as {reference.dtype}")
    if value.dtype == np.uint8:
        if value.ndim != 1:
            raise TransportError(f"array {name!r}: a compressed int8 update is flat, got shape {value.shape}")
        value = inflate_int8(name, value, reference.shape)
    if reference.shape != value.shape:
        raise TransportError(f"array {name!r}: int8 update of shape {value.shape}, the server sent "
                             f"{reference.dtype} of shape {reference.shape}")
    n_rows = value.shape[0] if value.ndim >= 2 else 1
    if scale.dtype != np.float32 or scale.shape != (n_rows,):
        raise TransportError(f"array {name!r}: scales must be float32 of shape ({n_rows},), "
                             f"got {scale.dtype} of shape {scale.shape}")
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise TransportError(f"array {name!r}: scales must be finite and >= 0 (got NaN, infinite or negative)")
    # Only the rows with a scale moved (most of the input layer's rows did not: the bits no compound of
    # the site set); the others are the reference as it is. Same float32 arithmetic as reference + q * scale.
    out = np.array(reference, dtype=np.float32, copy=True).reshape(n_rows, -1)
    moved = np.flatnonzero(scale)
    if moved.size:
        out[moved] += value.reshape(n_rows, -1)[moved].astype(np.float32) * scale[moved, None]
    return out.reshape(value.shape)
