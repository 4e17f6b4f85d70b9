"""A real `fedmol serve` on 127.0.0.1 for the length of a ``with`` block: scripts, notebooks, tests.

    from fedmol.scoring.local_service import local_service

    with local_service("model/", "consortium.key", "--mc-samples", "0") as svc:
        reply = httpx.post(f"{svc.url}/v1/score", json=["CCO", "c1ccccc1O"], headers=svc.headers)

`local_service` starts ``python -m fedmol.cli serve`` in a child process on a free port of
127.0.0.1 (never another interface), waits until ``GET /healthz`` answers, yields a `LocalService`
(its URL, the access token, the process id and the log file) and always stops the process when
the block ends, also on an error. Extra arguments are passed to `fedmol serve` as given (for
example ``"--standardize", "off"``). The access tokens reach the child through
``$FEDMOL_SERVE_TOKENS``, never its command line; without ``tokens`` one random token is made.
The server's output goes to ``log_path`` (kept), or to a temporary file removed at the end;
if the server exits or does not answer within ``startup_timeout`` seconds, the error carries the
end of that log.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalService", "local_service", "free_port"]


@dataclass(frozen=True)
class LocalService:
    """A running local `fedmol serve`: base URL, its first access token, process id and log file."""

    url: str
    token: str
    pid: int
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header of `token`."""
        return {"Authorization": f"Bearer {self.token}"}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_service(model: str | Path, key_file: str | Path, *serve_args: str, tokens: Sequence[str] | None = None,
                  port: int | None = None, startup_timeout: float = 180.0,
                  log_path: str | Path | None = None) -> Iterator[LocalService]:
    """Run `fedmol serve --model MODEL --key-file KEY_FILE SERVE_ARGS...` on 127.0.0.1 until the block ends.

    tokens: the accepted access tokens (each >= 16 characters, as `fedmol serve` requires);
    default one random token. port: default a free one. Raises RuntimeError when the server exits
    before it answers, TimeoutError when it does not answer within ``startup_timeout`` seconds.
    """
    from fedmol.scoring.tokens import TOKENS_ENV

    tokens = list(tokens) if tokens is not None else [secrets.token_urlsafe(32)]
    if not tokens:
        raise ValueError("local_service: give at least one access token (or none, for a random one)")
    port = port or free_port()
    scratch = None
    if log_path is None:
        scratch = Path(tempfile.mkdtemp(prefix="fedmol-serve-"))
        log_path = scratch / "serve.log"
    log_path = Path(log_path)
    env = {**os.environ, TOKENS_ENV: ",".join(tokens)}
    cmd = [sys.executable, "-m", "fedmol.cli", "serve", "--model", str(model), "--key-file", str(key_file),
           "--host", "127.0.0.1", "--port", str(port), *serve_args]
    url = f"http://127.0.0.1:{port}"
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_for_health(proc, url, log_path, startup_timeout)
                yield LocalService(url=url, token=tokens[0], pid=proc.pid, log_path=log_path)
            finally:
                _stop(proc)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _wait_for_health(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"fedmol serve exited with {proc.returncode}: {_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:  # noqa: S310 - 127.0.0.1 only
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"fedmol serve did not answer on {url}/healthz within {timeout} s: {_tail(log_path)}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
