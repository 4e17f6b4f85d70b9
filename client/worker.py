"""The site runtime: a long-lived process that runs this site's ClientApp for its SuperNode.

Out of the box, Flower 1.41's SuperNode starts a SuperExec that launches a fresh ``flwr-clientapp``
process for every message: seconds of imports (flwr, torch), installing the app from the FAB and
reloading the site store, twice per round. Flower's own answer is ``--isolation process``: the
SuperNode then serves its Runtime API and leaves running the ClientApp to a separate process. That
process is this one:

    fedmol-supernode ... --isolation process --port 9094 \\
        --node-config 'site-store="/data/store" site-name="acme"'
    fedmol site worker --runtime 127.0.0.1:9094          # on the same host, same account

(`fedmol-supernode` is `flower-supernode` with a shorter idle wait, see `fedmol.client.supernode`.)

It asks the SuperNode for tasks (as Flower's SuperExec does), and runs them in-process with the
ClientApp, torch and the site's data already loaded: a message costs only its own compute.

One worker thread runs the tasks, one at a time, in the order they came; up to ``queue_size``
more wait, each kept alive by its heartbeat. A task that finds the queue full is refused at once
(an error reply that names the reason), never left waiting. Everything about a task (its token,
its client, its message, its final status) lives in its own `_Task`: nothing process-wide says
which task is running. A task whose run was stopped (the SuperNode no longer knows it) stops
waiting for its message's arrays.

SIGTERM (or SIGINT) stops the runtime cleanly: the running task and every queued one fail with a
reply that says why ("the site runtime was stopped ..."), which the server logs, and the process
exits 0 without waiting for the running computation.

The site decides what runs. It runs the fedmol installed on the site, never code shipped by the
server, and only runs whose app it approved. An app's identity is its id (publisher/name), its
version, and the sha256 of its run configuration (the keys and defaults of
``[tool.flwr.app.config]`` in the FAB: the FAB carries no code, so its configuration is what
identifies the app). Approved are: the app of the installed fedmol (its version and
`FederationConfig`'s keys and defaults), and any identity listed, one per line, in
``approved-apps.txt`` in the site store (see `read_approved`). A run of any other app is refused
before its arrays are downloaded, with an error reply and a log line that give the identity and
the line that would approve it. Nothing new leaves the site: replies are exactly those of the
ClientApp, recorded in the outbox ledger.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmol.client.provenance import FAB_HASH, config_hash  # config_hash: the app's identity too
from fedmol.errors import ConfigError

if TYPE_CHECKING:  # flwr is imported where it is used: `fedmol site worker --help` stays fast
    from flwr.app import Context, Message
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.supercore.fab import Fab
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.run import Run
    from flwr.supercore.runtime import RuntimeHttpClient

log = logging.getLogger("fedmol.client")

APP_FAB_ID = "fedmol/fedmol"
APPROVED_APPS = "approved-apps.txt"  # in the site store: app identities this site runs, one per line
QUEUE_SIZE = 4  # tasks that may wait while one runs
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.5
PULL_MAX_S = 900.0  # give up on a message whose arrays never arrive
SHUTDOWN_S = 20.0  # at most this long to report the tasks a SIGTERM interrupts
COMPLETED, FAILED = "completed", "failed"  # Flower's SubStatus values


class AppRefused(PermissionError):
    """The site has not approved the app of this run."""


class TaskAborted(Exception):
    """The task was stopped before it ran (SIGTERM, or its run is gone)."""


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM: leaves whatever the loop was doing."""


def installed_version() -> str:
    return metadata.version("fedmol")


# --- the app's identity ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppIdentity:
    fab_id: str
    version: str
    config_hash: str

    def line(self) -> str:
        """The identity as a line of ``approved-apps.txt``."""
        return f"{self.fab_id} {self.version} {self.config_hash}"


def installed_identity() -> AppIdentity:
    """The identity of the app of the installed fedmol (what `fedmol.deploy.launcher.write_flower_app` writes)."""
    from fedmol.config import FederationConfig

    return AppIdentity(APP_FAB_ID, installed_version(), config_hash(FederationConfig().to_run_config()))


