"""Contract tests: every place fedmol patches, copies or re-implements a Flower 1.41 internal.

fedmol changes a few things inside Flower (``flwr`` is pinned to 1.41.*, see constraints.txt) that
Flower offers no setting for. Each of them would stop working quietly if Flower's code moved, so
each one has here:

* the upstream function's source, hashed (``inspect.getsource``) when fedmol's patch or copy was
  written (flwr 1.41.0): a different hash means Flower changed the code fedmol relies on, and the
  failure says which fedmol module to re-check and what for;
* the attribute or signature the patch needs (the precondition it checks at run time);
* where cheap, the patch itself, applied and measured.

The patch sites point here (``tests/test_flower_patches.py``); deploy/README.md ("Patches of Flower
and what upstream would need") says what Flower would need to make each one unnecessary.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import time
from dataclasses import dataclass
from importlib.metadata import version
from types import SimpleNamespace

import numpy as np
import pytest

RECORDED_WITH = "1.41.0"


@dataclass(frozen=True)
class Upstream:
    target: str  # "module:qualname" of the Flower function
    sha: str  # sha256 of its inspect.getsource, first 16 hex digits, with flwr RECORDED_WITH
    site: str  # fedmol's patch or copy
    recheck: str  # what to re-check when Flower changed it


UPSTREAM = [
    Upstream("flwr.supernode.start_client_internal:start_client_internal", "9e89a6eb68fbec68",
             "fedmol.client.supernode (patch_idle_wait)",
             "the idle wait is still `time.sleep(3)` on the module-level `time`, after a pull that found no message"),
    Upstream("flwr.supernode.start_client_internal:_push_messages", "00bb86faffdec114",
             "fedmol.client.supernode (_ShortIdleClock: sleep(0.5) lasts 0.05 s)",
             "its two `time.sleep(0.5)` still wait only for the local reply and its objects, not a network retry"),
    Upstream("flwr.supernode.start_client_internal:_pull_and_store_message", "eaf5d0e36dc34e4c",
             "fedmol.client.supernode (patch_object_pulls, patch_stopped_run_receive)",
             "a message's objects are still fetched by the module-level name `pull_objects(...)`, "
             "without its own initial_backoff/backoff_cap; the task is created before the fetch, and a "
             "stopped run (RunNotRunningException) still skips the `except Exception` that finishes it"),
    Upstream("flwr.superlink.grid.http_grid:HttpGrid.pull_messages", "67a5266a5a2ed515",
             "fedmol.server.grid (_fast_object_pulls)",
             "reply objects are still fetched by the module-level name `pull_objects(...)`, "
             "without its own initial_backoff/backoff_cap"),
    Upstream("flwr.superlink.grid.http_grid:HttpGrid.send_and_receive", "699c9f048f3cff74",
             "fedmol.server.grid (FastPollGrid.send_and_receive, a re-implementation)",
             "push, then pull until every reply or the timeout: FastPollGrid must do what this does, "
             "with its own poll interval instead of the 3 s sleep"),
    Upstream("flwr.supernode.runtime.run_clientapp:pull_task_input", "5607a23e1673ee87",
             "fedmol.client.worker (pull_task_input, a copy)",
             "the copy must make the same requests, set TaskIdentity and the message id as this does; "
             "only its pull backoff differs"),
    Upstream("flwr.supernode.runtime.run_clientapp:run_clientapp", "6ce09559f3a2f5dc",
             "fedmol.client.worker (run_task, modelled on it)",
             "one task: heartbeat, pull_task_input, the ClientApp, push_message of the reply (or an Error "
             "reply), push_task_output with the sub-status; the worker skips only the FAB install"),
    Upstream("flwr.supercore.heartbeat:make_task_heartbeat_fn_http", "a50247986fc79b04",
             "fedmol.client.worker (the task heartbeat, modelled on it)",
             "the request sent, which errors mean 'retry' (False), and what a refused heartbeat means "
             "(Flower raises SIGINT in its one-task process; the worker marks only that task as gone)"),
    Upstream("flwr.supercore.retry.http_retry:make_simple_http_retry_invoker", "49e12326a4b17e26",
             "fedmol.client.worker (task_retry_invoker: replaces should_giveup for a task's requests)",
             "the invoker still exposes `should_giveup`, and a 401 is still its only answer that signals the process"),
    Upstream("flwr.supercore.superexec.run_superexec:run_superexec", "d11f4e7fbc8f0b12",
             "fedmol.client.worker (serve, modelled on it)",
             "the AcquireTask loop, its request fields, the SuperExec auth interceptor and its protected methods"),
    Upstream("flwr.server.workflow.secure_aggregation.secaggplus_workflow:SecAggPlusWorkflow.setup_stage",
             "892a5a68cc6aef04", "fedmol.server.secagg (SecureFedAvg.configure_fit sets workflow.max_weight)",
             "setup_stage still calls strategy.configure_fit BEFORE it reads self.max_weight, every round"),
    Upstream("flwr.server.workflow.default_workflows:DefaultWorkflow.__call__", "866c7974d30c0149",
             "fedmol.server.secagg (run_secure_rounds replaces fit_workflow/evaluate_workflow)",
             "each round still calls self.fit_workflow then self.evaluate_workflow, looked up on the instance"),
    Upstream("flwr.superlink.config_loader:get_objectstore_linkstate_factories", "9f697d33f4936d22",
             "fedmol.server.superlink (patch_object_store)",
             "a SQLite --database still builds the object store with the module-level name "
             "`ObjectStoreFactory(database)` and hands that one store to the LinkStateFactory"),
    Upstream("flwr.server.superlink.linkstate.linkstate_factory:LinkStateFactory.state", "8b1e223d09999587",
             "fedmol.server.superlink (patch_object_store)",
             "the link state still takes the object store from its factory, whatever database the state uses"),
]


def _resolve(target: str):
    module, qualname = target.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def test_flower_is_the_series_fedmol_patches():
    assert version("flwr").startswith("1.41."), (
        f"flwr {version('flwr')} is installed; fedmol's patches of Flower internals were written for 1.41 "
        "(constraints.txt). Re-check every entry of UPSTREAM in tests/test_flower_patches.py before moving.")


@pytest.mark.parametrize("up", UPSTREAM, ids=lambda u: u.target.split(":")[1])
def test_upstream_code_is_the_code_fedmol_patched(up: Upstream):
    try:
        obj = _resolve(up.target)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{up.target} is gone from flwr {version('flwr')} ({exc}): {up.site} no longer applies. "
                    f"Re-check: {up.recheck}.")
    got = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    assert got == up.sha, (
        f"{up.target} changed since fedmol's patch was written (sha {up.sha} with flwr {RECORDED_WITH}, now {got} "
        f"with flwr {version('flwr')}). Re-check {up.site}: {up.recheck}. Then record the new hash in UPSTREAM.")


def _assert_backs_off_briefly(pull_objects) -> None:
    """A patched ``pull_objects`` fetches an object that is there only at the 4th try in well under
    Flower's own backoff (1 + 2 + 4 s)."""
    from flwr.supercore.inflatable import inflatable_utils

    calls = []

    def flaky(object_id: str) -> bytes:  # the object reaches the SuperLink after 3 tries
        calls.append(object_id)
        if len(calls) < 4:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    started = time.perf_counter()
    assert pull_objects(object_ids=["a"], pull_object_fn=flaky) == {"a": b"content"}
    assert time.perf_counter() - started < 1.0  # Flower's own backoff: 1 + 2 + 4 s
    assert len(calls) == 4


