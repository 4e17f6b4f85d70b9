"""The Flower ClientApp: decode the message, let the site work, encode the reply.

Kept thin and light to import (the deployment engine starts a fresh ClientApp process per
message): torch and the site's data are loaded inside the site node, or stay warm in a site
worker (`client.worker`) when the SuperNode's node config names one (``site-worker=PATH``).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.records import from_array_record, to_array_record

app = ClientApp()


def _handle(op: str, msg: Message, context: Context) -> Message:
    from client.site import report_task_names, site_for

    node_config = dict(context.node_config)
    run_config = dict(context.run_config)
    cfg = FederationConfig.from_run_config(run_config)
    config = msg.content.get(wire.CONFIG, ConfigRecord())
    kwargs: dict[str, Any] = {"server_round": int(config[wire.CFG_ROUND]),
                              "federation_id": str(config[wire.CFG_FEDERATION_ID])}
    if op == "train":
        kwargs["proximal_mu"] = float(config.get(wire.CFG_PROXIMAL_MU, 0.0))
    shared = from_array_record(msg.content[wire.ARRAYS])
    worker = node_config.get("site-worker")
    if worker:
        from client.worker import forward

        reply = forward(worker, node_config["site-store"],
                        {"op": op, "run_config": run_config, "shared": shared,
                         "report_task_names": report_task_names(node_config, cfg), **kwargs},
                        timeout=cfg.round_timeout)
    else:
        site = site_for(node_config, cfg)
        reply = site.train_round(cfg, shared, **kwargs) if op == "train" else site.evaluate_round(cfg, shared, **kwargs)
    content = RecordDict({wire.METRICS: MetricRecord(reply.metrics), wire.REPORT: ConfigRecord(reply.report)})
    if reply.arrays is not None:
        content[wire.ARRAYS] = to_array_record(reply.arrays)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle("evaluate", msg, context)
