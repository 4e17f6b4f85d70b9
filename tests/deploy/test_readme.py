"""deploy/README.md's "Try it on one machine", run as written.

The test reads the fenced ``bash`` block(s) of that section from the README (so what it runs is what the
README says), makes the input files the ``fedmol prepare`` lines name (a few hundred compounds of the
solubility set that ships with fedmol, dealt out in turn: few enough to be quick, enough for a scored
validation fold at each site), and runs the lines in order with relative paths in a temporary folder,
each through ``bash`` with the installed ``fedmol`` first on PATH. ``fedmol consortium up`` runs in the
background (the README's "in another shell" lines run while it is alive); every other line must exit 0
within its time limit and print what the README says it shows. At the end ``up`` gets SIGTERM and no
process it started may be left. A README line this test does not know fails it: add what the line must
show. Each line's output is kept in ``<tmp>/logs/``, Flower's logs in ``<tmp>/ops/flower/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.deploy.test_consortium_cli import _alive, _kill_all

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
SECTION = "Try it on one machine"
# logS (regression), from fedmol.datasets.embedded (no data outside the package). A site scores a task on
# its validation fold (one of 5 scaffold folds) with >= 25 labels (eval-min-labels): 400 compounds give ~80
# there. A classification set of this size would not (Tox21's most active task: ~13 actives in such a
# fold), and the run would have no score to show.
TASK = "logS"
ROWS_PER_FILE = 400
BIN = str(Path(sys.executable).parent)
TIMEOUTS = {"keygen": 60, "prepare": 180, "run": 300}  # seconds; any other line: DEFAULT_TIMEOUT
DEFAULT_TIMEOUT = 90


@dataclass
class Line:
    text: str  # the command, its trailing comment stripped
    comment: str  # the comment, continuation lines included
    argv: list[str]

    @property
    def command(self) -> str:
        """``fedmol consortium up ...`` -> ``consortium up``; ``fedmol keygen ...`` -> ``keygen``."""
        words = [w for w in self.argv[1:3] if not w.startswith("-")]
        return " ".join(words[:2] if words and words[0] in ("consortium", "site") else words[:1])


def _strip_comment(line: str) -> tuple[str, str]:
    """Split a shell line into its command and its trailing ``# comment`` (a ``#`` inside quotes or a
    word stays: shlex decides)."""
    for match in re.finditer(r"(?:^|\s)#", line):
        head = line[: match.start()]
        try:
            shlex.split(head)
        except ValueError:  # inside an open quote
            continue
        return head.rstrip(), line[match.end():].strip()
    return line.rstrip(), ""


def readme_lines(text: str) -> list[Line]:
    """The commands of the section's fenced bash blocks, in order, with their comments."""
    section = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, f"no '## {SECTION}' section in {README}"
    blocks = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", section.group(1), re.M | re.S)
    assert blocks, f"no ```bash block in '## {SECTION}'"
    out: list[Line] = []
    for block in blocks:
        for raw in block.splitlines():
            command, comment = _strip_comment(raw)
            if command.strip():
                out.append(Line(command.strip(), comment, shlex.split(command)))
            elif comment and out:  # a comment-only line continues the previous line's comment
                out[-1].comment += " " + comment
    return out


def test_the_readme_section_parses_into_the_commands_it_shows():
    lines = readme_lines(README.read_text())
    assert all(line.argv[0] == "fedmol" for line in lines), [line.text for line in lines]
    commands = [line.command for line in lines]
    assert commands.count("consortium up") == 1, commands
    assert commands.index("consortium up") < commands.index("consortium run"), commands
    run = lines[commands.index("consortium run")]
    assert "another shell" in run.comment and "#" not in run.text


def test_strip_comment_keeps_a_hash_inside_quotes():
    assert _strip_comment("fedmol x --set 'a=#1'   # note") == ("fedmol x --set 'a=#1'", "note")
    assert _strip_comment("fedmol x a#b") == ("fedmol x a#b", "")
    assert _strip_comment("   # only a comment") == ("", "only a comment")


def _write_inputs(cwd: Path, names: list[str]) -> None:
    """The first ROWS_PER_FILE x len(names) compounds of the embedded solubility set (smiles, logS),
    dealt out in turn (the set is partly ordered by solubility)."""
    from fedmol.datasets.embedded import solubility

    rows = solubility()[["smiles", TASK]].head(ROWS_PER_FILE * len(names))
    assert len(rows) == ROWS_PER_FILE * len(names)
    for i, name in enumerate(names):
        rows.iloc[i::len(names)].to_csv(cwd / name, index=False)


def _option(line: Line, name: str) -> str:
    return line.argv[line.argv.index(name) + 1]


