"""Start Flower processes on loopback, run the fedmol app, and stop everything afterwards.

`LocalSuperLink` starts ``flower-superlink`` (simulation or deployment engine) as a child process
on 127.0.0.1 with its own FLWR_HOME, so no user configuration is touched and nothing outlives
the ``with`` block. `flwr_run` submits the app with a run config and streams its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmol.errors import FedmolError

APP_DIR = Path(__file__).resolve().parents[1]  # the repository root is the Flower app
CONNECTION = "fedmol-local"


class LaunchError(FedmolError):
    """A Flower process did not start or a run failed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: our FLWR_HOME, no runtime dependency installation."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_DEDUP_LOGS": "0",
        "PYTHONUNBUFFERED": "1",
    })
    # Processes started from this interpreter's venv find the Flower executables beside it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise LaunchError(f"{name} not found: install fedmol's dependencies (`make install`)")
    return found


class LocalSuperLink:
    """A SuperLink on 127.0.0.1 for the duration of a ``with`` block."""

    def __init__(self, workdir: Path, *, simulation: bool = True, port: int | None = None,
                 extra_args: list[str] | None = None, startup_timeout: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.simulation = simulation
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.startup_timeout = startup_timeout
        self.flwr_home = self.workdir / "flwr-home"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "superlink.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

    def start(self) -> LocalSuperLink:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\ninsecure = true\n'
        )
        cmd = [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.workdir / "superlink-state.db"),
               "--disable-runtime-dependency-installation", *self.extra_args]
        if self.simulation:
            cmd.append("--simulation")
        log = self.log_path.open("ab")
        # A new session: Ray and ClientApp children are stopped with the whole group.
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                     start_new_session=True, cwd=self.workdir)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LaunchError(f"flower-superlink exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"http://{self.address}/health", timeout=0.5).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LaunchError(f"flower-superlink did not answer on {self.address} within {self.startup_timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, timeout)
        self.proc = None

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM the process's group, then SIGKILL what is left after ``timeout`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children (Ray workers) that ignored SIGTERM
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=5)


def flwr_run(link: LocalSuperLink, run_config: dict[str, Any], *, federation_config: dict[str, Any] | None = None,
             app_dir: Path = APP_DIR, on_line: Callable[[str], None] | None = None,
             timeout: float = 3600.0) -> int:
    """Submit the app to ``link`` and stream its log until the run ends; return flwr's exit code."""
    import tomli_w

    cfg_path = link.workdir / "run-config.toml"
    cfg_path.write_text(tomli_w.dumps(run_config))
    cmd = [_bin("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(cfg_path), "--stream"]
    if federation_config:
        cmd += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=link.env(),
                            cwd=link.workdir, start_new_session=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if on_line:
                on_line(line)
            if time.monotonic() > deadline:
                raise LaunchError(f"flwr run did not finish within {timeout:.0f} s")
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            stop_process_group(proc, 5)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return f'"{v}"'
