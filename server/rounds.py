"""Per-round behaviour written once: a thin wrapper around any Flower strategy.

`HookedStrategy` delegates sampling and aggregation to a Flower strategy (FedAvg, FedProx,
FedAdam, ...) and, around it:

* validates every site's update (expected array names and shapes, finite values) and drops an
  invalid one with a logged reason before the strategy sees it;
* offsets round numbers, so a resumed federation continues at the round after its checkpoint;
* hands each round's site reports to hooks (tracking, checkpoints, the final table);
* with ``evaluate_in_train``, asks the sites to evaluate the model they receive in the train
  message and splits that evaluation off the train replies: one round trip per round, and the
  hooks still see an evaluate outcome for every round (round r-1's, during round r; the last
  round's from a separate evaluate message);
* stops the federation early when ``should_stop`` says so after a round's evaluation (best-round
  selection with ``patience``, `fedmol.server.selection.BestRound`), by raising `FederationStopped`
  out of Flower's loop;
* evaluates a chosen model one last time (`final_evaluation`, ``wire.CFG_FINAL``: the sites
  personalise it), after the rounds.

Flower's own round loop (`Strategy.start`) runs unchanged: nothing of it is copied here.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmol import wire
from fedmol.records import PackedRecordError, from_array_record, metric_record, scalar, to_array_record
from fedmol.transport import (
    TransportError,
    as_received,
    decode_update,
    encode_download,
    encode_download_delta,
    model_tag,
)

log = logging.getLogger("fedmol.server")


@dataclass
class SiteReport:
    """What one site said in one reply: aggregate metrics only, never per-compound values."""

    node_id: int
    site: str
    metrics: dict[str, float]
    task_metrics: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    key_fingerprint: str = ""
    reference_hash: str = ""
    prep_settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_message(cls, msg: Message) -> SiteReport:
        return cls.from_content(msg.metadata.src_node_id, msg.content)

    @classmethod
    def from_content(cls, node_id: int, content: RecordDict) -> SiteReport:
        metrics: dict[str, float] = {}
        for rec in content.metric_records.values():
            metrics.update({k: float(v) for k, v in rec.items() if not isinstance(v, list)})
        report = content.config_records.get(wire.REPORT, ConfigRecord())
        return cls(
            node_id=node_id,
            site=str(report.get(wire.REP_SITE, f"node-{node_id}")),
            metrics=metrics,
            task_metrics=json.loads(str(report.get(wire.REP_TASK_METRICS, "{}"))),
            summary=json.loads(str(report.get(wire.REP_SUMMARY, "{}"))),
            key_fingerprint=str(report.get(wire.REP_KEY_FINGERPRINT, "")),
            reference_hash=str(report.get(wire.REP_REFERENCE_HASH, "")),
            prep_settings=json.loads(str(report.get(wire.REP_PREP_SETTINGS, "{}"))),
        )


@dataclass
class RoundOutcome:
    """One phase (train or evaluate) of one round, as the hooks see it."""

    server_round: int
    phase: str  # "train" | "evaluate"
    reports: list[SiteReport]
    rejected: list[tuple[str, str]]  # (site, reason) of replies dropped by validation
    missing: list[str]  # sites sampled that did not answer (error or timeout)
    metrics: MetricRecord | None
    # train: the new global model (None when the round's aggregation failed); evaluate: the
    # global model that was evaluated
    arrays: ArrayRecord | None = None
    # The final evaluation (wire.CFG_FINAL) of the chosen model, after the rounds: phase
    # "evaluate", server_round the chosen model's round. Never a candidate for best-round selection.
    final: bool = False
    # train: the mean bytes of the global model in this round's train messages (None: not measured)
    download_bytes: float | None = None
    # train: why the accepted updates were not aggregated ("" when they were)
    skipped: str = ""


class RoundHook(Protocol):
    def on_round(self, outcome: RoundOutcome, strategy: RoundBook) -> None: ...


class FederationStopped(Exception):  # noqa: N818 - a signal, not an error
    """Raised out of Flower's round loop (`Strategy.start`) to end the federation early.

    ``evaluated_round``: the round whose evaluation decided it; ``discarded_round``: with
    evaluate-in-train, the round whose training replies carried that evaluation (trained by the
    sites, never aggregated), else None. tests/server/test_rounds.py checks that Flower's loop
    lets it through unchanged.
    """

    def __init__(self, evaluated_round: int, discarded_round: int | None = None) -> None:
        super().__init__(f"federation stopped after the evaluation of round {evaluated_round}")
        self.evaluated_round = evaluated_round
        self.discarded_round = discarded_round


def validate_update(msg: Message, expected: dict[str, tuple[tuple[int, ...], str]],
                    values: dict[str, np.ndarray] | None = None) -> str | None:
    """Why a training reply cannot be aggregated, or None when it can.

    expected: array name -> (shape, dtype) of the global model that was sent; values: the reply's
    arrays as numpy when the caller has them already (decoded), else read from the message.
    """
    content = msg.content
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, got {len(content.array_records)}"
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    record = next(iter(content.array_records.values()))
    values_by_name = values if values is not None and set(values) == set(record.keys()) else None
    names = set(record.keys())
    if names != set(expected):
        extra = sorted(names - set(expected))[:5]
        lacking = sorted(set(expected) - names)[:5]
        return f"array names differ from the global model (unexpected {extra}, missing {lacking})"
    for name, arr in record.items():
        shape, _ = expected[name]
        if tuple(arr.shape) != shape:
            return f"array {name!r} has shape {tuple(arr.shape)}, expected {shape}"
        data = arr.numpy() if values_by_name is None else values_by_name[name]
        if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.integer):
            return f"array {name!r} has dtype {data.dtype}"
        if not np.all(np.isfinite(data)):
            return f"array {name!r} holds NaN or infinite values"
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(wire.NUM_TRAIN_LABELS)
    if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
        return f"{wire.NUM_TRAIN_LABELS} must be a positive number, got {weight!r}"
    return None


def _as_float32(msg: Message, sent: Callable[[], dict[str, np.ndarray]],
                received: dict[str, np.ndarray] | None = None) -> tuple[str | None, dict[str, np.ndarray] | None]:
    """Turn a reduced-precision reply (transport-dtype float16 or int8, `fedmol.transport`) into
    float32 shared arrays, in place, before it is validated and aggregated. ``sent``: the server's
    float32 shared arrays of this round (int8 replies are updates against them); ``received``: the
    same as the sites received them when the train message carried them in float16 (then every
    reply is decoded against ``sent``: error feedback, `decode_update`). Returns why the reply
    cannot be decoded (or None), and the decoded arrays (None when nothing was decoded)."""
    decoded: dict[str, np.ndarray] | None = None
    for key, record in list(msg.content.array_records.items()):
        # uint8: compressed int8, or a packed record (`fedmol.records.to_array_record`), unpacked here
        if received is not None or any(a.dtype in ("float16", "int8", "uint8") for a in record.values()):
            try:
                arrays = from_array_record(record)
                updates = received is not None or any(v.dtype in (np.int8, np.uint8) for v in arrays.values())
                decoded = decode_update(arrays, sent() if updates else None, received=received)
            except (TransportError, PackedRecordError) as exc:
                return str(exc), None
            msg.content[key] = to_array_record(decoded, keep=True)  # the aggregation reads them as they are
    return None, decoded


def _put_model(msg: Message, arrays: ArrayRecord, record: ArrayRecord) -> None:
    """Put ``record`` in place of the model ``arrays`` a strategy put into ``msg``. Flower's strategies
    give every message the same RecordDict: each gets its own here."""
    msg.content = RecordDict(dict(msg.content.items()))
    for key, sent in list(msg.content.array_records.items()):
        if sent is arrays or set(sent.keys()) == set(arrays.keys()):
            msg.content[key] = record


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in arrays.values())


class RoundBook:
    """What every round loop of the consortium keeps about its sites, shared by `HookedStrategy`
    (Message API) and `fedmol.server.secagg.SecureFedAvg` (Flower's legacy path, for SecAgg+): the sites'
    names, the reference hash and preparation settings they must share, and the hooks to call.
    The class using it sets ``hooks``, ``expected_fingerprint``, ``site_names``, ``prep_settings``
    and ``key_fingerprint``, and what the hooks read: ``evaluate_in_train``, ``last_arrays`` (the
    current global model), ``last_round`` (the last round trained, as the consortium numbers them)
    and ``inner`` (the strategy whose server-optimiser state a checkpoint keeps)."""

    hooks: list[RoundHook]
    expected_fingerprint: str
    site_names: dict[int, str]
    prep_settings: dict[str, Any]
    key_fingerprint: str
    evaluate_in_train: bool
    last_arrays: ArrayRecord | None
    last_round: int
    inner: object

    def _check_fingerprint(self, report: SiteReport) -> str | None:
        """Every site must have prepared its data with the consortium's key and settings."""
        if not report.reference_hash:
            return "the site sent no reference hash"
        if not self.expected_fingerprint:
            self.expected_fingerprint = report.reference_hash
            return None
        if report.reference_hash != self.expected_fingerprint:
            return (
                f"reference hash {report.reference_hash[:12]} differs from the consortium's "
                f"{self.expected_fingerprint[:12]}: the site prepared its data with another key or settings"
            )
        return None

    def _remember(self, report: SiteReport) -> SiteReport:
        self.site_names[report.node_id] = report.site
        if report.prep_settings and not self.prep_settings:
            self.prep_settings = report.prep_settings
        if report.key_fingerprint and not self.key_fingerprint:
            self.key_fingerprint = report.key_fingerprint
        return report

    def _fire(self, outcome: RoundOutcome) -> None:
        if outcome.phase == "train":
            self.last_round = outcome.server_round
        if outcome.missing:
            log.warning("round %d %s: no reply from %s", outcome.server_round, outcome.phase, outcome.missing)
        for hook in self.hooks:
            hook.on_round(outcome, self)


class HookedStrategy(RoundBook, Strategy):
    """Wrap a Flower strategy: validate updates, offset rounds, call hooks once per phase."""

    def __init__(
        self,
        inner: Strategy,
        hooks: Sequence[RoundHook] = (),
        *,
        round_offset: int = 0,
        total_rounds: int | None = None,
        expected_fingerprint: str = "",
        evaluate_in_train: bool = False,
        should_stop: Callable[[], bool] | None = None,
        download_dtype: str = "float32",
        min_updates: int = 1,
    ) -> None:
        self.inner: Strategy = inner
        # The fewest accepted updates the strategy aggregates (`fedmol.server.strategies.robust_quorum`),
        # or all the sampled sites' when fewer were sampled: with fewer, the round keeps the global model.
        self.min_updates = min_updates
        # The global model's dtype in train messages (`fedmol.transport.download_dtype`).
        self.download_dtype = download_dtype
        self._received: dict[str, np.ndarray] | None = None  # this round's download as the sites got it
        # int8 downloads: the copy of the model the sites that answered the last round hold, its
        # checksum, and those sites (node ids); bytes per site of this round's train messages.
        self._held: dict[str, np.ndarray] | None = None
        self._held_tag = ""
        self._holders: set[int] = set()
        self.download_bytes: float | None = None
        self.evaluate_in_train = evaluate_in_train
        self.should_stop = should_stop  # asked after each round's evaluation
        self._evaluate_round: int | None = None  # the round evaluated inside this round's train replies
        self._evaluated: ArrayRecord | None = None  # the global model sent for evaluation
        self._skip_evaluate = False
        self.hooks = list(hooks)
        self.round_offset = round_offset
        self.total_rounds = total_rounds
        self.expected_fingerprint = expected_fingerprint
        self.site_names: dict[int, str] = {}
        self._expected: dict[str, tuple[tuple[int, ...], str]] = {}
        self._sent: ArrayRecord | None = None  # the shared arrays sent in this round's train messages
        self._sent_numpy: dict[str, np.ndarray] | None = None  # the same as numpy, once a reply needs them
        self._sampled: dict[str, list[int]] = {"train": [], "evaluate": []}
        self.last_arrays: ArrayRecord | None = None
        self.last_round = round_offset
        self.prep_settings: dict[str, Any] = {}  # the sites' standardisation/featurisation settings
        self.key_fingerprint = ""

    # -- rounds as the consortium numbers them -----------------------------------------
    def _round(self, server_round: int) -> int:
        return server_round + self.round_offset

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = self._round(server_round)
        self._expected = {k: (tuple(a.shape), a.dtype) for k, a in arrays.items()}
        self._sent, self._sent_numpy = arrays, None  # int8 replies are updates against these
        self._evaluate_round = rnd - 1 if self.evaluate_in_train and rnd > 1 else None
        if self._evaluate_round is not None:
            self._evaluated = arrays  # the last aggregate: what the sites evaluate before training
            config = ConfigRecord({**dict(config), wire.CFG_EVALUATE_FIRST: True,
                                   wire.CFG_EVALUATE_ROUND: self._evaluate_round})
        messages = list(self.inner.configure_train(rnd, arrays, config, grid))
        self._received = None
        self.download_bytes = None
        if self.download_dtype != "float32" and messages:
            self._sent_numpy = from_array_record(arrays)  # read once: the replies are decoded against it too
            self._download(messages, arrays)
        elif messages:  # the model as it is
            self.download_bytes = float(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                                            for a in arrays.values()))
        self._sampled["train"] = [m.metadata.dst_node_id for m in messages]
        return messages

    def _download(self, messages: list[Message], arrays: ArrayRecord) -> None:
        """Put the global model into the strategy's train ``messages`` as the sites receive it
        (`fedmol.transport`): float16; or with int8, the int8 change against the copy the site holds
        (the sites that answered the last round hold the same one) and the whole copy, in float32, to
        the others (the first round, and after a restart: everyone gets the model in float16, and
        that becomes the copy). Sets what the replies are decoded against (``_received``)."""
        assert self._sent_numpy is not None
        model = self._sent_numpy
        holders = {id(m) for m in messages if self.download_dtype == "int8" and self._held is not None
                   and m.metadata.dst_node_id in self._holders}
        records: dict[int, tuple[ArrayRecord, dict[str, Any], int]] = {}  # per message: arrays, config, bytes
        if holders:
            assert self._held is not None
            change, held = encode_download_delta(model, self._held)
            tag = model_tag(held)
            delta_record, delta_bytes = to_array_record(change, packed=True), _nbytes(change)
            whole = None
            for msg in messages:
                if id(msg) in holders:
                    records[id(msg)] = (delta_record, {wire.CFG_DOWNLOAD_BASE: self._held_tag,
                                                       wire.CFG_DOWNLOAD_TAG: tag}, delta_bytes)
                else:
                    whole = whole or to_array_record(held, packed=True)
                    records[id(msg)] = (whole, {wire.CFG_DOWNLOAD_TAG: tag}, _nbytes(held))
        else:
            down = encode_download(model, "float16")
            held = as_received(down)
            tag = model_tag(held) if self.download_dtype == "int8" else ""
            record = to_array_record(down, packed=True)
            extra = {wire.CFG_DOWNLOAD_TAG: tag} if self.download_dtype == "int8" else {}
            records = {id(msg): (record, extra, _nbytes(down)) for msg in messages}
        sizes = []
        for msg in messages:  # the strategy's own message, with the model as this site receives it
            record, extra, size = records[id(msg)]
            _put_model(msg, arrays, record)
            if extra:
                config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
                msg.content[wire.CONFIG] = ConfigRecord({**dict(config), **extra})
            sizes.append(size)
        self.download_bytes = float(np.mean(sizes))
        self._received = held
        if self.download_dtype == "int8":
            self._held, self._held_tag = held, tag

    def _sent_arrays(self) -> dict[str, np.ndarray]:
        if self._sent_numpy is None:
            self._sent_numpy = from_array_record(self._sent) if self._sent is not None else {}
        return self._sent_numpy

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self._round(server_round)
        replies = list(replies)
        if self._evaluate_round is not None:
            self._aggregate_embedded_evaluation(server_round, replies)
        accepted, rejected = [], []
        checked = self._decode_and_validate([m for m in replies if not m.has_error()])
        for msg in replies:
            if msg.has_error():  # e.g. a site that refused the run or was stopped: say why
                node = msg.metadata.src_node_id
                log.warning("round %d: site %s replied with an error: %s", rnd,
                            self.site_names.get(node, f"node-{node}"), msg.error.reason)
                continue
            report = SiteReport.from_message(msg)
            reason = checked[id(msg)] or self._check_fingerprint(report)
            if reason:
                log.warning("round %d: update from site %s rejected: %s", rnd, report.site, reason)
                rejected.append((report.site, reason))
            else:
                accepted.append(msg)
        missing = self._missing("train", replies)
        # They hold this round's copy of the model: the next round sends them only its change.
        self._holders = {m.metadata.src_node_id for m in replies if not m.has_error()}
        arrays, metrics = (None, None)
        skipped = ""
        # A consortium smaller than the quorum cannot outvote anyone: its rounds aggregate what came.
        sampled = len(self._sampled["train"]) or len(replies)
        needed = min(self.min_updates, sampled)
        if sampled < self.min_updates:
            log.warning("round %d: %d site(s) sampled; this strategy outvotes a poisoning site only from %d",
                        rnd, sampled, self.min_updates)
        if accepted and len(accepted) < needed:
            skipped = (f"{len(accepted)} of {sampled} sampled sites' updates accepted, and this strategy needs "
                       f"{needed} to outvote a poisoning site: the global model stays as it was this round")
            log.warning("round %d: %s", rnd, skipped)
        elif accepted:
            arrays, metrics = self.inner.aggregate_train(rnd, accepted)
        if arrays is not None:
            self.last_arrays = arrays
        reports = [self._remember(SiteReport.from_message(m)) for m in accepted]
        self._fire(RoundOutcome(rnd, "train", reports, rejected, missing, metrics, arrays,
                                download_bytes=self.download_bytes, skipped=skipped))
        return arrays, metrics

    def _decode_and_validate(self, replies: list[Message]) -> dict[int, str | None]:
        """Per reply (by ``id``): why its update cannot be aggregated, or None. Decodes each reply to
        float32 in place (`_as_float32`) and checks it (`validate_update`), the replies side by side:
        inflating, dequantising and the finite checks run in numpy and zlib, which release the GIL,
        and the sites wait for the next round meanwhile."""
        lock = threading.Lock()

        def sent() -> dict[str, np.ndarray]:
            with lock:  # read from the record once, by whichever reply needs it first
                return self._sent_arrays()

        def check(msg: Message) -> str | None:
            reason, decoded = _as_float32(msg, sent, self._received)
            return reason or validate_update(msg, self._expected, decoded)

        if len(replies) <= 1:
            return {id(m): check(m) for m in replies}
        with ThreadPoolExecutor(max_workers=min(len(replies), os.cpu_count() or 1, 8)) as pool:
            return dict(zip((id(m) for m in replies), pool.map(check, replies), strict=True))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's evaluation, never the final one (see `final_evaluation`). With
        evaluate-in-train only the last round has an evaluate message; the others' evaluations
        come with the next round's train replies."""
        rnd = self._round(server_round)
        last = self.total_rounds is not None and rnd >= self.total_rounds
        self._skip_evaluate = self.evaluate_in_train and not last
        if self._skip_evaluate:  # the next round's train replies carry this evaluation
            self._sampled["evaluate"] = []
            return []
        return self._configure_evaluation(rnd, arrays, config, grid, final=False)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self._skip_evaluate:
            return None
        rnd = self._round(server_round)
        metrics = self._aggregate_evaluation(rnd, replies, final=False)
        if self.should_stop is not None and self.should_stop():
            discarded = self._round(server_round + 1) if self._evaluate_round == rnd else None
            raise FederationStopped(rnd, discarded)
        return metrics

    def final_evaluation(self, grid: Grid, arrays: ArrayRecord, *, model_round: int, config: ConfigRecord,
                         timeout: float) -> MetricRecord | None:
        """Send ``arrays`` (the chosen global model, of round ``model_round``) to the sites for the
        final evaluation (``wire.CFG_FINAL``: they may personalise it) and fire its outcome
        (``final=True``). Called once, after the rounds, outside Flower's loop."""
        messages = self._configure_evaluation(model_round, arrays, config, grid, final=True)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        return self._aggregate_evaluation(model_round, replies, final=True)

    def evaluate_model(self, grid: Grid, arrays: ArrayRecord, *, model_round: int, config: ConfigRecord,
                       timeout: float) -> MetricRecord | None:
        """One plain (not final) evaluation of ``arrays`` as round ``model_round``'s model, outside
        Flower's loop: for a resumed federation whose last round was trained but never evaluated."""
        messages = self._configure_evaluation(model_round, arrays, config, grid, final=False)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        return self._aggregate_evaluation(model_round, replies, final=False)

    def _configure_evaluation(self, rnd: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, *,
                              final: bool) -> list[Message]:
        config = ConfigRecord({**dict(config), wire.CFG_FINAL: final})
        self._evaluated = arrays
        messages = list(self.inner.configure_evaluate(rnd, arrays, config, grid))
        if messages:  # the model packed in one array, as in train messages (`_download`)
            packed = to_array_record(from_array_record(arrays), packed=True)
            for msg in messages:
                _put_model(msg, arrays, packed)
        self._sampled["evaluate"] = [m.metadata.dst_node_id for m in messages]
        return messages

    def _aggregate_evaluation(self, rnd: int, replies: Iterable[Message], *, final: bool) -> MetricRecord | None:
        replies = [m for m in replies if not m.has_error()]
        missing = self._missing("evaluate", replies)
        good = [m for m in replies if len(m.content.metric_records) == 1]
        metrics = self.inner.aggregate_evaluate(rnd, good) if good else None
        reports = [self._remember(SiteReport.from_message(m)) for m in good]
        evaluated = self._evaluated if self._evaluated is not None else self.last_arrays
        self._fire(RoundOutcome(rnd, "evaluate", reports, [], missing, metrics, evaluated, final=final))
        return metrics

    def _aggregate_embedded_evaluation(self, server_round: int, replies: list[Message]) -> None:
        """Split each train reply's evaluation of the received model off, and aggregate those as
        the evaluate phase of the previous round (which is the round whose model they evaluated)."""
        evaluations = []
        for msg in replies:
            if msg.has_error() or wire.EVAL_METRICS not in msg.content.config_records:
                continue
            metrics = msg.content.config_records[wire.EVAL_METRICS]
            report = msg.content.config_records.get(wire.EVAL_REPORT, ConfigRecord())
            del msg.content[wire.EVAL_METRICS]
            if wire.EVAL_REPORT in msg.content.config_records:
                del msg.content[wire.EVAL_REPORT]
            content = RecordDict({wire.METRICS: metric_record({k: float(scalar(metrics, k)) for k in metrics}),
                                  wire.REPORT: report})
            # The site's own reply, as the evaluate phase would have received it (same metadata):
            # Flower's typed overloads leave out the metadata form its deserialisation uses.
            evaluations.append(Message(metadata=copy.copy(msg.metadata), content=content))  # type: ignore[call-overload]
        self._sampled["evaluate"] = list(self._sampled["train"])
        self._skip_evaluate = False
        # Flower's strategies number rounds themselves; the wrapped one sees the consortium's.
        self.aggregate_evaluate(server_round - 1, evaluations)

    def _missing(self, phase: str, replies: list[Message]) -> list[str]:
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        return [self.site_names.get(n, f"node-{n}") for n in self._sampled[phase] if n not in answered]
