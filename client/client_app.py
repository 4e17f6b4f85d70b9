"""The Flower ClientApp: decode the message, let the site work, encode the reply.

Kept light to import: with Flower's default isolation the deployment engine starts a fresh
ClientApp process per message, so torch and the site's data are loaded only inside the site node.
The site runtime (`client.worker`) runs this same app in one long-lived process instead.
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
    from client.site import site_for

    node_config = dict(context.node_config)
    run_config = dict(context.run_config)
    cfg = FederationConfig.from_run_config(run_config)
    config = msg.content.get(wire.CONFIG, ConfigRecord())
    kwargs: dict[str, Any] = {"server_round": int(config[wire.CFG_ROUND]),
                              "federation_id": str(config[wire.CFG_FEDERATION_ID])}
    if op == "train":
        kwargs["proximal_mu"] = float(config.get(wire.CFG_PROXIMAL_MU, 0.0))
    shared = from_array_record(msg.content[wire.ARRAYS])
    site = site_for(node_config, cfg)
    evaluation = None
    if op == "train" and bool(config.get(wire.CFG_EVALUATE_FIRST, False)):
        # The model received is the last round's aggregate: evaluate it, then train on it, one reply.
        evaluation = site.evaluate_round(cfg, shared, server_round=int(config[wire.CFG_EVALUATE_ROUND]),
                                         federation_id=kwargs["federation_id"])
    reply = site.train_round(cfg, shared, **kwargs) if op == "train" else site.evaluate_round(cfg, shared, **kwargs)
    content = RecordDict({wire.METRICS: MetricRecord(reply.metrics), wire.REPORT: ConfigRecord(reply.report)})
    if reply.arrays is not None:
        content[wire.ARRAYS] = to_array_record(reply.arrays)
    if evaluation is not None:
        content[wire.EVAL_METRICS] = ConfigRecord(evaluation.metrics)
        content[wire.EVAL_REPORT] = ConfigRecord(evaluation.report)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle("evaluate", msg, context)
