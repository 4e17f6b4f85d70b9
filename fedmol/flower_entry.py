"""How fedmol's wrappers of Flower's commands (`fedmol-supernode`, `fedmol-superlink`) run them."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_flower_command(name: str, command: Callable[[], object]) -> None:
    """Run Flower's console command ``command`` as ``name`` (its own arguments, its own help).

    An operator reads these logs beside fedmol's own: every line carries its time, and colours only
    on a terminal (a log file or journald gets plain text)."""
    from flwr.supercore.logger import update_console_handler

    update_console_handler(timestamps=True, colored=sys.stderr.isatty())
    sys.argv[0] = name
    command()