# -- 1. the SuperNode's idle wait and its object backoff (fedmol.client.supernode) ---------------

def test_supernode_idle_wait_is_the_sleep_fedmol_shortens():
    from flwr.supernode import start_client_internal as sci

    from fedmol.client import supernode

    assert inspect.ismodule(sci), "flwr.supernode.start_client_internal is no longer a module"
    assert sci.time is time or isinstance(sci.time, supernode._ShortIdleClock), (
        "the SuperNode loop no longer sees the `time` module as a module global: patch_idle_wait would "
        "return False and fedmol-supernode would wait Flower's 3 s")
    src = inspect.getsource(sci.start_client_internal)
    assert src.count(f"time.sleep({supernode.FLOWER_IDLE_S})") == 1, (
        f"start_client_internal no longer has exactly one `time.sleep({supernode.FLOWER_IDLE_S})` (its idle wait)")
    module = inspect.getsource(sci)
    assert module.count(f"time.sleep({supernode.FLOWER_REPLY_WAIT_S})") == 2 == inspect.getsource(
        sci._push_messages).count(f"time.sleep({supernode.FLOWER_REPLY_WAIT_S})"), (
        "the SuperNode's 0.5 s sleeps are no longer exactly the two waits for the reply in _push_messages: "
        "re-check what _ShortIdleClock shortens")
    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")
    assert cli.start_client_internal is sci.start_client_internal, (
        "flower-supernode no longer runs flwr.supernode.start_client_internal.start_client_internal")


