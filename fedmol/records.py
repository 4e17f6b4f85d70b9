"""The one boundary between Flower records and plain numpy dicts."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.app.typing import ConfigRecordValues, MetricRecordValues
from flwr.common.constant import SType
from numpy.lib import format as npformat

# A packed ArrayRecord holds one array under this name: every array of the record in one uint8 blob.
PACKED = "fedmol.packed"
_MAGIC = b"FMPACK1\0"
_HEADER_MAX = 1 << 24  # bytes of the JSON index: far above any model's (about 100 bytes per array)
# The attribute under which `to_array_record` keeps the numpy arrays a record was made from.
_KEPT = "_fedmol_numpy"


class PackedRecordError(ValueError):
    """A packed array record that cannot be read back (names what is wrong)."""


def to_array_record(arrays: Mapping[str, np.ndarray], *, packed: bool = False, keep: bool = False) -> ArrayRecord:
    """Named numpy arrays (e.g. a state dict as numpy) -> ArrayRecord, order kept.

    ``packed``: every array in one uint8 array (`pack_arrays`), under the name `PACKED`. Flower moves
    each array of a message, and each 5 MB chunk of it, as an object of its own: one request to the
    SuperLink per object and per side, each costing tens of milliseconds on a busy link. A site's int8
    update (4 arrays and their scales) is 17 objects unpacked and 3 packed; with the records around
    it, a reply is ~30 objects unpacked and ~9 packed (`benchmarks/results/rounds_32k_packed.md`).
    `from_array_record` reads both forms.

    ``keep`` (unpacked only): the record keeps ``arrays`` and `from_array_record` gives them back
    without reading the bytes again. The arrays become read-only: the caller hands them over and
    must not change them through another name (a torch tensor's ``.numpy()`` view, for example)."""
    if packed:
        return ArrayRecord({PACKED: numpy_array(pack_arrays(arrays))})
    kept = {k: v if v.flags.c_contiguous else np.ascontiguousarray(v) for k, v in arrays.items()}
    record = ArrayRecord({k: numpy_array(v) for k, v in kept.items()})
    if keep:
        for v in kept.values():  # shared by every reader of the record (`from_array_record`)
            v.flags.writeable = False
        setattr(record, _KEPT, (dict(record.items()), kept))  # the Array objects, kept alive: `is` holds
    return record


def numpy_array(value: np.ndarray) -> Array:
    """``Array(value)``: the same `Array`, down to its bytes (the .npy format that `Array.numpy` reads),
    built with one copy of the array. Flower's `Array.from_numpy_ndarray` runs `np.save` into a
    growing buffer and copies that (0.054 against 0.030 s for a 52 MB array here). The contract test
    (tests/fedmol/test_records.py) checks that the bytes equal Flower's."""
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    header = io.BytesIO()
    npformat.write_array_header_1_0(header, npformat.header_data_from_array_1_0(value))
    data = b"".join((header.getvalue(), value.reshape(-1).view(np.uint8).data))
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype=SType.NUMPY, data=data)


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The named numpy arrays of ``record``, packed (`to_array_record`) or not;
    `PackedRecordError` for a packed record that does not read back.

    A record made by ``to_array_record(..., keep=True)`` gives back the arrays it was made from,
    read-only, for as long as it holds the same `Array` objects: no copy of the bytes (at the default
    model each `Array.numpy` reads 52 MB again, and the server reads the global model 3-4 times a
    round). Any other record is read from its bytes, into new arrays."""
    kept = getattr(record, _KEPT, None)
    if kept is not None:
        made_of, arrays = kept
        if len(made_of) == len(record) and all(record.get(k) is a for k, a in made_of.items()):
            return dict(arrays)
    if set(record.keys()) == {PACKED}:
        return unpack_arrays(record[PACKED].numpy())
    return {k: v.numpy() for k, v in record.items()}


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Named numeric arrays as one flat uint8 array: a magic string, the length of a JSON index (4 bytes,
    little-endian), the index (name, dtype, shape per array, in order), then every array's bytes in
    C order. Lossless; `unpack_arrays` reads it back and checks every length."""
    index, parts = [], []
    for name, value in arrays.items():
        data = np.asarray(value)
        data = data if data.flags.c_contiguous else data.copy(order="C")  # keeps a 0-d array 0-d
        if data.dtype.kind not in "biuf":
            raise PackedRecordError(f"array {name!r}: dtype {data.dtype} cannot be packed (numbers only)")
        index.append({"name": str(name), "dtype": data.dtype.str, "shape": list(data.shape)})
        parts.append(data.reshape(-1).view(np.uint8))
    header = json.dumps(index).encode()
    head = _MAGIC + len(header).to_bytes(4, "little") + header
    out = np.empty(len(head) + sum(p.size for p in parts), np.uint8)
    out[: len(head)] = np.frombuffer(head, np.uint8)
    pos = len(head)
    for part in parts:
        out[pos: pos + part.size] = part
        pos += part.size
    return out


