"""The Flower ClientApp: decode the message, let the site work, encode the reply.

Kept thin and light to import (a fresh ClientApp process may start per message in the
deployment engine): torch, RDKit and the site's data are loaded inside the handlers.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmol import wire
from fedmol.config import FederationConfig
from fedmol.records import from_array_record, to_array_record

app = ClientApp()


def _setup(msg: Message, context: Context):  # noqa: ANN202
    from client.site import site_for

    cfg = FederationConfig.from_run_config(dict(context.run_config))
    site = site_for(dict(context.node_config), cfg)
    shared = from_array_record(msg.content[wire.ARRAYS])
    config = msg.content.get(wire.CONFIG, ConfigRecord())
    return cfg, site, shared, config


def _reply(msg: Message, reply) -> Message:  # noqa: ANN001
    content = RecordDict({wire.METRICS: MetricRecord(reply.metrics), wire.REPORT: ConfigRecord(reply.report)})
    if reply.arrays is not None:
        content[wire.ARRAYS] = to_array_record(reply.arrays)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, site, shared, config = _setup(msg, context)
    reply = site.train_round(
        cfg, shared,
        server_round=int(config[wire.CFG_ROUND]),
        federation_id=str(config[wire.CFG_FEDERATION_ID]),
        proximal_mu=float(config.get(wire.CFG_PROXIMAL_MU, 0.0)),
    )
    return _reply(msg, reply)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, site, shared, config = _setup(msg, context)
    reply = site.evaluate_round(
        cfg, shared,
        server_round=int(config[wire.CFG_ROUND]),
        federation_id=str(config[wire.CFG_FEDERATION_ID]),
    )
    return _reply(msg, reply)
