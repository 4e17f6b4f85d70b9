"""`fedmol-supernode`: Flower's `flower-supernode`, with a shorter wait between asks for work.

Flower 1.41's SuperNode sleeps a fixed 3 s whenever the SuperLink has no message for it
(`flwr/supernode/start_client_internal.py`, not configurable). A federated round is a train and
an evaluate message, each found on average 1.5 s (up to 3 s) after the server sent it; that alone
was most of a round's overhead. This entry point takes exactly `flower-supernode`'s arguments and
only shortens that one idle wait (default 0.25 s, or ``FEDMOL_SUPERNODE_IDLE_POLL``); every other
behaviour is Flower's. Each idle SuperNode then makes about 4 small requests a second to the
SuperLink instead of one every 3 s.

    fedmol-supernode --superlink server.example.org:9092 --root-certificates ca.crt ...
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

FLOWER_IDLE_S = 3
DEFAULT_IDLE_S = 0.25


class _ShortIdleClock:
    """The `time` module as seen by Flower's SuperNode loop, with its 3 s idle sleep shortened."""

    def __init__(self, idle: float) -> None:
        self.idle = idle

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle if seconds == FLOWER_IDLE_S else seconds)

    def __getattr__(self, name: str) -> Any:  # everything else is the real `time`
        return getattr(time, name)


def patch_idle_wait(idle: float) -> bool:
    """Shorten the SuperNode's idle wait in this process; False if this Flower has another layout."""
    # Patch of a Flower internal: contract tests in tests/test_flower_patches.py (section 1);
    # what upstream would need: deploy/README.md, "Patches of Flower and what upstream would need".
    from flwr.supernode import start_client_internal

    if getattr(start_client_internal, "time", None) is not time:
        return False
    start_client_internal.time = _ShortIdleClock(idle)  # type: ignore[assignment]
    return True


def main() -> None:
    idle = float(os.environ.get("FEDMOL_SUPERNODE_IDLE_POLL", DEFAULT_IDLE_S))
    if not 0.01 <= idle <= FLOWER_IDLE_S:
        sys.exit(f"FEDMOL_SUPERNODE_IDLE_POLL must be between 0.01 and {FLOWER_IDLE_S} seconds, got {idle}")
    if not patch_idle_wait(idle):
        print("fedmol-supernode: this Flower version's SuperNode loop is not the one fedmol knows; "
              "running it unchanged (3 s idle wait)", file=sys.stderr)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
