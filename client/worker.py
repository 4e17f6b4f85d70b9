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

It asks the SuperNode for tasks (as Flower's SuperExec does), and runs each one in-process with
the ClientApp, torch and the site's data already loaded: a message costs only its own compute.

Each task runs in its own thread and the ClientApp itself runs one task at a time: a task whose
message never arrives (its run was stopped while the SuperNode fetched it; Flower's runtime would
wait in a process of its own) cannot hold up the next run's tasks.

It runs the fedmol installed on the site (reviewed by the site), not code shipped by the server:
a task whose app is not this fedmol (publisher, name and version) is refused with an error
reply, so a consortium cannot push other code to a site through this path. Nothing new leaves
the site: replies are exactly those of the ClientApp, recorded in the outbox ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # flwr is imported where it is used: `fedmol site worker --help` stays fast
    from flwr.app import Context, Message
    from flwr.proto.task_pb2 import Task
    from flwr.supercore.fab import Fab
    from flwr.supercore.run import Run
    from flwr.supercore.runtime import RuntimeHttpClient

log = logging.getLogger("fedmol.client")

APP_FAB_ID = "fedmol/fedmol"
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.5
PULL_MAX_S = 900.0  # give up on a message whose arrays never arrive
_APP_LOCK = threading.Lock()  # one task at a time in the ClientApp (torch, the site's files)


def installed_version() -> str:
    return metadata.version("fedmol")


def _client(address: str, interceptors: list, *, root_certificates: bytes | None) -> RuntimeHttpClient:
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=root_certificates is None, root_certificates=root_certificates,
        interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker())


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab, tuple[int, int, int]]:
    """Flower's `run_clientapp.pull_task_input`, polling for the message's objects every few ms.

    The SuperNode hands out a task before it has downloaded the message's arrays from the
    SuperLink; Flower's default then backs off 1 s, 2 s, ... which costs a second per message."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree

    res = client.PullTaskInput(PullTaskInputRequest())
    identity = (res.task_id, res.run.run_id, res.context.node_id)
    _set_identity(identity)
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed out a task without a message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF_S, backoff_cap=PULL_BACKOFF_CAP_S, max_time=PULL_MAX_S)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's runtime does
    return message, context, run, fab, identity


def _set_identity(identity: tuple[int, int, int]) -> None:
    """Flower keeps the running task's identity in a process-wide class; set it for this task."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = identity


def run_task(address: str, token: str, *, root_certificates: bytes | None = None) -> str:
    """Run one task of the SuperNode in this process, as ``flwr-clientapp --token`` would.

    Returns the task's final status ("completed" or "failed")."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from fedmol.client.client_app import app

    client = _client(address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                               RuntimeTokenHttpInterceptor(token)], root_certificates=root_certificates)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = context = reply = None
    status, details = SubStatus.FAILED, "the site runtime failed before running the task"
    try:
        heartbeat.start()
        message, context, run, _fab, identity = pull_task_input(client)
        version = installed_version()
        if run.fab_id != APP_FAB_ID or run.fab_version != version:
            raise PermissionError(
                f"this site runs {APP_FAB_ID} {version}; the run asks for {run.fab_id} {run.fab_version}. "
                "Refused: the site runtime only runs the fedmol installed on the site")
        with _APP_LOCK:
            _set_identity(identity)
            reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # reported to the server as an error reply, like Flower's own runtime
        log.exception("task failed")
        details = f"{type(exc).__name__}: {exc}"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
    return status


def _run_logged(address: str, token: str, task: Task, certs: bytes | None) -> None:
    started = time.perf_counter()
    status = run_task(address, token, root_certificates=certs)
    log.info("task %s of run %s: %s in %.2f s", task.task_id, task.run_id, status, time.perf_counter() - started)


def serve(address: str, *, poll: float = 0.05, max_tasks: int | None = None,
          root_certificates: Path | None = None, auth_secret_file: Path | None = None) -> None:
    """Acquire and run the SuperNode's ClientApp tasks until interrupted (or ``max_tasks`` ran)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    import fedmol.client.client_app  # noqa: F401 - flwr, the ClientApp and its wire code now
    import fedmol.models.training  # noqa: F401 - torch and the model code now, not on the first message

    certs = Path(root_certificates).read_bytes() if root_certificates else None
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if auth_secret_file is not None:
        from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor

        interceptors.append(SuperExecAuthHttpInterceptor(
            master_secret=Path(auth_secret_file).read_bytes(),
            protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
    client = _client(address, interceptors, root_certificates=certs)
    log.info("site runtime for the SuperNode at %s: waiting for tasks", address)
    ran = 0
    try:
        while max_tasks is None or ran < max_tasks:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)]))
            if res.HasField("task") and res.token:
                threading.Thread(target=_run_logged, args=(address, res.token, res.task, certs),
                                 name=f"task-{res.task.task_id}", daemon=True).start()
                ran += 1
                continue
            time.sleep(poll)
        while any(t.name.startswith("task-") for t in threading.enumerate()):  # max_tasks: let them finish
            time.sleep(poll)
    finally:
        client.close()
