"""A real `fedmol serve` process on a free port of 127.0.0.1, stopped when the test is done."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_service(model: Path, key: Path, *extra: str, startup_timeout: float = 180.0) -> Iterator[str]:
    """Start `fedmol serve` and yield its base URL once /healthz answers; always stop it."""
    port = free_port()
    env = {**os.environ, "FEDMOL_SERVE_TOKENS": f"{TOKEN},{OTHER_TOKEN}"}
    cmd = [sys.executable, "-m", "fedmol.cli", "serve", "--model", str(model), "--key-file", str(key),
           "--host", "127.0.0.1", "--port", str(port), *extra]
    log = open(Path(str(model)).parent / f"serve-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fedmol serve exited with {proc.returncode}: "
                                   f"{Path(log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"fedmol serve did not answer within {startup_timeout} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
