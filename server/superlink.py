"""`fedmol-superlink`: Flower's `flower-superlink`, with the messages' arrays kept in memory.

Flower 1.41's SuperLink keeps everything in the database it is given (``--database``): its link
state (registered SuperNodes and their public keys, runs, message headers) and its object store
(the arrays of every message, `flwr.supercore.object_store.SqlObjectStore`). With a database file,
which an operator wants so that a restart keeps the sites' registrations, every model on its way
to a site and every update on its way back is written to SQLite and read back: at the default
32,768 x 400 model an int8 round's overhead was 9.8 s with the file, 7.6-9.6 s with the arrays in
memory, 4.0-4.5 s with Flower's in-memory database for everything (benchmarks/results/
rounds_32k_download.md).

This entry point takes exactly `flower-superlink`'s arguments and keeps the object store in memory
(`patch_object_store`; Flower's own in-memory store, its default without ``--database``) while the
link state stays in the database file. What a restart loses is only what it loses anyway: the
arrays of messages in flight (a round that was running fails; ``resume="latest"`` continues from
the server's checkpoint). ``FEDMOL_SUPERLINK_OBJECTS=database`` keeps Flower's behaviour. Its log
lines carry their time (colours only on a terminal).

    fedmol-superlink --ssl-ca-certfile ca.crt ... --database state/superlink.db
"""

from __future__ import annotations

import os
import sys
from typing import Any

OBJECTS_ENV = "FEDMOL_SUPERLINK_OBJECTS"  # "memory" (default) or "database" (Flower's behaviour)


def _in_memory_object_store_factory(database: str = "", *args: Any, **kwargs: Any) -> Any:
    """Stands in for `ObjectStoreFactory(database)` in the SuperLink's configuration: Flower's
    in-memory object store, whatever database the link state uses."""
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory

    return ObjectStoreFactory(FLWR_IN_MEMORY_DB_NAME)


def patch_object_store() -> bool:
    """Make this process's SuperLink keep message arrays in memory; False if this Flower configures
    its stores another way (then Flower's own behaviour stays)."""
    # Patch of a Flower internal: contract tests in tests/test_flower_patches.py (section 6);
    # what upstream would need: deploy/README.md, "Patches of Flower and what upstream would need".
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink import config_loader

    if getattr(config_loader, "ObjectStoreFactory", None) is not ObjectStoreFactory:
        return False
    config_loader.ObjectStoreFactory = _in_memory_object_store_factory  # type: ignore[assignment,misc]
    return True


def main() -> None:
    objects = os.environ.get(OBJECTS_ENV, "memory").strip().lower()
    if objects not in ("memory", "database"):
        sys.exit(f"{OBJECTS_ENV} must be memory or database, got {objects!r}")
    if objects == "memory" and not patch_object_store():
        print("fedmol-superlink: this Flower version configures its object store another way; "
              "running it unchanged (message arrays in the --database)", file=sys.stderr)
    from flwr.superlink.cli import flower_superlink

    from fedmol.flower_entry import run_flower_command

    run_flower_command("flower-superlink", flower_superlink)


if __name__ == "__main__":
    main()
