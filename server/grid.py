"""A Grid wrapper that waits for replies with a short poll instead of Flower's 3 s sleep.

Flower 1.41's deployment Grid (`flwr.superlink.grid.http_grid`) sleeps 3 s between pulls, which
adds up to 3 s to every train and evaluate phase of every round, and when a reply is listed before
all its arrays have reached the SuperLink it backs off 1 s, 2 s, ... before fetching them again.
This wrapper delegates all calls to the real Grid, re-implements only `send_and_receive` with a
short interval, and fetches reply arrays with a short backoff.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

if TYPE_CHECKING:
    from flwr.proto.node_pb2 import NodeInfo
    from flwr.supercore.run import Run


def _fast_object_pulls(backoff: float, cap: float) -> None:
    """Make the deployment Grid fetch reply objects with a short backoff (this process only)."""
    # Patch of a Flower internal: contract tests in tests/test_flower_patches.py (section 2);
    # what upstream would need: deploy/README.md, "Patches of Flower and what upstream would need".
    try:
        from flwr.supercore.inflatable.inflatable_utils import pull_objects
        from flwr.superlink.grid import http_grid
    except ImportError:  # another Flower layout: keep its defaults
        return
    if getattr(http_grid, "pull_objects", None) is pull_objects:
        http_grid.pull_objects = functools.partial(pull_objects, initial_backoff=backoff, backoff_cap=cap)


class FastPollGrid(Grid):
    def __init__(self, inner: Grid, poll_interval: float = 0.1, pull_backoff: float = 0.02) -> None:
        self.inner = inner
        self.poll_interval = poll_interval
        _fast_object_pulls(pull_backoff, cap=0.5)

    # -- delegation ---------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    # -- the one change ---------------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull every ``poll_interval`` seconds until all replies came or ``timeout``."""
        # A re-implementation of Flower's HttpGrid.send_and_receive: its source hash is checked in
        # tests/test_flower_patches.py (UPSTREAM), with the delegation of every Grid method.
        pending = set(self.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        while pending and time.monotonic() < end:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                time.sleep(self.poll_interval)
        return replies