def test_supernode_idle_wait_patch_is_in_effect(monkeypatch):
    from flwr.supernode import start_client_internal as sci

    from fedmol.client import supernode

    monkeypatch.setattr(sci, "time", time)  # the unpatched module; restored after the test
    assert supernode.patch_idle_wait(0.01) is True
    clock = sci.time
    started = time.perf_counter()
    clock.sleep(supernode.FLOWER_IDLE_S)  # the loop's idle wait
    assert time.perf_counter() - started < 0.5
    assert clock.monotonic is time.monotonic and clock.time is time.time  # the rest is the real `time`
    started = time.perf_counter()
    clock.sleep(supernode.FLOWER_REPLY_WAIT_S)  # the waits for the ClientApp's reply and its arrays
    assert time.perf_counter() - started < 0.3
    started = time.perf_counter()
    clock.sleep(0.2)  # any other wait passes through unchanged
    assert time.perf_counter() - started >= 0.2
    assert supernode.patch_idle_wait(0.01) is False  # already patched: a second patch is refused, not stacked


def test_supernode_pulls_message_objects_through_the_name_fedmol_replaces():
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as sci

    current = sci.pull_objects
    assert current is inflatable_utils.pull_objects or (
        isinstance(current, functools.partial) and current.func is inflatable_utils.pull_objects), (
        "flwr.supernode.start_client_internal no longer imports pull_objects by name: patch_object_pulls "
        "does nothing and a SuperNode waits Flower's 1 s, 2 s, ... for arrays still being uploaded")
    assert "pull_objects(" in inspect.getsource(sci._pull_and_store_message)


def test_supernode_object_pulls_back_off_briefly(monkeypatch):
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as sci

    from fedmol.client import supernode

    monkeypatch.setattr(sci, "pull_objects", inflatable_utils.pull_objects)  # the unpatched name; restored after
    assert supernode.patch_object_pulls() is True
    assert supernode.patch_object_pulls() is False  # already patched: not stacked
    _assert_backs_off_briefly(sci.pull_objects)


def _receive_message_of_a_stopped_run(receive, *, stops_in: str):
    """Flower's `_pull_and_store_message` (or fedmol's wrapper, ``receive``) on stubs: a message arrives
    and its run stops while its arrays are fetched (``stops_in="pull"``) or when it is confirmed
    (``"confirm"``). Returns the stub state: what was done with the task and the message."""
    from unittest import mock

    from flwr.supercore.run import RunNotRunningException

    state, store = mock.MagicMock(), mock.MagicMock()
    state.create_task.return_value = 7
    store.preregister.return_value = ["arrays-object"]
    message = SimpleNamespace(metadata=SimpleNamespace(run_id=3, group_id="", message_type="train",
                                                       message_id="m-1"))

    def pull_object(run_id: int, object_id: str) -> bytes:
        if stops_in == "pull":
            raise RunNotRunningException()  # what the Fleet API answers for a run that stopped
        return b"content"

    def confirm(run_id: int, message_id: str) -> None:
        raise RunNotRunningException()

    got = receive(
        state=state, object_store=store, node_config={}, receive=lambda: (message, object()),
        get_run=mock.MagicMock(), get_fab=mock.MagicMock(), pull_object=pull_object,
        confirm_message_received=confirm, trusted_entities=None)
    assert got is None  # no push stage after a message that was not received, with or without the patch
    state.store_message.assert_called_once()
    return state


