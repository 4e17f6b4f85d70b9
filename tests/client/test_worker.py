"""The site runtime (`fedmol site worker`, #13.9), against Flower's own SuperNode Runtime API.

`RuntimeAPI` serves the SuperNode's Runtime API (Flower's FastAPI app and in-memory NodeState) on
127.0.0.1 without a SuperLink: a test puts runs and messages in as the SuperNode would, and reads
the replies and task statuses the worker pushed, as the SuperNode would forward them to the server.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.app.message.message import make_message

import fedmol.client.client_app as client_app
import fedmol.client.worker as worker
from fedmol.deploy.launcher import free_port, write_flower_app

NODE = 5
ROOT = Path(__file__).resolve().parents[2]


class RuntimeAPI:
    """A SuperNode's Runtime API (Flower's own) with an in-memory state the test fills in."""

    def __init__(self) -> None:
        import uvicorn
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.supernode.main import create_app
        from flwr.supernode.nodestate import NodeStateFactory

        factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
        self.state = factory.state()
        self.state.set_node_id(NODE)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(state_factory=factory), host="127.0.0.1",
                                                    port=self.port, log_level="warning", workers=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the Runtime API did not start"
            time.sleep(0.05)
        self.runs: dict[int, str] = {}

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def add_run(self, run_id: int, fab: bytes, node_config: dict, *, fab_id: str = worker.APP_FAB_ID,
                version: str | None = None) -> None:
        from flwr.common.config import get_fused_config_from_fab
        from flwr.supercore.fab import Fab
        from flwr.supercore.run import Run

        run = Run.create_empty(run_id)
        run.fab_id, run.fab_version = fab_id, version or worker.installed_version()
        run.fab_hash, run.series_id = hashlib.sha256(fab).hexdigest(), run_id
        context = Context(run_id=run_id, node_id=NODE, node_config=node_config, state=RecordDict(),
                          run_config=get_fused_config_from_fab(fab, run), series_id=run_id)
        self.state.set_run_series_context(run_id, context)
        self.state.store_run(run)
        self.state.store_fab(Fab(run.fab_hash, fab, {}))
        self.runs[run_id] = run.fab_hash

    def send(self, run_id: int, message_type: str = "train", content: RecordDict | None = None) -> tuple[int, str]:
        """A message for this node, as the SuperNode stores one it pulled: returns (task id, message id)."""
        from flwr.app.message.message import remove_content_from_message
        from flwr.supercore.constant import TaskType
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

        meta = Metadata(run_id=run_id, message_id="", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600, message_type=message_type)
        message = make_message(meta, content if content is not None else RecordDict({"c": ConfigRecord({"x": 1})}))
        message.metadata.__dict__["_message_id"] = message.object_id
        task_id = self.state.create_task(task_type=TaskType.CLIENT_APP, run_id=run_id, fab_hash=self.runs[run_id])
        store = self.state.object_store
        store.preregister(run_id, get_object_tree(message))
        for object_id, obj in get_all_nested_objects(message).items():
            store.put(object_id, obj.deflate())
        self.state.store_message(remove_content_from_message(message))
        return task_id, message.metadata.message_id

    def task(self, task_id: int):
        return self.state.get_tasks(task_ids=[task_id])[0]

    def reply_to(self, message_id: str) -> Message | None:
        for entry in self.state.msg_store.values():
            if entry.message.metadata.reply_to_message_id == message_id:
                return entry.message
        return None

    def wait_finished(self, task_id: int, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while (task := self.task(task_id)).status.status != "finished":
            assert time.monotonic() < deadline, f"task {task_id} still {task.status.status}"
            time.sleep(0.05)
        return task


@pytest.fixture
def api():
    api = RuntimeAPI()
    yield api
    api.close()


@pytest.fixture(scope="module")
def fab(tmp_path_factory) -> bytes:
    """The FAB `flwr run` submits for the code-free app that `fedmol consortium run` writes."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(write_flower_app(tmp_path_factory.mktemp("app")))


def other_fab(tmp_path: Path, **defaults) -> bytes:
    """The same app with other run-config defaults."""
    import tomllib

    import tomli_w
    from flwr.cli.build import build_fab_from_disk

    folder = write_flower_app(tmp_path / "other-app")
    doc = tomllib.loads((folder / "pyproject.toml").read_text())
    doc["tool"]["flwr"]["app"]["config"].update(defaults)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return build_fab_from_disk(folder)