def _sh(line: Line, cwd: Path, env: dict[str, str]) -> str:
    timeout = TIMEOUTS.get(line.command.split()[-1], DEFAULT_TIMEOUT)
    started = time.monotonic()
    try:
        done = subprocess.run(["bash", "-c", line.text], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README line did not finish within {timeout} s: {line.text}\n{exc.stdout}\n{exc.stderr}")
    out = done.stdout + done.stderr
    (cwd / "logs").mkdir(exist_ok=True)
    (cwd / "logs" / f"{len(list((cwd / 'logs').iterdir())):02d}-{line.command.replace(' ', '-')}.log").write_text(out)
    assert done.returncode == 0, f"README line exited {done.returncode}: {line.text}\n{out[-4000:]}"
    print(f"[{time.monotonic() - started:5.1f} s] {line.text}")
    return out


def _sites_online(cwd: Path, env: dict[str, str], n: int, up: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `fedmol consortium up` has written its state and ``n`` SuperNodes are online."""
    deadline = time.monotonic() + timeout
    listed = ""
    while time.monotonic() < deadline:
        if up.poll() is not None:
            pytest.fail(f"consortium up exited with {up.returncode}:\n{(cwd / 'up.log').read_text()}")
        if (cwd / "ops" / "consortium.json").exists():
            done = subprocess.run([f"{BIN}/fedmol", "consortium", "sites", "ops"], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=60)
            listed = done.stdout + done.stderr
            if done.returncode == 0 and listed.count("online") >= n:
                return
        time.sleep(1)
    pytest.fail(f"fewer than {n} sites online after {timeout:.0f} s:\n{listed}\n{(cwd / 'up.log').read_text()}")


def _check(line: Line, out: str, cwd: Path, sites: list[str], seen: dict[str, int]) -> None:
    """What each README line must have done or shown (``seen``: what earlier lines showed)."""
    cmd = line.command
    if cmd == "keygen":
        key = cwd / line.argv[2]
        assert re.search(r"^[0-9a-f]{64}$", key.read_text(), re.M) and key.stat().st_mode & 0o777 == 0o600, out
    elif cmd == "prepare":
        tasks = json.loads((cwd / _option(line, "--out") / "tasks.json").read_text())["tasks"]
        assert [(t["name"], t["evaluable"]) for t in tasks] == [(TASK, True)], out
    elif cmd == "consortium run":
        kept = re.search(r"Model kept: round (\d+) of (\d+) rounds? run", out)
        assert kept, out[-4000:]
        settings = dict(v.split("=", 1) for k, v in zip(line.argv, line.argv[1:], strict=False) if k == "--set")
        if "num-server-rounds" in settings:  # patience may stop it sooner
            assert int(kept[1]) <= int(kept[2]) <= int(settings["num-server-rounds"]), kept[0]
        seen["rounds"] = int(kept[2])
        table = out[out.index("Federation gain"):] if "Federation gain" in out else ""
        for site in sites:  # a row per site: its local-only and federated scores
            assert re.search(rf"^\W*{site}\W+1\W+-?\d\.\d+\W+-?\d\.\d+", table, re.M), out[-4000:]
    elif cmd == "consortium status":
        assert "FINISHED" in out and re.search(r"http://127\.0\.0\.1:\d+/\S*runs/[0-9a-f]+", out), out
        for site in sites:  # the round it last answered in, and a validation score
            assert re.search(rf"^{site}\s+{seen['rounds']}\s+-?\d\.\d+", out, re.M), out
    elif cmd == "consortium sites":
        assert out.count("online") == len(sites), out
    elif cmd == "site ledger":
        trains = [r for r in out.splitlines() if re.search(r"\btrain\b", r)]
        assert len(trains) == seen["rounds"], out  # one model update sent per round
    else:
        pytest.fail(f"deploy/README.md has a line this test does not check: {line.text!r}: add what it shows")


@pytest.mark.slow
def test_try_it_on_one_machine_runs_as_written(tmp_path):
    lines = readme_lines(README.read_text())
    cwd = tmp_path
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "120",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    inputs = [line.argv[2] for line in lines if line.command == "prepare"]
    _write_inputs(cwd, inputs)
    sites = [Path(_option(line, "--out")).name for line in lines if line.command == "prepare"]
    started = time.monotonic()
    up: subprocess.Popen | None = None
    seen: dict[str, int] = {}
    pids: list[int] = []
    try:
        for line in lines:
            if line.command == "consortium up":
                up = subprocess.Popen(["bash", "-c", f"exec {line.text}"], cwd=cwd, env=env,
                                      stdout=(cwd / "up.log").open("w"), stderr=subprocess.STDOUT,
                                      start_new_session=True)
                _sites_online(cwd, env, len(sites), up)
                pids = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
                continue
            if up is not None:  # "in another shell": `up` still serves
                assert up.poll() is None, f"consortium up exited with {up.returncode} before: {line.text}"
            out = _sh(line, cwd, env)
            _check(line, out, cwd, sites, seen)
        assert up is not None
        pids = sorted(set(pids) | {p.pid for p in psutil.Process(up.pid).children(recursive=True)})
        assert len(pids) >= 2 + 2 * len(sites), pids  # MLflow, SuperLink, per site a SuperNode and a worker
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, (cwd / "up.log").read_text()
        assert not _alive(pids, timeout=15)
    finally:
        if up is not None:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
            _kill_all(up, pids)
    print(f"README block: {time.monotonic() - started:.0f} s")