@pytest.mark.parametrize("stops_in", ["pull", "confirm"])
def test_flower_leaves_the_task_of_a_message_whose_run_stopped_while_it_arrived(stops_in):
    """The upstream behaviour `patch_stopped_run_receive` mends. If this fails, Flower now finishes the
    task itself: `fedmol.client.supernode.patch_stopped_run_receive` can go."""
    from flwr.supercore.run import RunNotRunningException
    from flwr.supernode import start_client_internal as sci

    assert not issubclass(RunNotRunningException, Exception)
    upstream = getattr(sci._pull_and_store_message, "fedmol_patched", sci._pull_and_store_message)
    state = _receive_message_of_a_stopped_run(upstream, stops_in=stops_in)
    state.finish_task.assert_not_called()  # the task stays open: the site runtime waits for its arrays
    state.delete_messages.assert_not_called()


@pytest.mark.parametrize("stops_in", ["pull", "confirm"])
def test_supernode_finishes_the_task_of_a_message_whose_run_stopped_while_it_arrived(monkeypatch, stops_in):
    from flwr.common.constant import SubStatus
    from flwr.supernode import start_client_internal as sci

    from fedmol.client import supernode

    upstream = getattr(sci._pull_and_store_message, "fedmol_patched", sci._pull_and_store_message)
    monkeypatch.setattr(sci, "_pull_and_store_message", upstream)  # the unpatched name; restored after
    assert supernode.patch_stopped_run_receive() is True
    assert supernode.patch_stopped_run_receive() is False  # already patched: not stacked
    state = _receive_message_of_a_stopped_run(sci._pull_and_store_message, stops_in=stops_in)
    state.finish_task.assert_called_once()
    call = state.finish_task.call_args
    assert (call.args[:1] or (call.kwargs.get("task_id"),))[0] == 7
    assert call.kwargs["sub_status"] == SubStatus.FAILED
    assert "the run stopped" in call.kwargs["details"]
    state.delete_messages.assert_called_once_with(message_ids=["m-1"])


# -- 2. the ServerApp's reply-object backoff (fedmol.server.grid._fast_object_pulls) -------------

def test_http_grid_pulls_objects_through_the_name_fedmol_replaces():
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid

    current = http_grid.pull_objects
    assert current is inflatable_utils.pull_objects or (
        isinstance(current, functools.partial) and current.func is inflatable_utils.pull_objects), (
        "flwr.superlink.grid.http_grid no longer imports pull_objects by name: _fast_object_pulls does nothing")
    params = inspect.signature(inflatable_utils.pull_objects).parameters
    for name in ("object_ids", "pull_object_fn", "initial_backoff", "backoff_cap"):
        assert name in params, f"inflatable_utils.pull_objects has no parameter {name!r}"
    assert "pull_objects(" in inspect.getsource(http_grid.HttpGrid.pull_messages)


def test_http_grid_object_pulls_back_off_briefly(monkeypatch):
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid

    from fedmol.server.grid import FastPollGrid

    monkeypatch.setattr(http_grid, "pull_objects", inflatable_utils.pull_objects)  # restored after
    FastPollGrid(inner=SimpleNamespace(), pull_backoff=0.02)
    assert isinstance(http_grid.pull_objects, functools.partial)
    _assert_backs_off_briefly(http_grid.pull_objects)


def test_fast_poll_grid_delegates_every_grid_method():
    from flwr.serverapp import Grid

    from fedmol.server.grid import FastPollGrid

    public = {n for n in dir(Grid) if not n.startswith("_")}
    missing = public - set(vars(FastPollGrid))
    assert not missing, f"Grid has {sorted(missing)}, which FastPollGrid does not delegate to the real Grid"
    assert (list(inspect.signature(Grid.send_and_receive).parameters)
            == list(inspect.signature(FastPollGrid.send_and_receive).parameters))


# -- 3. the site runtime's copy of pull_task_input (fedmol.client.worker) -------------------------

def test_worker_copy_can_still_call_what_flower_calls():
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode.runtime import run_clientapp

    params = inspect.signature(inflatable_utils.pull_and_inflate_object_from_tree).parameters
    for name in ("return_type", "initial_backoff", "backoff_cap", "max_time"):
        assert name in params, f"pull_and_inflate_object_from_tree has no parameter {name!r}"
    # what run_task calls, as fedmol.client.worker calls it
    inspect.signature(run_clientapp.push_message).bind(object(), object(), object())
    inspect.signature(run_clientapp.push_task_output).bind(client=None, context=None, sub_status="", details="")
    from flwr.supercore.superexec import run_superexec

    assert run_superexec._SUPEREXEC_AUTH_METHODS == frozenset({"/flwr.proto.Runtime/AcquireTask"}), (
        "the SuperExec protects other Runtime methods now: fedmol.client.worker.serve must protect the same")


