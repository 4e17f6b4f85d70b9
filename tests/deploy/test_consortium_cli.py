"""`fedmol consortium ...` as an operator runs it: relative paths, exit codes, and stopping.

The fast tests call the CLI in-process (no Flower process). The slow ones start the real commands
as subprocesses from a temporary working directory, with relative paths as deploy/README.md writes
them, and check that no process they started outlives `consortium up` (SIGTERM, SIGINT from outside
a terminal, SIGKILL of the launcher).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedmol.cli import main
from fedmol.deploy import launcher
from fedmol.deploy.launcher import LocalSuperLink, Stopped, flwr_run, spawn, stop_on_signals, stop_process_groups
from tests.server.synthetic import write_sites

FEDMOL = str(Path(sys.executable).parent / "fedmol")
TASKS = "c1:classification,c2:classification"


def _write_state(workdir: Path, *, port: int, connection: bool) -> None:
    (workdir / "flower" / "flwr-home").mkdir(parents=True)
    (store,) = write_sites(workdir / "stores", 1, n=40, n_bits=256)  # `run` takes n-bits from the stores
    state = {"superlink": f"127.0.0.1:{port}", "flwr_home": str(workdir / "flower" / "flwr-home"), "tls": False,
             "auth": False, "mlflow": None, "sites": {"a": str(store)}, "output_dir": str(workdir / "server")}
    (workdir / "consortium.json").write_text(json.dumps(state))
    if connection:
        (workdir / "flower" / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{launcher.CONNECTION}"\n\n[superlink.{launcher.CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n')


def test_init_and_add_site_with_a_relative_workdir_write_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["consortium", "init", "ops"]) == 0
    assert main(["consortium", "add-site", "ops", "acme"]) == 0
    assert (tmp_path / "ops" / "pki" / "ca.crt").is_file()
    assert (tmp_path / "ops" / "pki" / "sites" / "acme.pub").is_file()


def test_run_without_a_consortium_exits_non_zero(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["consortium", "run", "ops"]) == 2


def test_run_without_a_flower_connection_exits_non_zero_and_writes_no_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_state(tmp_path / "ops", port=1, connection=False)
    assert main(["consortium", "run", "ops"]) == 2
    assert not list((tmp_path / "ops").rglob("config.toml"))  # flwr would have written an empty one


def test_run_resolves_the_workdir_once_and_exits_with_the_runs_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_state(tmp_path / "ops", port=1, connection=True)
    seen = {}

    def fake_flwr_run(link, run_config, **kw):
        seen.update(workdir=link.workdir, flwr_home=link.flwr_home, output_dir=run_config["output-dir"],
                    n_bits=run_config["n-bits"])
        return 3

    monkeypatch.setattr(launcher, "flwr_run", fake_flwr_run)
    # typer.Exit(3) used to come back from click as a return value, and `fedmol` exited 0.
    assert main(["consortium", "run", "ops"]) == 3
    assert seen == {"workdir": tmp_path / "ops" / "flower", "flwr_home": tmp_path / "ops" / "flower" / "flwr-home",
                    "output_dir": str(tmp_path / "ops" / "server"), "n_bits": 256}


def test_a_finished_run_prints_the_federation_gain_table(tmp_path, monkeypatch, capsys):
    from fedmol.models.report import GainTable

    monkeypatch.chdir(tmp_path)
    _write_state(tmp_path / "ops", port=1, connection=True)

    def fake_flwr_run(link, run_config, **kw):  # the server's outputs, as run_federation writes them
        out = Path(run_config["output-dir"])
        table = GainTable("federation", "score")
        table.add("local", "acme", {"c1": 0.61}, {"c1": "roc_auc"})
        table.add("federated", "acme", {"c1": 0.67}, {"c1": "roc_auc"})
        path = table.to_json(out / "federations" / "f1" / "federated_table.json")
        (out / "last_federation.json").write_text(json.dumps({
            "table": str(path), "mlflow_run_id": "r1", "best_round": 2, "rounds_run": 3,
            "stop_reason": "best federated validation score 0.6700 at round 2; ran all 3 rounds"}))
        return 0

    monkeypatch.setattr(launcher, "flwr_run", fake_flwr_run)
    assert main(["consortium", "run", "ops"]) == 0
    printed = capsys.readouterr().out
    assert "Federation gain" in printed and "acme" in printed and "0.610" in printed and "0.670" in printed
    assert "pairs won against local-only: federated 1/1" in printed
    assert "Model kept: round 2 of 3 rounds run (best federated validation score 0.6700 at round 2" in printed


def test_a_superlink_made_with_a_relative_path_holds_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = LocalSuperLink(Path("ops/flower"), simulation=False, tls_dir=Path("ops/pki"))
    assert link.workdir == tmp_path / "ops" / "flower"
    assert link.flwr_home.is_absolute() and link.log_path.is_absolute() and link.tls_dir.is_absolute()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_on_signals_raises_stopped_and_restores_the_handlers(sig):
    before = {s: signal.getsignal(s) for s in launcher.STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a non-interactive shell
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with pytest.raises(Stopped) as stopped, stop_on_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)
            pytest.fail("no Stopped within 5 s")
        assert stopped.value.signum == sig
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_stop_on_signals_leaves_sighup_ignored_under_nohup():
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGHUP, before)


def test_stop_process_groups_stops_grandchildren(tmp_path):
    proc = spawn(["bash", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE)
    grandchild = int(proc.stdout.readline())
    stop_process_groups([proc], timeout=5)
    assert proc.poll() is not None
    assert not _alive([grandchild], timeout=5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_spawned_child_dies_when_its_launcher_is_killed(tmp_path):
    script = ("import sys, time\nfrom fedmol.deploy.launcher import spawn\n"
              "print(spawn(['sleep', '60']).pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive([child], timeout=0)
        parent.kill()  # no cleanup code runs: only the kernel's parent-death signal can stop the child
        parent.wait(timeout=10)
        assert not _alive([child], timeout=10)
    finally:
        parent.kill()


# --- real processes -------------------------------------------------------------------------------


@pytest.mark.slow
def test_flwr_run_is_non_zero_when_the_serverapp_raises(tmp_path):
    lines: list[str] = []
    with LocalSuperLink(tmp_path / "flower", simulation=False) as link:
        # num-server-rounds=0 passes Flower and makes fedmol's ServerApp raise ConfigError.
        code = flwr_run(link, {"num-server-rounds": 0}, on_line=lines.append, timeout=300)
    assert code != 0, "\n".join(lines[-20:])
    assert any("finished:failed" in line and "num-server-rounds" in line for line in lines), "\n".join(lines[-20:])


@pytest.fixture(scope="module")
def operator_dir(tmp_path_factory):
    """A working directory with two tiny site stores in sites/, as deploy/README.md's operator has."""
    root = tmp_path_factory.mktemp("operator")
    write_sites(root / "sites", 2, n=120, n_bits=256)
    return root


