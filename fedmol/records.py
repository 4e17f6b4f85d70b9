"""The one boundary between Flower records and plain numpy dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.app.typing import ConfigRecordValues, MetricRecordValues


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays (e.g. a state dict as numpy) -> ArrayRecord, order kept."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


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