def test_flower_state_the_worker_sets_is_where_flower_reads_it():
    from flwr.app import Message, Metadata, RecordDict

    meta = Metadata(run_id=1, message_id="", src_node_id=1, dst_node_id=2, reply_to_message_id="",
                    group_id="", created_at=0.0, ttl=10.0, message_type="train")
    message = Message(content=RecordDict(), metadata=meta)
    message.metadata.__dict__["_message_id"] = "object-id"  # as worker.pull_task_input and Flower do
    assert message.metadata.message_id == "object-id"
    reply = Message(RecordDict(), reply_to=message)  # the worker's replies take their identity from it
    assert reply.metadata.reply_to_message_id == "object-id" and reply.metadata.dst_node_id == 1
    from flwr.supercore.runtime import RuntimeHttpClient

    for rpc in ("PullTaskInput", "PullMessages", "PullObject", "ConfirmMessageReceived", "PushMessages",
                "PushObject", "PushTaskOutput", "SendTaskHeartbeat", "AcquireTask"):
        assert callable(getattr(RuntimeHttpClient, rpc, None)), f"RuntimeHttpClient has no {rpc}"


def test_worker_pull_task_input_uses_its_short_backoff(monkeypatch):
    from flwr.app import Message, Metadata, RecordDict
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.proto.fab_pb2 import Fab
    from flwr.proto.message_pb2 import Context, ObjectTree
    from flwr.proto.run_pb2 import Run
    from flwr.proto.runtime_pb2 import PullAppMessagesResponse, PullTaskInputResponse
    from flwr.supercore.inflatable import inflatable_utils

    from fedmol.client import worker

    seen: dict = {}

    incoming = Message(content=RecordDict(), metadata=Metadata(
        run_id=3, message_id="", src_node_id=0, dst_node_id=5, reply_to_message_id="", group_id="",
        created_at=time.time(), ttl=60.0, message_type="train"))

    def pull(tree, pull_fn, confirm_fn, **kwargs):
        seen.update(kwargs, tree=tree.object_id)
        return incoming

    monkeypatch.setattr(inflatable_utils, "pull_and_inflate_object_from_tree", pull)
    client = SimpleNamespace(
        PullTaskInput=lambda req: PullTaskInputResponse(task_id=7, run=Run(run_id=3), context=Context(run_id=3,
                                                        node_id=5), fab=Fab()),
        PullMessages=lambda req: PullAppMessagesResponse(  # as the SuperNode's Runtime API answers
            messages_list=[message_to_proto(remove_content_from_message(incoming))],
                                                         message_object_trees=[ObjectTree(object_id="abc")]),
        PullObject=None, ConfirmMessageReceived=None)
    message = worker.pull_task_input(client)[0]
    assert message.metadata.message_id == "abc"
    assert seen["tree"] == "abc" and seen["return_type"] is Message
    assert (seen["initial_backoff"], seen["backoff_cap"]) == (worker.PULL_BACKOFF_S, worker.PULL_BACKOFF_CAP_S)


def _refused_token(signalled: list, monkeypatch):
    """A Runtime API request answered 401 (the SuperNode revoked the task's token), with Flower's
    SIGINT and its wait after it recorded instead of done."""
    import httpx
    from flwr.supercore.retry import http_retry

    monkeypatch.setattr(http_retry.os, "kill", lambda pid, sig: signalled.append(sig))
    monkeypatch.setattr(http_retry.time, "sleep", lambda seconds: None)
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/runtime/pull-object")

    def call() -> None:
        raise httpx.HTTPStatusError("401", request=request, response=httpx.Response(401, request=request))

    return call


def test_flower_answers_a_refused_task_token_with_sigint(monkeypatch):
    """The upstream behaviour `fedmol.client.worker.task_retry_invoker` changes for task requests: made
    for a one-task `flwr-clientapp` process, it would stop the site runtime that serves every task."""
    import signal

    import httpx
    from flwr.supercore.retry import make_simple_http_retry_invoker

    signalled: list = []
    call = _refused_token(signalled, monkeypatch)
    with pytest.raises(httpx.HTTPStatusError):  # after its SIGINT, the second 401 gives up
        make_simple_http_retry_invoker().invoke(call)
    assert signalled == [signal.SIGINT]