def _start_up(cwd: Path, *, preexec_fn=None) -> subprocess.Popen[str]:
    log = (cwd / "up.log").open("w")
    proc = subprocess.Popen([FEDMOL, "consortium", "up", "ops", "--stores", "sites"], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn)
    deadline = time.monotonic() + 240
    while not (cwd / "ops" / "consortium.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"consortium up did not come up (code {proc.poll()}):\n{(cwd / 'up.log').read_text()}")
        time.sleep(0.5)
    return proc


def _descendants(pid: int) -> list[int]:
    time.sleep(2)  # grandchildren a child starts once it is up (SuperExec, MLflow's worker)
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pids: list[int], timeout: float) -> list[str]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    out = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _kill_all(proc: subprocess.Popen, pids: list[int]) -> None:
    proc.kill()
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
def test_up_and_run_with_relative_paths_then_sigterm_leaves_no_process(operator_dir):
    cwd = operator_dir / "sigterm"
    cwd.mkdir()
    (cwd / "sites").symlink_to(operator_dir / "sites")
    assert subprocess.run([FEDMOL, "consortium", "init", "ops"], cwd=cwd, timeout=120).returncode == 0
    up = _start_up(cwd)
    pids: list[int] = []
    try:
        run = subprocess.run([FEDMOL, "consortium", "run", "ops", "--set", "num-server-rounds=1", "--set",
                              "n-bits=256", "--set", "hidden=16", "--set", f"consortium-tasks={TASKS}",
                              "--set", "num-threads=1", "--set", "round-timeout=120"],
                             cwd=cwd, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        assert (cwd / "ops" / "server" / "last_federation.json").exists()
        assert "Federation gain" in run.stdout  # the table printed at the end
        assert not (cwd / "ops" / "flower" / "ops").exists()  # the path joined twice, once
        pids = _descendants(up.pid)
        assert len(pids) >= 6, pids  # MLflow, SuperLink, 2 x (SuperNode + site worker)
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, (cwd / "up.log").read_text()
        assert not _alive(pids, timeout=15)
        assert "stopped by SIGTERM" in (cwd / "up.log").read_text()
    finally:
        _kill_all(up, pids)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint-from-a-script", "sigkill"])
def test_up_leaves_no_process_on_sigint_outside_a_terminal_or_when_killed(operator_dir, how):
    cwd = operator_dir / how
    cwd.mkdir()
    (cwd / "sites").symlink_to(operator_dir / "sites")
    # A background job of a non-interactive shell starts with SIGINT ignored.
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if how.startswith("sigint") else None
    up = _start_up(cwd, preexec_fn=ignore_sigint)
    pids: list[int] = []
    try:
        pids = _descendants(up.pid)
        assert len(pids) >= 6, pids
        if how == "sigkill":
            up.kill()  # the launcher runs no cleanup: the children's parent-death signal stops them
            up.wait(timeout=10)
        else:
            up.send_signal(signal.SIGINT)
            assert up.wait(timeout=60) == 0, (cwd / "up.log").read_text()
        assert not _alive(pids, timeout=15)
    finally:
        _kill_all(up, pids)
