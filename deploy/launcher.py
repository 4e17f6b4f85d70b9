"""Start Flower processes on loopback, run the fedmol app, and stop everything afterwards.

`LocalSuperLink` starts ``fedmol-superlink`` (Flower's SuperLink with the message arrays in memory,
`fedmol.server.superlink`; simulation or deployment engine) as a child process on 127.0.0.1 with
its own FLWR_HOME, so no user configuration is touched and nothing outlives the ``with`` block.
`flwr_run` submits the app with a run config, streams its log and returns non-zero unless the
SuperLink reports the run completed.

Every child is started by `spawn`: in a new session (its own process group, which `stop_process_groups`
stops as a whole, grandchildren included) and, on Linux, with ``PR_SET_PDEATHSIG`` so that it gets
SIGTERM when the launcher dies without cleaning up (SIGKILL, a crash of the interpreter). Commands that
hold children open (`fedmol consortium up`) run under `stop_on_signals`, which turns SIGTERM, SIGINT
and SIGHUP into `Stopped`, so the ``with`` blocks' stop paths run. Paths are resolved when an object
is made: children run with ``cwd`` set to a work folder, where a relative path would mean another place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fedmol.errors import FedmolError

# The components of the Flower app: imported from the fedmol installed where they run, never from the FAB.
COMPONENTS = {"serverapp": "fedmol.server.server_app:app", "clientapp": "fedmol.client.client_app:app"}
CONNECTION = "fedmol-local"


class LaunchError(FedmolError):
    """A Flower process did not start or a run failed."""


class Stopped(BaseException):
    """The process was asked to stop by a signal (see `stop_on_signals`).

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` does not swallow it on its
    way to the ``with`` blocks and ``finally`` clauses that stop the children."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM, SIGINT and SIGHUP raise `Stopped` in the main thread.

    SIGINT is handled even where it was ignored (a background job of a non-interactive shell ignores
    it, so `kill -INT` did nothing); SIGHUP is left ignored where it was (``nohup``). After the first
    signal all three are ignored, so the stop path (bounded by its own timeouts) is not interrupted
    half-way. The previous handlers come back on exit. Outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def _raise(signum: int, _frame: Any) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signum)

    for sig in STOP_SIGNALS:
        if not (sig == signal.SIGHUP and previous[sig] == signal.SIG_IGN):
            signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when this thread dies (Linux), else None.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so it is set only for
    children started from the main thread (which ends with the process). Python code after fork in a
    threaded parent is a known hazard; this one calls an already-resolved libc function and
    os.getppid, takes no lock and allocates nothing of note. SIGTERM (not SIGKILL) lets the child stop
    its own children. If the parent died before prctl took effect, the child exits at once.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    sigterm = int(signal.SIGTERM)

    def _preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return _preexec


def spawn(cmd: list[str], *, log: Path | None = None, env: dict[str, str] | None = None, cwd: Path | None = None,
          stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session (its own process group) that dies with this process.

    ``log``: append stdout and stderr to this file; otherwise ``stdout`` (e.g. subprocess.PIPE), with
    stderr merged into it. Stop the child with `stop_process_groups`."""
    if log is not None:
        with log.open("ab") as out:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    start_new_session=True, preexec_fn=_pdeathsig_preexec())
    return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
                            preexec_fn=_pdeathsig_preexec())


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
                 extra_args: list[str] | None = None, startup_timeout: float = 60.0,
                 tls_dir: Path | None = None, supernode_auth: bool = False, persistent: bool = False) -> None:
        """tls_dir: a folder with ca.crt, server.pem, server.key (`fedmol.deploy.pki`); None = insecure.
        supernode_auth: only SuperNodes whose public key was registered (`admit`) may connect.
        persistent: keep the link state (registered SuperNodes, runs) in ``superlink-state.db`` in
        ``workdir``, as a production SuperLink does; by default it lives in the process's memory
        (Flower's default), which a SuperLink that lives only as long as this object loses nothing by,
        and which makes a round at the default model size seconds shorter (every message's header,
        object tree and status is a SQLite transaction otherwise)."""
        self.workdir = Path(workdir).resolve()
        self.persistent = persistent
        self.simulation = simulation
        self.tls_dir = Path(tls_dir).resolve() if tls_dir else None
        self.supernode_auth = supernode_auth
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
        env = flower_env(self.flwr_home)
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")  # default 1 s per task pick-up
        return env

    def _security_args(self) -> list[str]:
        if self.tls_dir is None:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(self.tls_dir / "ca.crt"), "--ssl-certfile", str(self.tls_dir / "server.pem"),
                "--ssl-keyfile", str(self.tls_dir / "server.key")]

    def start(self) -> LocalSuperLink:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = ('insecure = true\n' if self.tls_dir is None
                    else f'root-certificates = "{self.tls_dir / "ca.crt"}"\n')
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\n{security}'
        )
        from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME  # --database's default: the link state in memory

        cmd = [_bin("fedmol-superlink"), *self._security_args(), "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.workdir / "superlink-state.db") if self.persistent else FLWR_IN_MEMORY_DB_NAME,
               "--disable-runtime-dependency-installation", *self.extra_args]
        if self.simulation:
            cmd.append("--simulation")
        if self.supernode_auth:
            cmd.append("--enable-supernode-auth")
        # A new session: Ray and ClientApp children are stopped with the whole group.
        self.proc = spawn(cmd, log=self.log_path, env=self.env(), cwd=self.workdir)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LaunchError(f"fedmol-superlink exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5, verify=self._verify()).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LaunchError(f"fedmol-superlink did not answer on {self.address} within {self.startup_timeout:.0f} s")

    @property
    def url(self) -> str:
        return f"{'http' if self.tls_dir is None else 'https'}://{self.address}"

    def _verify(self) -> Any:
        if self.tls_dir is None:
            return True
        import ssl

        return ssl.create_default_context(cafile=str(self.tls_dir / "ca.crt"))

    def admit(self, public_key: Path) -> str:
        """Register a site's public key (SuperNode authentication); returns flwr's answer."""
        out = subprocess.run([_bin("flwr"), "supernode", "register", str(public_key), CONNECTION],
                             env=self.env(), capture_output=True, text=True, timeout=60, cwd=self.workdir)
        if out.returncode != 0:
            raise LaunchError(f"registering {public_key.name} failed: {(out.stdout + out.stderr).strip()[-400:]}")
        return out.stdout.strip()

    def list_supernodes(self) -> str:
        out = subprocess.run([_bin("flwr"), "supernode", "list", CONNECTION], env=self.env(),
                             capture_output=True, text=True, timeout=60, cwd=self.workdir)
        return out.stdout + out.stderr

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        stop_process_groups([self.proc], timeout)
        self.proc = None

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM the process's group, then SIGKILL what is left after ``timeout`` seconds."""
    stop_process_groups([proc], timeout)


def stop_process_groups(procs: Iterable[subprocess.Popen[Any] | None], timeout: float = 15.0) -> None:
    """SIGTERM the groups of all ``procs`` (started by `spawn`) at once, wait up to ``timeout`` seconds
    for the leaders, then SIGKILL every group (children, e.g. Ray workers, that ignored SIGTERM)."""
    started = [p for p in procs if p is not None]
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=5)


def write_flower_app(folder: Path) -> Path:
    """Write the code-free Flower app that `flwr run` submits: one pyproject.toml, and nothing else.

    The FAB carries the app's identity (name, version, publisher, components) and its run config with
    every key's default (`FederationConfig`), no code: the ServerApp and ClientApp are imported from
    the fedmol installed where they run, so a site runs the code it installed and reviewed. It is
    written from the installed package rather than copied from the repository, whose pyproject.toml
    (the same app, for `flwr run .`) is not installed; tests/deploy/test_flower_app.py checks both agree.
    """
    import tomli_w

    from fedmol import __version__
    from fedmol.config import FederationConfig

    app = {
        "project": {"name": "fedmol", "version": __version__, "description": "fedmol federation (code-free app)",
                    "license": "Apache-2.0"},
        "tool": {"flwr": {"app": {"publisher": "fedmol", "fab-include": ["pyproject.toml"],
                                  "components": dict(COMPONENTS),
                                  "config": FederationConfig().to_run_config()}}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(app))
    return folder


def flwr_run(link: LocalSuperLink, run_config: dict[str, Any], *, federation_config: dict[str, Any] | None = None,
             app_dir: Path | None = None, on_line: Callable[[str], None] | None = None,
             timeout: float = 3600.0) -> int:
    """Submit the app to ``link`` and stream its log until the run ends; return 0 only for a completed run.

    `flwr run --stream` exits 0 whenever it could stream the log, even when the ServerApp raised or
    the simulation crashed ("Exit Code: 700"). So the run's final status is asked of the SuperLink
    (`run_status`): anything but ``finished:completed`` returns flwr's non-zero code or 1, with a line
    (through ``on_line``, else stderr) naming the run, its status and Flower's details. If the status
    cannot be read, a Flower "Exit Code: N" line (N > 0) in the log counts as a failure.
    Raises LaunchError when the run does not end within ``timeout`` seconds.

    ``app_dir``: a Flower app folder; by default the code-free app of `write_flower_app`."""
    import tomli_w

    if app_dir is None:
        app_dir = write_flower_app(link.workdir / "app")
    cfg_path = link.workdir / "run-config.toml"
    cfg_path.write_text(tomli_w.dumps(run_config))
    cmd = [_bin("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(cfg_path), "--stream"]
    if federation_config:
        cmd += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
    proc = spawn(cmd, stdout=subprocess.PIPE, env=link.env(), cwd=link.workdir)
    # A watchdog bounds the wait even when the stream goes silent (e.g. a ServerApp that died).
    timed_out = threading.Event()

    def _expire() -> None:
        timed_out.set()
        stop_process_group(proc, 5)

    watchdog = threading.Timer(timeout, _expire)
    watchdog.daemon = True
    watchdog.start()
    assert proc.stdout is not None
    run_id: int | None = None
    flower_exit_codes: list[int] = []
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            plain = _ANSI.sub("", line)
            if run_id is None and (started := _RUN_STARTED.search(plain)):
                run_id = int(started.group(1))
            if exit_line := _FLOWER_EXIT.search(plain):
                flower_exit_codes.append(int(exit_line.group(1)))
            if on_line:
                on_line(line)
        code = proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            stop_process_groups([proc], 5)
    if timed_out.is_set():
        raise LaunchError(f"flwr run did not finish within {timeout:.0f} s")
    say = on_line or (lambda text: print(text, file=sys.stderr))
    if run_id is None:
        say(f"fedmol: flwr run started no run (exit code {code})")
        return code or 1
    status, details = run_status(link, run_id)
    if status == "finished:completed":
        return code
    if status is None:
        failed = [c for c in flower_exit_codes if c != 0]
        if failed:
            say(f"fedmol: run {run_id}: status unavailable ({details}); Flower reported Exit Code {failed[0]}")
            return code or 1
        say(f"fedmol: run {run_id}: status unavailable ({details}); taking flwr run's exit code {code}")
        return code
    say(f"fedmol: run {run_id} ended with status {status}" + (f": {details}" if details else ""))
    return code or 1


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RUN_STARTED = re.compile(r"Successfully started run (\d+)")
_FLOWER_EXIT = re.compile(r"Exit Code: (\d+)")


def run_status(link: LocalSuperLink, run_id: int, *, wait: float = 30.0) -> tuple[str | None, str]:
    """The run's status as the SuperLink reports it (`flwr ls --run-id ID --format json`) and its details.

    Status is ``"finished:completed"``, ``"finished:failed"``, ``"finished:stopped"``, ``"running"``...
    A run whose log stream just ended may take a moment to be marked finished: this asks again for up
    to ``wait`` seconds. Returns ``(None, reason)`` when the SuperLink cannot be asked."""
    deadline = time.monotonic() + wait
    while True:
        try:
            out = subprocess.run([_bin("flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
                                 env=link.env(), capture_output=True, text=True, timeout=60, cwd=link.workdir)
        except subprocess.TimeoutExpired:
            return None, "flwr ls did not answer within 60 s"
        text = out.stdout[out.stdout.find("{"):] if "{" in out.stdout else ""
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            return None, f"flwr ls answered: {(out.stdout + out.stderr).strip()[-300:]!r}"
        if not answer.get("success") or not answer.get("runs"):
            return None, f"flwr ls: {answer.get('error-message', answer)}"
        run = answer["runs"][0]
        status, details = str(run.get("status", "")), str(run.get("status-details", ""))
        if status.startswith("finished") or time.monotonic() >= deadline:
            return status, details
        time.sleep(1.0)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return f'"{v}"'


class LocalSuperNode:
    """A site's SuperNode on loopback, pointed at its store by node config."""

    def __init__(self, link: LocalSuperLink, store: Path, name: str, *, private_key: Path | None = None,
                 warm: bool = True, fault_drill: str = "") -> None:
        """warm: run the ClientApp in the site runtime (`fedmol site worker`), one long-lived process
        behind a SuperNode started with ``--isolation process``; otherwise Flower's default, a fresh
        ClientApp process per message. fault_drill: make this site send corrupted updates ("nan",
        "scale:K"), to test the server's defences."""
        self.link, self.store, self.name = link, Path(store).resolve(), name
        self.private_key = Path(private_key).resolve() if private_key is not None else None
        self.warm = warm
        self.fault_drill = fault_drill
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.log_path = link.workdir / f"supernode-{name}.log"

    def start(self) -> LocalSuperNode:
        runtime_port = free_port()
        node_config = f'site-store="{self.store}" site-name="{self.name}"'
        if self.fault_drill:
            node_config += f' fault-drill="{self.fault_drill}"'
        # warm: fedmol-supernode is flower-supernode with a 0.25 s instead of 3 s idle wait.
        cmd = [_bin("fedmol-supernode" if self.warm else "flower-supernode"), "--superlink", self.link.address,
               "--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", node_config]
        if self.warm:
            cmd += ["--isolation", "process"]
        if self.link.tls_dir is None:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.link.tls_dir / "ca.crt")]
        if self.private_key is not None:
            cmd += ["--auth-supernode-private-key", str(self.private_key)]
        self.proc = spawn(cmd, log=self.log_path, env=self.link.env(), cwd=self.link.workdir)
        if self.warm:
            # The runtime retries until the SuperNode's Runtime API is up; it stops with the SuperNode.
            self.worker = spawn([_bin("fedmol"), "site", "worker", "--runtime", f"127.0.0.1:{runtime_port}"],
                                log=self.link.workdir / f"worker-{self.name}.log", env=self.link.env(),
                                cwd=self.link.workdir)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.proc, self.worker) if p is not None]

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_groups(self.processes(), timeout)
        self.proc = self.worker = None


class LocalMlflowServer:
    """A real `mlflow server` on 127.0.0.1 (one worker, no job runner: ready in seconds)."""

    def __init__(self, workdir: Path, *, port: int | None = None, startup_timeout: float = 90.0) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalMlflowServer:
        import httpx

        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
               "--artifacts-destination", (self.workdir / "artifacts").as_uri()]
        self.proc = spawn(cmd, log=self.workdir / "mlflow-server.log", env=env, cwd=self.workdir)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"mlflow server exited with code {self.proc.returncode}; see {self.workdir}")
            try:
                if httpx.get(f"{self.uri}/health", timeout=0.5).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise LaunchError(f"mlflow server did not answer on {self.uri} within {self.startup_timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            stop_process_groups([self.proc], timeout)
            self.proc = None
