"""The Flower ClientApp: decode the message, let the site work, encode the reply.

Kept light to import: with Flower's default isolation the deployment engine starts a fresh
ClientApp process per message, so torch and the site's data are loaded only inside the site node.
The site runtime (`fedmol.client.worker`) runs this same app in one long-lived process instead.

With ``secure-aggregation`` the server speaks Flower's legacy records (FitIns/EvaluateIns, see
`fedmol.server.secagg`) and Flower's `secaggplus_mod` masks the training reply; the site does exactly
the same work, and its report travels in the legacy metrics as ``report.*`` strings. A site whose node
config says ``require-secure-aggregation=true`` refuses plain training rounds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

if TYPE_CHECKING:
    from flwr.clientapp.typing import ClientAppCallable

from fedmol import wire
from fedmol.client.provenance import FAB_HASH, outbox_provenance
from fedmol.config import FederationConfig
from fedmol.errors import ConfigError
from fedmol.records import (
    PackedRecordError,
    config_record,
    from_array_record,
    metric_record,
    scalar,
    to_array_record,
)

LEGACY_FIT = "fitins.parameters"  # Flower's legacy record names (flwr.compat recorddict_compat)
LEGACY_EVALUATE = "evaluateins.parameters"
REQUIRE_SECURE_AGGREGATION = "require-secure-aggregation"  # node config: refuse plain training rounds
log = logging.getLogger("fedmol.client")


def requires_secure_aggregation(node_config: dict[str, Any]) -> bool:
    """The site's own choice, node config ``require-secure-aggregation`` (default false)."""
    value = str(node_config.get(REQUIRE_SECURE_AGGREGATION, "false")).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"node config {REQUIRE_SECURE_AGGREGATION}={value!r}: expected true or false")
    return value in ("true", "1", "yes")


def _secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ mod, for the messages of a secure-aggregation run only. A site that requires
    secure aggregation refuses a plain training round: an error reply that says why, nothing trained."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        if msg.metadata.message_type == MessageType.TRAIN and requires_secure_aggregation(dict(context.node_config)):
            reason = (f"this site requires secure aggregation (node config {REQUIRE_SECURE_AGGREGATION}=true) "
                      f"and refuses a plain training round (run {msg.metadata.run_id}): run the federation "
                      "with secure-aggregation=true")
            log.warning(reason)
            return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, call_next)


app = ClientApp(mods=[_secure_aggregation])


def _handle_legacy(op: str, msg: Message, context: Context) -> Message:
    """A round of a secure-aggregation run: legacy records in and out, the same site work."""
    import json

    from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from fedmol.client.site import site_for
    from fedmol.records import join_metrics

    cfg = FederationConfig.from_run_config(dict(context.run_config))
    site = site_for(dict(context.node_config), cfg)
    site.provenance = outbox_provenance(cfg, dict(context.run_config), secure_aggregation=True,
                                        fab_hash=FAB_HASH.get())
    ins = (compat.recorddict_to_fitins if op == "train" else compat.recorddict_to_evaluateins)(msg.content, True)
    names = json.loads(str(ins.config[wire.CFG_ARRAY_NAMES]))
    shared = dict(zip(names, parameters_to_ndarrays(ins.parameters), strict=True))
    kwargs: dict[str, Any] = {"server_round": int(ins.config[wire.CFG_ROUND]),
                              "federation_id": str(ins.config[wire.CFG_FEDERATION_ID])}
    ok = Status(code=Code.OK, message="")
    if op == "train":
        reply = site.train_round(cfg, shared, **kwargs)
        assert reply.arrays is not None
        res = FitRes(status=ok, parameters=ndarrays_to_parameters([reply.arrays[k] for k in names]),
                     num_examples=int(reply.metrics[wire.NUM_TRAIN_LABELS]),
                     metrics=join_metrics(reply.metrics, reply.report))
        return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
    reply = site.evaluate_round(cfg, shared, final=bool(ins.config.get(wire.CFG_FINAL, False)), **kwargs)
    evaluated = EvaluateRes(status=ok, loss=float(reply.metrics[wire.VALID_LOSS]),
                            num_examples=int(reply.metrics[wire.NUM_EVAL_LABELS]),
                            metrics=join_metrics(reply.metrics, reply.report))
    return Message(compat.evaluateres_to_recorddict(evaluated), reply_to=msg)


def _handle(op: str, msg: Message, context: Context) -> Message:
    from fedmol.client.download import DownloadError, received_model
    from fedmol.client.site import site_for

    node_config = dict(context.node_config)
    run_config = dict(context.run_config)
    cfg = FederationConfig.from_run_config(run_config)
    config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
    kwargs: dict[str, Any] = {"server_round": int(scalar(config, wire.CFG_ROUND)),
                              "federation_id": str(scalar(config, wire.CFG_FEDERATION_ID))}
    if op == "train":
        kwargs["proximal_mu"] = float(scalar(config, wire.CFG_PROXIMAL_MU, 0.0))
    site = site_for(node_config, cfg)
    try:  # float16 upcast; int8: the change applied to the copy this site kept (`fedmol.client.download`)
        try:
            arrays = from_array_record(msg.content.array_records[wire.ARRAYS])
        except PackedRecordError as exc:
            raise DownloadError(f"the message's model cannot be read: {exc}") from None
        shared = received_model(arrays, config, store_path=site.store_path, federation_id=kwargs["federation_id"])
    except DownloadError as exc:
        log.warning("site %s: %s", site.name, exc)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"site {site.name}: {exc}"),
                       reply_to=msg)
    site.provenance = outbox_provenance(cfg, run_config, secure_aggregation=cfg.secure_aggregation,
                                        fab_hash=FAB_HASH.get(), packed=True)
    evaluation = None
    if op == "train" and bool(config.get(wire.CFG_EVALUATE_FIRST, False)):
        # The model received is the last round's aggregate: evaluate it, then train on it, one reply.
        evaluation = site.evaluate_round(cfg, shared, server_round=int(scalar(config, wire.CFG_EVALUATE_ROUND)),
                                         federation_id=kwargs["federation_id"])
    if op == "train":
        reply = site.train_round(cfg, shared, **kwargs)
    else:
        reply = site.evaluate_round(cfg, shared, final=bool(config.get(wire.CFG_FINAL, False)), **kwargs)
    content = RecordDict({wire.METRICS: metric_record(reply.metrics), wire.REPORT: config_record(reply.report)})
    if reply.arrays is not None:
        content[wire.ARRAYS] = to_array_record(reply.arrays, packed=True)  # one object to move, not ~20
    if evaluation is not None:
        content[wire.EVAL_METRICS] = config_record(evaluation.metrics)
        content[wire.EVAL_REPORT] = config_record(evaluation.report)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if LEGACY_FIT in msg.content.array_records:
        return _handle_legacy("train", msg, context)
    return _handle("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    if LEGACY_EVALUATE in msg.content.array_records:
        return _handle_legacy("evaluate", msg, context)
    return _handle("evaluate", msg, context)
