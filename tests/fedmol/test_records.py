import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmol.records import (
    PACKED,
    PackedRecordError,
    config_record,
    from_array_record,
    metric_record,
    numpy_array,
    pack_arrays,
    scalar,
    to_array_record,
    unpack_arrays,
)


def test_arrays_round_trip_in_order():
    arrays = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float16)}
    back = from_array_record(to_array_record(arrays))
    assert list(back) == ["b", "a"]
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())


def test_records_from_plain_dicts():
    assert isinstance(metric_record({"loss": 0.5}), MetricRecord)
    assert dict(config_record({"site": "acme", "n": 3})) == {"site": "acme", "n": 3}


def test_scalar_reads_numbers_and_strings_and_names_the_key_of_anything_else():
    record = ConfigRecord({"round": 3, "id": "f1", "names": ["a", "b"]})
    assert (scalar(record, "round"), scalar(record, "id"), scalar(record, "mu", 0.0)) == (3, "f1", 0.0)
    with pytest.raises(KeyError):
        scalar(record, "mu")
    with pytest.raises(ValueError, match="'names'.*list"):
        scalar(record, "names")


# -- packed records: one array on the wire instead of one per array --------------------------------
_DTYPES = st.sampled_from([np.float32, np.float16, np.float64, np.int8, np.uint8, np.int64, np.bool_])


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12),
                       _DTYPES.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                                 min_side=0, max_side=5))),
                       max_size=5))
def test_a_packed_record_is_one_array_and_reads_back_exactly(arrays):
    record = to_array_record(arrays, packed=True)
    assert list(record.keys()) == [PACKED] and record[PACKED].dtype == "uint8"
    back = from_array_record(record)
    assert list(back) == list(arrays)  # names and order
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        assert back[name].tobytes() == value.tobytes()  # bit for bit (NaN payloads too)
        assert back[name].flags.writeable and back[name].flags.c_contiguous


def test_a_packed_record_holds_the_bytes_of_its_arrays_behind_a_small_index():
    arrays = {"trunk": np.ones((300, 40), np.int8), "scales": np.ones(300, np.float32),
              "view": np.arange(12.0).reshape(3, 4)[:, ::2]}  # not contiguous: packed in C order
    blob = pack_arrays(arrays)
    payload = sum(np.asarray(v).nbytes for v in arrays.values())
    assert payload < blob.size < payload + 300
    assert np.array_equal(unpack_arrays(blob)["view"], arrays["view"])


def _blob(index, payload: bytes = b"") -> np.ndarray:
    header = json.dumps(index).encode()
    return np.frombuffer(b"FMPACK1\0" + len(header).to_bytes(4, "little") + header + payload, np.uint8)


@pytest.mark.parametrize(("blob", "match"), [
    (np.frombuffer(b"not a packed record at all", np.uint8), "header"),
    (np.zeros((2, 8), np.uint8), "flat uint8"),
    (np.frombuffer(b"FMPACK1\0" + (10**6).to_bytes(4, "little") + b"[]", np.uint8), "claims"),
    (np.frombuffer(b"FMPACK1\0" + (3).to_bytes(4, "little") + b"[{]", np.uint8), "not JSON"),
    (_blob({"name": "a"}), "not a list"),
    (_blob([{"name": "a", "dtype": "<f4"}]), "entry 0"),
    (_blob([{"name": "a", "dtype": "|O", "shape": [1]}], b"\0" * 8), "entry 0"),
    (_blob([{"name": "a", "dtype": "<U4", "shape": [1]}], b"\0" * 16), "entry 0"),
    (_blob([{"name": "a", "dtype": "<f4", "shape": [-1]}]), "entry 0"),
    (_blob([{"name": "a", "dtype": None, "shape": [1]}], b"\0" * 8), "entry 0"),
    (_blob([{"name": "a", "dtype": "<f4", "shape": [2]}] * 2, b"\0" * 16), "entry 1"),  # a name twice
    (_blob([{"name": "a", "dtype": "<f4", "shape": [10**12, 10**12]}], b"\0" * 8), "runs past the end"),
    (_blob([{"name": "a", "dtype": "<f4", "shape": [1]}], b"\0" * 5), "1 bytes after"),
])
def test_a_malformed_packed_record_is_refused_with_the_reason(blob, match):
    with pytest.raises(PackedRecordError, match=match):
        from_array_record(ArrayRecord({PACKED: Array(blob)}))


def test_only_numeric_arrays_are_packed():
    with pytest.raises(PackedRecordError, match="'names'"):
        pack_arrays({"names": np.array(["a", "b"])})


def test_a_kept_record_gives_back_its_arrays_read_only_until_an_entry_is_replaced():
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    record = to_array_record(arrays, keep=True)
    out = from_array_record(record)
    assert out["w"] is arrays["w"] and out["b"] is arrays["b"]  # no copy of the bytes
    with pytest.raises(ValueError, match="read-only"):
        out["w"][0, 0] = 5.0
    assert np.array_equal(record["w"].numpy(), arrays["w"])  # the bytes agree with the kept arrays
    # A replaced entry: the record no longer is what it was made of, so it is read from its bytes.
    record["w"] = Array(np.zeros((2, 3), np.float32))
    again = from_array_record(record)
    assert again["w"] is not arrays["w"] and not again["w"].any() and again["w"].flags.writeable
    # Without keep, a reader gets its own writable copy, and the caller's arrays stay writable.
    mine = {"w": np.ones(2, np.float32)}
    plain = from_array_record(to_array_record(mine))
    assert plain["w"] is not mine["w"] and plain["w"].flags.writeable and mine["w"].flags.writeable


@pytest.mark.parametrize("value", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(3.5, np.float16),  # 0-d stays 0-d
    np.zeros((0, 3), np.int8),
    np.arange(7, dtype=np.uint8),
    np.ones((2, 3), bool),
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.arange(20, dtype=np.int64)[::3],
])
def test_numpy_array_is_flowers_array_down_to_the_bytes(value):
    """A contract test of `numpy_array` against Flower's `Array(ndarray)`: if Flower changes how it
    stores an array, this fails and `numpy_array` must follow."""
    ours, flowers = numpy_array(value), Array(np.ascontiguousarray(value) if value.ndim else value)
    assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
    assert ours.data == flowers.data
    assert np.array_equal(ours.numpy(), value) and ours.numpy().shape == value.shape
