"""The site runtime (`fedmol site worker`) runs only the fedmol installed on the site."""

from __future__ import annotations

import time
import types

from flwr.app import Context, Metadata, RecordDict
from flwr.app.message.message import make_message


def test_site_runtime_refuses_a_run_of_another_app_and_says_why(monkeypatch):
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supercore.task_identity import TaskIdentity

    import fedmol.client.client_app
    import fedmol.client.worker as worker

    sent: dict = {}
    ran: list = []
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600, message_type="train")
    message = make_message(meta, RecordDict())
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    other_app = types.SimpleNamespace(fab_id="someone/else", fab_version=worker.installed_version())
    for attr, value in (("_run_id", 1), ("_node_id", 5), ("_task_id", 7)):
        monkeypatch.setattr(TaskIdentity, attr, value)
    monkeypatch.setattr(worker, "_client", lambda *a, **k: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(heartbeat, "HeartbeatSender",
                        lambda fn: types.SimpleNamespace(start=lambda: None, stop=lambda: None, is_running=False))
    monkeypatch.setattr(worker, "pull_task_input", lambda client: (message, context, other_app, None, (7, 1, 5)))
    monkeypatch.setattr(runtime, "push_message", lambda client, reply, ctx: sent.update(reply=reply))
    monkeypatch.setattr(runtime, "push_task_output",
                        lambda client, context, sub_status, details: sent.update(status=sub_status, details=details))
    monkeypatch.setattr(fedmol.client.client_app, "app", lambda **kw: ran.append(kw))

    status = worker.run_task("127.0.0.1:9", "token")

    assert not ran, "the ClientApp must not run for another app"
    assert status == sent["status"] and "fail" in str(status).lower()
    assert sent["reply"].has_error()
    assert "only runs the fedmol installed on the site" in sent["reply"].error.reason
    assert "someone/else" in sent["details"]