def run_identity(run: Run, fab: Fab) -> AppIdentity:
    """The identity of a run's app: its id and version, and the hash of the run config its FAB carries."""
    from flwr.common.config import get_fab_config

    try:
        conf = get_fab_config(fab.content)
    except (ValueError, KeyError, OSError) as exc:  # zipfile.BadZipFile is an OSError
        raise AppRefused(f"the FAB of run {run.run_id} ({run.fab_id} {run.fab_version}) cannot be read: {exc}") from exc
    return AppIdentity(run.fab_id, run.fab_version, config_hash(conf["tool"]["flwr"]["app"].get("config", {})))


def approved_path(node_config: Mapping[str, Any]) -> Path | None:
    store = node_config.get("site-store")
    return Path(str(store)) / APPROVED_APPS if store else None


def read_approved(path: Path | None) -> set[AppIdentity]:
    """The identities listed in ``approved-apps.txt``: ``PUBLISHER/NAME VERSION sha256:HEX`` a line;
    blank lines and ``#`` comments are ignored. No file: none."""
    if path is None or not path.is_file():
        return set()
    approved = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 3 or "/" not in parts[0] or not parts[2].startswith("sha256:") or len(parts[2]) != 71:
            raise ConfigError(f"{path} line {number}: expected 'PUBLISHER/NAME VERSION sha256:<64 hex digits>', "
                              f"got {text!r}")
        approved.add(AppIdentity(*parts))
    return approved


def check_app(identity: AppIdentity, node_config: Mapping[str, Any]) -> None:
    """Raise AppRefused unless this site runs ``identity``: its installed fedmol, with an approved config."""
    mine = installed_identity()
    if identity.fab_id != APP_FAB_ID or identity.version != mine.version:
        raise AppRefused(
            f"this site runs {APP_FAB_ID} {mine.version}; the run asks for {identity.fab_id} {identity.version}. "
            "Refused: the site runtime only runs the fedmol installed on the site")
    path = approved_path(node_config)
    if identity == mine or identity in read_approved(path):
        return
    where = str(path) if path is not None else f"{APPROVED_APPS} in the site store"
    raise AppRefused(
        f"this site has not approved the app {identity.line()} (the installed fedmol's own app is "
        f"{mine.config_hash}: the run's configuration keys or defaults differ). Refused; the site's operator "
        f"approves it by adding this line to {where}: {identity.line()}")


# --- Flower's Runtime API, per task -------------------------------------------------------------------
# Copies of Flower internals (pull_task_input, run_clientapp, SuperExec, heartbeat): tests/test_flower_patches.py.

def task_retry_invoker() -> Any:
    """Flower's retry for Runtime API requests, except for a refused task token (HTTP 401).

    Flower's (`make_simple_http_retry_invoker`) answers a 401 with SIGINT to its own process, made
    for a `flwr-clientapp` process that runs one task. Here a 401 means the SuperNode finished this
    task (its run stopped while its message arrived, say), so that one request fails and the task with
    it. The site runtime, which serves every task of the site, goes on."""
    import httpx
    from flwr.supercore.retry import make_simple_http_retry_invoker

    invoker = make_simple_http_retry_invoker()
    flowers = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return bool(flowers(exc)) if flowers is not None else False

    invoker.should_giveup = should_giveup
    return invoker


def _client(address: str, interceptors: list, *, root_certificates: bytes | None,
            task: bool) -> RuntimeHttpClient:
    """A Runtime API client: a task's (``task``: `task_retry_invoker`), or the runtime's own, which asks
    for tasks with Flower's retry (a refused runtime secret stops the runtime, as in Flower)."""
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=root_certificates is None, root_certificates=root_certificates,
        interceptors=interceptors, retry_invoker=task_retry_invoker() if task else make_simple_http_retry_invoker())


