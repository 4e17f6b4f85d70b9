"""Flower messages built by hand, as a SuperLink would deliver them to the ServerApp."""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from fedmol import wire


def reply(node_id: int, arrays: dict[str, np.ndarray] | None, weight: float, *, site: str = "",
          reference_hash: str = "ref", extra_metrics: dict[str, float] | None = None,
          task_metrics: dict | None = None, summary: dict | None = None) -> Message:
    content = RecordDict({
        wire.METRICS: MetricRecord({wire.NUM_TRAIN_LABELS: weight, **(extra_metrics or {})}),
        wire.REPORT: ConfigRecord({
            wire.REP_SITE: site or f"site{node_id}",
            wire.REP_REFERENCE_HASH: reference_hash,
            wire.REP_TASK_METRICS: json.dumps(task_metrics or {}),
            wire.REP_SUMMARY: json.dumps(summary or {}),
        }),
    })
    if arrays is not None:
        content[wire.ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    meta = Metadata(run_id=1, message_id=f"m{node_id}", src_node_id=node_id, dst_node_id=0,
                    reply_to_message_id="x", group_id="", created_at=time.time(), ttl=3600,
                    message_type="train" if arrays is not None else "evaluate")
    return Message(content=content, metadata=meta)
