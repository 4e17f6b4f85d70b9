"""A long-lived site worker: keeps the site's data, torch and the model code warm between messages.

Flower 1.41's deployment engine starts a fresh ClientApp process for every message, so each train
or evaluate message would pay for importing torch and loading the site store again (seconds on a
busy machine). With a worker, the ClientApp only forwards the message over a local Unix socket:

    fedmol site worker STORE                    # on the site's host, next to its SuperNode
    flower-supernode ... --node-config 'site-store="STORE" site-worker="STORE/worker.sock"'

The socket is created with mode 0600 inside the site store, and connections must present the
worker's auth key (``STORE/worker.key``, 0600): only processes of the site's own account reach it.
Nothing new leaves the site: the worker returns exactly what the in-process ClientApp would.
"""

from __future__ import annotations

import logging
import os
import secrets
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

log = logging.getLogger("fedmol.client")


def _authkey(store: Path, create: bool) -> bytes:
    path = store / "worker.key"
    if create and not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def default_socket(store: Path) -> Path:
    return Path(store).resolve() / "worker.sock"


def serve(store: str | Path, socket_path: str | Path | None = None, *, name: str = "",
          max_requests: int | None = None, fault: str = "") -> None:
    """Answer forwarded train/evaluate requests for ``store`` until interrupted."""
    from client.site import SiteNode
    from fedmol.config import FederationConfig

    store = Path(store).resolve()
    sock = Path(socket_path) if socket_path else default_socket(store)
    if sock.exists():
        sock.unlink()
    node = SiteNode(store, name, fault=fault)
    node.store  # noqa: B018 - load the data now, not on the first message
    import models.training  # noqa: F401 - import torch and the model code now

    old_umask = os.umask(0o177)
    try:
        listener = Listener(str(sock), family="AF_UNIX", authkey=_authkey(store, create=True))
    finally:
        os.umask(old_umask)
    log.info("site worker for %s listening on %s", store, sock)
    served = 0
    try:
        while max_requests is None or served < max_requests:
            with listener.accept() as conn:
                request: dict[str, Any] = conn.recv()
                try:
                    cfg = FederationConfig.from_run_config(request["run_config"])
                    node.report_task_names = bool(request.get("report_task_names", node.report_task_names))
                    if request["op"] == "train":
                        reply = node.train_round(cfg, request["shared"], server_round=request["server_round"],
                                                 federation_id=request["federation_id"],
                                                 proximal_mu=request.get("proximal_mu", 0.0))
                    else:
                        reply = node.evaluate_round(cfg, request["shared"], server_round=request["server_round"],
                                                    federation_id=request["federation_id"])
                    conn.send({"ok": True, "reply": reply})
                except Exception as exc:  # the ClientApp reports it to the server as a failed reply
                    log.exception("request failed")
                    conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            served += 1
    finally:
        listener.close()
        if sock.exists():
            sock.unlink()


def forward(socket_path: str | Path, store: str | Path, request: dict[str, Any], timeout: float = 3600.0) -> Any:
    """Send one request to the site's worker and return its `RoundReply`."""
    conn = Client(str(socket_path), family="AF_UNIX", authkey=_authkey(Path(store).resolve(), create=False))
    with conn:
        conn.send(request)
        if not conn.poll(timeout):
            raise TimeoutError(f"the site worker at {socket_path} did not answer within {timeout:.0f} s")
        answer = conn.recv()
    if not answer["ok"]:
        raise RuntimeError(f"site worker: {answer['error']}")
    return answer["reply"]