def pull_task_header(client: RuntimeHttpClient) -> tuple[Message, ObjectTree, Context, Run, Fab]:
    """The first half of Flower's `run_clientapp.pull_task_input`: the task's context, run, FAB and
    its message's metadata (a Message without content, enough to reply to), not yet the arrays."""
    from flwr.common.serde import context_from_proto, fab_from_proto, message_from_proto, run_from_proto
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=no-name-in-module

    res = client.PullTaskInput(PullTaskInputRequest())
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed out a task without a message")
    tree = pulled.message_object_trees[0]
    header = message_from_proto(pulled.messages_list[0])
    header.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's runtime does
    return header, tree, context, run, fab


def pull_message(client: RuntimeHttpClient, tree: ObjectTree, context: Context,
                 abort: Callable[[], str] = lambda: "") -> Message:
    """The second half: the message's objects, polled every few ms (Flower's default backs off 1 s, 2 s, ...
    because the SuperNode hands out a task before it has the arrays). ``abort`` returns a reason to stop."""
    from flwr.app import Message
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree

    node = Node(node_id=context.node_id)
    pull = make_pull_object_fn_protobuf(client.PullObject, node, context.run_id)

    def pull_unless_aborted(object_id: str) -> bytes:
        if reason := abort():
            raise TaskAborted(reason)
        return pull(object_id)

    message = pull_and_inflate_object_from_tree(
        tree, pull_unless_aborted,
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF_S, backoff_cap=PULL_BACKOFF_CAP_S, max_time=PULL_MAX_S)
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """The worker's copy of Flower's `run_clientapp.pull_task_input` (both halves), without setting Flower's
    process-wide `TaskIdentity`: a reply takes its identity from the message it answers."""
    _header, tree, context, run, fab = pull_task_header(client)
    return pull_message(client, tree, context), context, run, fab


def _push_reply(client: RuntimeHttpClient, reply: Message, context: Context) -> None:
    from flwr.supernode.runtime.run_clientapp import push_message

    push_message(client, reply, context)


def _push_status(client: RuntimeHttpClient, context: Context | None, status: str, details: str) -> None:
    from flwr.supernode.runtime.run_clientapp import push_task_output

    push_task_output(client=client, context=context, sub_status=status, details=details)


def _error_reply(reason: str, reply_to: Message) -> Message:
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode

    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=reply_to)


@dataclass
class _Task:
    """One task acquired from the SuperNode: its own client (with its token), heartbeat and state."""

    task_id: int
    run_id: int
    client: RuntimeHttpClient
    heartbeat: HeartbeatSender | None = None
    header: Message | None = None  # the message's metadata, as soon as known: enough to reply
    context: Context | None = None
    gone: str = ""  # why the SuperNode no longer knows this task, if it does not
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def name(self) -> str:
        return f"task {self.task_id} of run {self.run_id}"

    def start_heartbeat(self) -> None:
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.heartbeat import HeartbeatSender

        def beat() -> bool:  # Flower's own raises SIGINT in the process when the task is gone
            import httpx

            try:
                res = self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
            except httpx.TransportError:
                return False
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code in (503, 504):
                    return False
                res = None
            if res is None or not res.success:
                if not self.gone:
                    self.gone = "the SuperNode no longer knows this task (its run was stopped?)"
                    log.warning("%s: %s", self.name(), self.gone)
            return True

        self.heartbeat = HeartbeatSender(beat)
        self.heartbeat.start()

    def finish(self, status: str, details: str, reply: Message | None = None, *, keep_context: bool = True) -> bool:
        """Push the reply (an error reply naming ``details`` when failed without one) and the final
        status, once: False if the task was already finished (by the worker thread or by a SIGTERM)."""
        with self.lock:
            if self.done:
                return False
            self.done = True
            try:
                if reply is None and status == FAILED and self.header is not None:
                    reply = _error_reply(details, self.header)
                if reply is not None and self.context is not None:
                    try:
                        _push_reply(self.client, reply, self.context)
                    except Exception:  # still push the status below
                        log.exception("%s: the reply could not be pushed", self.name())
                _push_status(self.client, self.context if keep_context else None, status, details)
            finally:
                if self.heartbeat is not None and self.heartbeat.is_running:
                    self.heartbeat.stop()
                self.client.close()
            return True


# --- the runtime ----------------------------------------------------------------------------------------

