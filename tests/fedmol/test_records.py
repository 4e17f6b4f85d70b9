import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from fedmol.records import config_record, from_array_record, metric_record, scalar, to_array_record


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
