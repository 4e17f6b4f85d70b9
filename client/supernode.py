"""`fedmol-supernode`: Flower's `flower-supernode`, with a shorter wait between asks for work.

Flower 1.41's SuperNode sleeps a fixed 3 s whenever the SuperLink has no message for it
(`flwr/supernode/start_client_internal.py`, not configurable). A federated round is a train and
an evaluate message, each found on average 1.5 s (up to 3 s) after the server sent it; that alone
was most of a round's overhead. This entry point takes exactly `flower-supernode`'s arguments and
shortens that idle wait (default 0.25 s, or ``FEDMOL_SUPERNODE_IDLE_POLL``). Each idle SuperNode
then makes about 4 small requests a second to the SuperLink instead of one every 3 s. Its 0.5 s
waits for the ClientApp's reply and its arrays (local, no request) become 0.05 s.

It also shortens one more wait: the SuperNode sees a message as soon as the server has sent its
header, and then fetches the message's arrays, which the server is still uploading (3 sites x
52 MB at the default model size). Flower backs off 1, 2, 4, 8 s between tries of an object that is
not there yet, so a site started its round up to several seconds after its arrays had arrived.
Here it tries again after 0.05 s, doubling up to 0.5 s (``patch_object_pulls``): at most two small
requests a second per waiting object. Its log lines carry their time (colours only on a terminal).

And it mends one failure (`patch_stopped_run_receive`): when a run stops while the SuperNode is still
receiving one of its messages' arrays (a ServerApp killed mid-upload, a run stopped by the operator),
Flower 1.41 skips the message without finishing the task it created for it. The site runtime then
waits for arrays that never come (about 4 minutes) and its late error reply puts the SuperNode's
one-message-one-reply loop one reply behind for good: every later reply of that site is sent only
when the next message arrives, after its round has timed out. Here that fetch fails like any other
failed fetch: Flower finishes the task as failed and drops the message. Every other behaviour is Flower's.

    fedmol-supernode --superlink server.example.org:9092 --root-certificates ca.crt ...
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
from typing import Any

FLOWER_IDLE_S = 3
DEFAULT_IDLE_S = 0.25
# While its ClientApp works, the SuperNode waits for the reply, and then for each of the reply's arrays
# still being handed over, in fixed 0.5 s sleeps (`_push_messages`); here 0.05 s: a look at its own
# in-memory state, no request.
FLOWER_REPLY_WAIT_S = 0.5
REPLY_WAIT_S = 0.05
OBJECT_PULL_BACKOFF_S = 0.05  # first wait before another try of an object not yet at the SuperLink
OBJECT_PULL_BACKOFF_CAP_S = 0.5  # the longest wait between tries (Flower's: 1 s doubling to 10 s)


class _ShortIdleClock:
    """The `time` module as seen by Flower's SuperNode loop, with its 3 s idle sleep and its 0.5 s
    waits for the reply shortened."""

    def __init__(self, idle: float) -> None:
        self.idle = idle

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_S:
            seconds = self.idle
        elif seconds == FLOWER_REPLY_WAIT_S:
            seconds = REPLY_WAIT_S
        time.sleep(seconds)

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


def patch_object_pulls(backoff: float = OBJECT_PULL_BACKOFF_S, cap: float = OBJECT_PULL_BACKOFF_CAP_S) -> bool:
    """Make the SuperNode fetch a message's arrays with a short backoff (this process only); False if
    this Flower has another layout (then Flower's own backoff stays)."""
    # Patch of a Flower internal: contract tests in tests/test_flower_patches.py (section 1);
    # what upstream would need: deploy/README.md, "Patches of Flower and what upstream would need".
    from flwr.supercore.inflatable.inflatable_utils import pull_objects
    from flwr.supernode import start_client_internal

    if getattr(start_client_internal, "pull_objects", None) is not pull_objects:
        return False
    start_client_internal.pull_objects = functools.partial(
        pull_objects, initial_backoff=backoff, backoff_cap=cap)
    return True


class RunStoppedWhileReceiving(RuntimeError):
    """The run of the message the SuperNode was receiving is no longer running."""


def _run_stop_is_a_failure(fn: Any) -> Any:
    """``fn`` (a Fleet request of `_pull_and_store_message`), raising `RunStoppedWhileReceiving`, an
    `Exception`, where Flower raises `RunNotRunningException`, a `BaseException`."""
    from flwr.supercore.run import RunNotRunningException

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RunNotRunningException:
            raise RunStoppedWhileReceiving("the run stopped while this message was being received") from None

    return call


def patch_stopped_run_receive() -> bool:
    """When a run stops while the SuperNode fetches one of its messages' arrays, or confirms it, the
    SuperNode takes Flower's own failed-fetch path: it finishes the message's task as failed and drops
    the message (this process only). False if this Flower has another layout.

    Flower 1.41's `_pull_and_store_message` creates the task, then fetches; its ``except Exception``
    does that clean-up, but `RunNotRunningException` is a `BaseException` and lands in a handler that
    only logs, leaving the task open for the site runtime to wait on."""
    # Patch of a Flower internal: contract tests in tests/test_flower_patches.py (section 1);
    # what upstream would need: deploy/README.md, "Patches of Flower and what upstream would need".
    from flwr.supernode import start_client_internal

    original = getattr(start_client_internal, "_pull_and_store_message", None)
    if original is None or getattr(original, "fedmol_patched", None) is not None:
        return False
    signature = inspect.signature(original)  # once: the SuperNode calls it on every poll
    if not {"pull_object", "confirm_message_received"} <= set(signature.parameters):
        return False

    @functools.wraps(original)
    def receive(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name in ("pull_object", "confirm_message_received"):
            bound.arguments[name] = _run_stop_is_a_failure(bound.arguments[name])
        return original(*bound.args, **bound.kwargs)

    receive.fedmol_patched = original  # type: ignore[attr-defined]
    start_client_internal._pull_and_store_message = receive
    return True


def main() -> None:
    idle = float(os.environ.get("FEDMOL_SUPERNODE_IDLE_POLL", DEFAULT_IDLE_S))
    if not 0.01 <= idle <= FLOWER_IDLE_S:
        sys.exit(f"FEDMOL_SUPERNODE_IDLE_POLL must be between 0.01 and {FLOWER_IDLE_S} seconds, got {idle}")
    if not patch_idle_wait(idle):
        print("fedmol-supernode: this Flower version's SuperNode loop is not the one fedmol knows; "
              "running it unchanged (3 s idle wait)", file=sys.stderr)
    if not patch_object_pulls():
        print("fedmol-supernode: this Flower version's SuperNode fetches message arrays another way; "
              "keeping its own backoff (1 s, 2 s, ...)", file=sys.stderr)
    if not patch_stopped_run_receive():
        print("fedmol-supernode: this Flower version's SuperNode receives messages another way; a run that "
              "stops while a message arrives is handled as Flower does", file=sys.stderr)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    from fedmol.flower_entry import run_flower_command

    run_flower_command("flower-supernode", flower_supernode)


if __name__ == "__main__":
    main()