def test_worker_task_requests_fail_on_a_refused_token_without_a_signal(monkeypatch):
    import httpx

    from fedmol.client.worker import task_retry_invoker

    signalled: list = []
    call = _refused_token(signalled, monkeypatch)
    with pytest.raises(httpx.HTTPStatusError, match="401"):
        task_retry_invoker().invoke(call)
    assert signalled == []


# -- 4. SecAgg+'s weight bound, changed between rounds (fedmol.server.secagg) -----------------------

def test_secaggplus_setup_sends_the_bound_configure_fit_set(monkeypatch):
    """SecureFedAvg.configure_fit sets workflow.max_weight from the sampled nodes; Flower's setup stage
    must send that value, i.e. read it after configure_fit, in the same round."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    from fedmol.config import FederationConfig
    from fedmol.server.secagg import SecureFedAvg

    class Proxy(ClientProxy):
        def get_properties(self, *a, **k):  # pragma: no cover - never called
            raise NotImplementedError

        get_parameters = fit = evaluate = reconnect = get_properties

    strategy = SecureFedAvg(FederationConfig(secagg_max_weight=1000.0, min_sites=2), {"w": np.zeros(2, np.float32)},
                            [], federation_id="f")
    strategy.workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=2, max_weight=1000.0)
    manager = SimpleClientManager()
    for nid, weight in ((1, 100.0), (2, 200.0)):
        proxy = Proxy(str(nid))
        proxy.node_id = nid
        manager.register(proxy)
        strategy.weight_bound.record(nid, weight)
    state = SimpleNamespace(config_records={MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: 2})},
                            array_records={MAIN_PARAMS_RECORD: ArrayRecord([np.zeros(2, np.float32)])})
    context = SimpleNamespace(state=state, strategy=strategy, client_manager=manager)
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):  # Flower's Message() reads the running task's identity
        monkeypatch.setattr(TaskIdentity, attr, 1)
    sent = []
    grid = SimpleNamespace(send_and_receive=lambda msgs, timeout=None: sent.extend(msgs) or [])
    strategy.workflow.setup_stage(grid, context, WorkflowState())
    assert sorted(m.metadata.dst_node_id for m in sent) == [1, 2]
    assert {m.content.config_records[RECORD_KEY_CONFIGS][Key.MAX_WEIGHT] for m in sent} == {300.0}


# -- 6. the SuperLink's object store in memory (fedmol.server.superlink) ----------------------------

def test_superlink_builds_its_object_store_through_the_name_fedmol_replaces():
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink import config_loader, main

    from fedmol.server import superlink

    current = config_loader.ObjectStoreFactory
    assert current is ObjectStoreFactory or current is superlink._in_memory_object_store_factory, (
        "flwr.superlink.config_loader no longer imports ObjectStoreFactory by name: patch_object_store does "
        "nothing and fedmol-superlink writes every message's arrays to its --database again")
    assert main.get_objectstore_linkstate_factories is config_loader.get_objectstore_linkstate_factories, (
        "the SuperLink no longer configures its stores with config_loader.get_objectstore_linkstate_factories")


def test_superlink_object_store_patch_keeps_the_link_state_in_the_file(monkeypatch, tmp_path):
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
    from flwr.superlink import config_loader
    from flwr.superlink.federation import NoOpFederationManager

    from fedmol.server import superlink

    monkeypatch.setattr(config_loader, "ObjectStoreFactory", ObjectStoreFactory)  # unpatched; restored after
    database = str(tmp_path / "superlink.db")
    objects, _ = config_loader.get_objectstore_linkstate_factories(database, NoOpFederationManager())
    assert type(objects.store()).__name__ == "SqlObjectStore"  # Flower's own: the arrays in the file
    assert superlink.patch_object_store() is True
    assert superlink.patch_object_store() is False  # already patched: not stacked
    objects, states = config_loader.get_objectstore_linkstate_factories(database, NoOpFederationManager())
    state = states.state()
    assert isinstance(objects.store(), InMemoryObjectStore)
    assert isinstance(state, SqlLinkState) and (tmp_path / "superlink.db").exists()  # registrations, runs: the file
    assert state.object_store is objects.store()  # the one store the servicers and the state share