def unpack_arrays(blob: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays `pack_arrays` packed into ``blob`` (each a fresh, writable copy).
    `PackedRecordError` names what is wrong: another format, a malformed index, a dtype that is not
    numeric, or lengths that do not add up to the blob's (nothing is read past its end)."""
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise PackedRecordError(f"a packed record is a flat uint8 array, got {blob.dtype} of shape {blob.shape}")
    n = len(_MAGIC)
    if blob.size < n + 4 or blob[:n].tobytes() != _MAGIC:
        raise PackedRecordError("the packed record does not start with fedmol's packing header")
    size = int.from_bytes(blob[n: n + 4].tobytes(), "little")
    if size > _HEADER_MAX or n + 4 + size > blob.size:
        raise PackedRecordError(f"the packed record's index claims {size} bytes, more than the record holds")
    try:
        index = json.loads(blob[n + 4: n + 4 + size].tobytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackedRecordError(f"the packed record's index is not JSON ({exc})") from None
    if not isinstance(index, list):
        raise PackedRecordError("the packed record's index is not a list")
    pos = n + 4 + size
    out: dict[str, np.ndarray] = {}
    for i, entry in enumerate(index):
        try:
            if not isinstance(entry["dtype"], str):  # np.dtype(None) would be float64
                raise TypeError(f"dtype {entry['dtype']!r} is not a string")
            name, dtype, shape = entry["name"], np.dtype(entry["dtype"]), entry["shape"]
        except (TypeError, KeyError, ValueError) as exc:
            raise PackedRecordError(f"entry {i} of the packed record's index is malformed ({exc!r})") from None
        if (not isinstance(name, str) or name in out or dtype.kind not in "biuf" or not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise PackedRecordError(f"entry {i} of the packed record's index is malformed: {entry!r:.200}")
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        if pos + nbytes > blob.size:
            raise PackedRecordError(f"array {name!r} ({dtype}, shape {tuple(shape)}) runs past the end of "
                                    f"the packed record")
        out[name] = blob[pos: pos + nbytes].view(dtype).reshape(shape).copy()
        pos += nbytes
    if pos != blob.size:
        raise PackedRecordError(f"the packed record has {blob.size - pos} bytes after its last array")
    return out


def metric_record(numbers: Mapping[str, float]) -> MetricRecord:
    """Numbers -> MetricRecord (typed: Flower's constructor wants a dict of its own value union)."""
    return MetricRecord(dict[str, MetricRecordValues](numbers))


def config_record(values: Mapping[str, ConfigRecordValues]) -> ConfigRecord:
    """Strings, numbers or lists of them -> ConfigRecord (typed like `metric_record`)."""
    return ConfigRecord(dict[str, ConfigRecordValues](values))


def scalar(record: Mapping[str, object], key: str, default: int | float | str | None = None) -> int | float | str:
    """The number or string at ``key`` of a record (``default`` when absent; KeyError without one);
    a list or bytes there is a ValueError naming the key."""
    value = record[key] if default is None else record.get(key, default)
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"record key {key!r}: expected a number or a string, got {type(value).__name__}")
    return value


def join_metrics(metrics: dict[str, float], report: dict[str, str]) -> dict[str, Any]:
    """One legacy (FitRes/EvaluateRes) metrics dict: the numbers and the site report as
    ``report.*`` strings (secure aggregation, `fedmol.server.secagg`)."""
    return {**metrics, **{f"report.{k}": v for k, v in report.items()}}


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The inverse of `join_metrics`: numbers (to aggregate) and the site report."""
    numbers = {k: float(v) for k, v in metrics.items()
               if not k.startswith("report.") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    report = {k[len("report."):]: str(v) for k, v in metrics.items() if k.startswith("report.")}
    return numbers, report
