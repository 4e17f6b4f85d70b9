"""Reading the deployment templates (deploy/systemd, deploy/compose, deploy/nginx) in tests."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def unit_service(unit: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart (continuation lines joined, split as a shell would) and Environment= of a unit."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    execs = re.findall(r"^ExecStart=(.+)$", text, flags=re.M)
    assert len(execs) == 1, f"{unit.name}: one ExecStart expected"
    env = dict(line.split("=", 1) for line in re.findall(r"^Environment=(.+)$", text, flags=re.M))
    return shlex.split(execs[0]), env


def flag(cmd: list[str], name: str) -> str:
    """The value after ``name`` in ``cmd``."""
    assert name in cmd, f"{name} missing from {cmd}"
    return cmd[cmd.index(name) + 1]