def start(api: RuntimeAPI, **kwargs) -> tuple[worker.SiteRuntime, threading.Thread]:
    runtime = worker.SiteRuntime(api.address, poll=0.02, **kwargs)
    thread = threading.Thread(target=runtime.serve, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    return runtime, thread


def stop(runtime: worker.SiteRuntime, thread: threading.Thread) -> None:
    runtime.stop("the test is over", timeout=10)
    thread.join(10)
    assert not thread.is_alive()


def echo_app(calls: list, gate: threading.Event | None = None):
    def app(message: Message, context: Context) -> Message:
        calls.append((threading.current_thread().name, context.run_id))
        if gate is not None:
            assert gate.wait(30)
        return Message(RecordDict({"reply": ConfigRecord({"ok": 1})}), reply_to=message)
    return app


def test_the_launchers_app_and_the_repositorys_app_are_the_installed_fedmols_own(fab, tmp_path):
    import tomllib

    from flwr.supercore.fab import Fab
    from flwr.supercore.run import Run

    run = Run.create_empty(1)
    run.fab_id, run.fab_version = worker.APP_FAB_ID, worker.installed_version()
    mine = worker.installed_identity()
    assert worker.run_identity(run, Fab("h", fab, {})) == mine  # `fedmol consortium run`: approved as is
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert worker.config_hash(repo) == mine.config_hash  # `flwr run .` from a checkout: the same app
    changed = worker.run_identity(run, Fab("h", other_fab(tmp_path, patience=7), {}))
    assert changed.config_hash != mine.config_hash  # one default changed: another app


def test_an_unapproved_app_is_refused_before_its_arrays_and_runs_once_the_site_approves_it(
        api, fab, tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    calls: list = []
    monkeypatch.setattr(client_app, "app", echo_app(calls))
    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, None)
    store = tmp_path / "store"
    store.mkdir()
    other = other_fab(tmp_path, patience=7)
    api.add_run(1, other, {"site-store": str(store)})
    api.add_run(2, fab, {"site-store": str(store)}, version="0.0.1")
    refused, refused_msg = api.send(1)
    wrong_version, wrong_version_msg = api.send(2)
    runtime, thread = start(api)
    try:
        task = api.wait_finished(refused)
        assert task.status.sub_status == "failed"
        reply = api.reply_to(refused_msg)
        assert reply is not None and reply.has_error()
        identity = worker.run_identity(api.state.get_run(1), api.state.get_fab(api.runs[1]))
        assert "has not approved the app" in reply.error.reason
        assert f"adding this line to {store / 'approved-apps.txt'}: {identity.line()}" in reply.error.reason
        assert api.state.object_store.get(refused_msg) is not None  # its arrays were never pulled
        assert api.wait_finished(wrong_version).status.sub_status == "failed"
        assert "only runs the fedmol installed on the site" in api.reply_to(wrong_version_msg).error.reason
        assert not calls

        (store / "approved-apps.txt").write_text(f"# approved by the site's operator\n{identity.line()}\n")
        approved, approved_msg = api.send(1)
        assert api.wait_finished(approved).status.sub_status == "completed"
        reply = api.reply_to(approved_msg)
        assert reply is not None and not reply.has_error()
        assert calls == [("fedmol-site-worker", 1)]
        assert TaskIdentity._task_id is None  # the task's identity stayed with the task

        (store / "approved-apps.txt").write_text("fedmol/fedmol 0.1.0 md5:abc\n")
        bad, bad_msg = api.send(1)
        api.wait_finished(bad)
        assert "approved-apps.txt line 1: expected" in api.reply_to(bad_msg).error.reason
    finally:
        stop(runtime, thread)


def test_one_task_runs_at_a_time_and_a_full_queue_refuses_with_the_reason(api, fab, monkeypatch):
    calls: list = []
    gate = threading.Event()
    monkeypatch.setattr(client_app, "app", echo_app(calls, gate))
    for run_id in (1, 2, 3):
        api.add_run(run_id, fab, {})
    runtime, thread = start(api, queue_size=1)
    try:
        first, _ = api.send(1)
        deadline = time.monotonic() + 20
        while not calls:
            assert time.monotonic() < deadline, "the first task did not start"
            time.sleep(0.02)
        second, second_msg = api.send(2)
        while api.task(second).status.status == "pending":
            time.sleep(0.02)
        third, third_msg = api.send(3)
        task = api.wait_finished(third)
        assert task.status.sub_status == "failed" and "busy" in task.status.details
        assert "tasks already wait behind the one running (queue size 1)" in api.reply_to(third_msg).error.reason
        assert len(calls) == 1 and api.task(second).status.status != "finished"  # still waiting its turn
        gate.set()
        assert api.wait_finished(first).status.sub_status == "completed"
        assert api.wait_finished(second).status.sub_status == "completed"
        assert not api.reply_to(second_msg).has_error()
        assert calls == [("fedmol-site-worker", 1), ("fedmol-site-worker", 2)]
    finally:
        gate.set()
        stop(runtime, thread)


def test_a_site_that_requires_secure_aggregation_refuses_a_plain_training_round(api, fab):
    api.add_run(1, fab, {"require-secure-aggregation": True})
    train, train_msg = api.send(1, "train")
    runtime, thread = start(api)  # the real ClientApp: the refusal needs no site store
    try:
        task = api.wait_finished(train)
        reply = api.reply_to(train_msg)
        assert task.status.sub_status == "failed" and reply.has_error()
        assert "this site requires secure aggregation (node config require-secure-aggregation=true) and " \
               "refuses a plain training round" in reply.error.reason
    finally:
        stop(runtime, thread)


def _message(message_type: str, content: RecordDict) -> Message:
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600, message_type=message_type)
    return make_message(meta, content)