class SiteRuntime:
    """Acquires the SuperNode's ClientApp tasks and runs them in one worker thread (see the module doc)."""

    def __init__(self, address: str, *, root_certificates: bytes | None = None,
                 auth_secret: bytes | None = None, queue_size: int = QUEUE_SIZE, poll: float = 0.05) -> None:
        if queue_size < 0:
            raise ConfigError(f"queue size must be 0 or more, got {queue_size}")
        self.address, self.certs, self.auth_secret = address, root_certificates, auth_secret
        self.queue_size, self.poll = queue_size, poll
        self._pending: collections.deque[_Task] = collections.deque()
        self._cond = threading.Condition()
        self._current: _Task | None = None
        self._stopping = ""  # why the runtime stops; "" while it runs
        self._stop_requested = ""  # a signal arrived while the main thread was handing a task over
        self._deferring = False
        self._acquired = 0
        self._worker = threading.Thread(target=self._work, name="fedmol-site-worker", daemon=True)

    # the main thread: acquire tasks
    def _acquire_client(self) -> RuntimeHttpClient:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if self.auth_secret is not None:
            from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor

            interceptors.append(SuperExecAuthHttpInterceptor(
                master_secret=self.auth_secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
        return _client(self.address, interceptors, root_certificates=self.certs, task=False)

    def _task_client(self, token: str) -> RuntimeHttpClient:
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor

        return _client(self.address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                      RuntimeTokenHttpInterceptor(token)], root_certificates=self.certs, task=True)

    def serve(self, max_tasks: int | None = None, *, handle_signals: bool = True) -> str:
        """Run until SIGTERM/SIGINT (or, with ``max_tasks``, until that many tasks were acquired and
        finished). Returns why it stopped."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.constant import TaskType

        import fedmol.client.client_app  # noqa: F401 - flwr, the ClientApp and its wire code now
        import fedmol.models.training  # noqa: F401 - torch and the model code now, not on the first message

        previous = self._install_signals() if handle_signals else {}
        client = self._acquire_client()
        mine = installed_identity()
        log.info("site runtime for the SuperNode at %s: waiting for tasks; it runs %s and the apps listed in "
                 "<site store>/%s (queue: %d)", self.address, mine.line(), APPROVED_APPS, self.queue_size)
        self._worker.start()
        try:
            while not self._stopping and (max_tasks is None or self._acquired < max_tasks):
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)]))
                if res.HasField("task") and res.token:
                    self._acquired += 1
                    self._deferring = True  # a task acquired is queued or refused, never dropped half-way
                    try:
                        self.submit(_Task(res.task.task_id, res.task.run_id, self._task_client(res.token)))
                    finally:
                        self._deferring = False
                    if self._stop_requested:
                        raise _Stop(self._stop_requested)
                    continue
                time.sleep(self.poll)
            if not self._stopping:
                self._drain()
            return self._stopping or "done"
        except (_Stop, KeyboardInterrupt) as stop:
            reason = str(stop) or "the site runtime was stopped (SIGINT)"
            self.stop(reason)
            return reason
        finally:
            client.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, _frame: Any) -> None:
            if self._stopping or self._stop_requested:  # a second signal changes nothing: the stop is bounded
                return
            self._stop_requested = f"the site runtime was stopped ({signal.Signals(signum).name})"
            if not self._deferring:
                raise _Stop(self._stop_requested)

        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def submit(self, task: _Task) -> bool:
        """Queue an acquired task for the worker thread; a full queue refuses it at once (with the reason)."""
        task.start_heartbeat()
        with self._cond:
            room = self.queue_size + (1 if self._current is None else 0)  # idle: the next one runs at once
            if not self._stopping and len(self._pending) < room:
                self._pending.append(task)
                self._cond.notify()
                return True
            reason = self._stopping or (f"the site runtime is busy: {len(self._pending)} tasks already wait behind "
                                        f"the one running (queue size {self.queue_size}); refused, not queued")
        log.warning("%s refused: %s", task.name(), reason)
        self._refuse(task, reason)
        return False

    def _drain(self) -> None:
        with self._cond:
            while self._pending or self._current is not None:
                self._cond.wait(self.poll)

    def stop(self, reason: str, timeout: float = SHUTDOWN_S) -> None:
        """Fail the running task and every queued one with ``reason`` (their replies say it), within ``timeout``."""
        with self._cond:
            self._stopping = reason
            running, queued = self._current, list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        log.warning("%s: failing %s and %d queued task(s)", reason,
                    running.name() if running else "no running task", len(queued))

        def report() -> None:
            if running is not None:
                running.finish(FAILED, f"{reason} while running this task", keep_context=False)
            for task in queued:
                self._refuse(task, f"{reason} before running this task")

        reporter = threading.Thread(target=report, name="fedmol-site-stop", daemon=True)
        reporter.start()
        reporter.join(timeout)
        if reporter.is_alive():
            log.error("%s: could not report every task within %.0f s", reason, timeout)

    def _refuse(self, task: _Task, reason: str) -> None:
        """Fail a task that will not run, with an error reply naming ``reason``; its arrays are not pulled."""
        try:
            if task.header is None and not task.gone:
                task.header, _tree, task.context, _run, _fab = pull_task_header(task.client)
        except Exception as exc:  # the status below still tells the SuperNode
            log.warning("%s: could not read its message (%s)", task.name(), exc)
        task.finish(FAILED, reason, keep_context=False)

    # the worker thread: run tasks, one at a time
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                task = self._current = self._pending.popleft()
            try:
                started = time.perf_counter()
                status = self.run(task)
                log.info("%s: %s in %.2f s", task.name(), status, time.perf_counter() - started)
            except BaseException as exc:  # noqa: BLE001 - e.g. SystemExit in the app: this thread goes on
                log.exception("%s: the site runtime failed", task.name())
                task.finish(FAILED, f"the site runtime failed: {type(exc).__name__}: {exc}", keep_context=False)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _abort_reason(self, task: _Task) -> str:
        return self._stopping or task.gone

    def run(self, task: _Task) -> str:
        """Run one task as ``flwr-clientapp --token`` would; returns its final status."""
        from fedmol.client.client_app import app

        status, details, reply = FAILED, "the site runtime failed before running the task", None
        try:
            if reason := self._abort_reason(task):
                raise TaskAborted(reason)
            task.header, tree, task.context, run, fab = pull_task_header(task.client)
            identity = run_identity(run, fab)
            check_app(identity, dict(task.context.node_config))
            message = pull_message(task.client, tree, task.context, abort=lambda: self._abort_reason(task))
            fab_hash = FAB_HASH.set(fab.hash_str or None)  # the ledger records the FAB that ran
            try:
                reply = app(message=message, context=task.context)
            finally:
                FAB_HASH.reset(fab_hash)
            status, details = COMPLETED, ""
            if reply.has_error():  # the ClientApp refused (e.g. a plain round at a site requiring SecAgg+)
                status, details = FAILED, reply.error.reason or f"error code {reply.error.code}"
                log.warning("%s: the ClientApp replied with an error: %s", task.name(), details)
        except (AppRefused, TaskAborted, ConfigError) as exc:
            details = str(exc)
            log.warning("%s refused: %s", task.name(), details)
            task.finish(FAILED, details, keep_context=False)
            return FAILED
        except Exception as exc:  # reported to the server as an error reply, like Flower's own runtime
            log.exception("%s failed", task.name())
            details = f"{type(exc).__name__}: {exc}"
        if not task.finish(status, details, reply):
            log.warning("%s: finished after it was reported failed (%s); its result was dropped",
                        task.name(), self._stopping or "stopped")
        return status


def serve(address: str, *, poll: float = 0.05, max_tasks: int | None = None, queue_size: int = QUEUE_SIZE,
          root_certificates: Path | None = None, auth_secret_file: Path | None = None) -> str:
    """Acquire and run the SuperNode's ClientApp tasks until SIGTERM/SIGINT (or ``max_tasks`` ran)."""
    certs = Path(root_certificates).read_bytes() if root_certificates else None
    secret = Path(auth_secret_file).read_bytes() if auth_secret_file is not None else None
    return SiteRuntime(address, root_certificates=certs, auth_secret=secret, queue_size=queue_size,
                       poll=poll).serve(max_tasks)