def test_require_secure_aggregation_lets_secure_rounds_and_evaluation_through(monkeypatch):
    import flwr.client.mod as mods
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    from fedmol.errors import ConfigError

    def context(value) -> Context:
        return Context(run_id=1, node_id=NODE, node_config={"require-secure-aggregation": value},
                       state=RecordDict(), run_config={})

    masked: list = []
    monkeypatch.setattr(mods, "secaggplus_mod", lambda msg, ctx, call_next: masked.append(msg) or "masked")
    secure = _message("train", RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"stage": "setup"})}))
    assert client_app._secure_aggregation(secure, context(True), lambda m, c: "plain") == "masked"
    evaluate = _message("evaluate", RecordDict())
    assert client_app._secure_aggregation(evaluate, context("true"), lambda m, c: "plain") == "plain"
    train = _message("train", RecordDict())
    assert client_app._secure_aggregation(train, context(False), lambda m, c: "plain") == "plain"
    assert client_app._secure_aggregation(train, context("yes"), lambda m, c: "plain").has_error()
    with pytest.raises(ConfigError, match="require-secure-aggregation='maybe': expected true or false"):
        client_app._secure_aggregation(train, context("maybe"), lambda m, c: "plain")


SLOW_WORKER = """
import sys, time
import fedmol.client.client_app as client_app

def slow(message, context):
    print("APP STARTED", flush=True)
    time.sleep(300)

client_app.app = slow
from fedmol.cli import main
sys.exit(main(["site", "worker", "--runtime", sys.argv[1], "--poll", "0.02"]))
"""


def test_sigterm_fails_the_running_and_queued_tasks_with_a_reason_and_exits_0(api, fab, tmp_path):
    """A real worker process (the `fedmol site worker` command; only the ClientApp made slow)."""
    api.add_run(1, fab, {})
    running, running_msg = api.send(1)
    script = tmp_path / "slow_worker.py"
    script.write_text(SLOW_WORKER)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), api.address], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        while b"APP STARTED" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        queued, queued_msg = api.send(1)
        while api.task(queued).status.status == "pending":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    task = api.task(running)
    assert task.status.status == "finished" and task.status.sub_status == "failed"
    assert task.status.details == "the site runtime was stopped (SIGTERM) while running this task"
    reply = api.reply_to(running_msg)
    assert reply is not None and reply.has_error()  # what the server receives
    assert reply.error.reason == "the site runtime was stopped (SIGTERM) while running this task"
    assert api.task(queued).status.sub_status == "failed"
    assert api.reply_to(queued_msg).error.reason == "the site runtime was stopped (SIGTERM) before running this task"
    assert "the site runtime was stopped (SIGTERM): exiting" in log.read_text()
