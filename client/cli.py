"""Site-side commands: `fedmol site ledger`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

site_app = typer.Typer(help="Commands a site runs on its own node.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(site_app, name="site")


@site_app.command("ledger")
def ledger(
    store: Annotated[Path, typer.Argument(help="The site store whose outbox ledger to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON lines.")] = False,
) -> None:
    """Show everything this site has sent: per reply, the arrays (name, shape, bytes, sha256) and metric names.

    Example: fedmol site ledger store/
    """
    from rich.console import Console
    from rich.table import Table

    from fedmol.errors import InputError

    path = store / "outbox.jsonl"
    if not path.exists():
        raise InputError(f"no outbox ledger at {path}: this site has not sent anything yet")
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if as_json:
        for e in entries:
            print(json.dumps(e))
        return
    table = Table(title=f"outbox of {store}")
    for col in ("time", "federation", "round", "phase", "arrays", "bytes", "metrics"):
        table.add_column(col)
    for e in entries:
        names = sorted({a["name"].split(".")[0] + "." + a["name"].split(".")[1] for a in e["arrays"]})
        table.add_row(e["time"], e["federation_id"], str(e["round"]), e["phase"],
                      f"{len(e['arrays'])} ({', '.join(names)})" if e["arrays"] else "-",
                      f"{e['bytes_total']:,}", ", ".join(e["metric_names"]))
    Console().print(table)


@site_app.command("worker")
def worker(
    store: Annotated[Path, typer.Argument(help="The site store this worker serves.")],
    socket: Annotated[Path | None, typer.Option(help="Unix socket path (default: STORE/worker.sock).")] = None,
    name: Annotated[str, typer.Option(help="Site name reported to the server (default: from the store).")] = "",
    fault_drill: Annotated[str, typer.Option(help="Drills only: 'nan' or 'scale:K' corrupts this site's updates "
                                             "to test the server's defences.", hidden=True)] = "",
) -> None:
    """Keep this site's data and model code warm for its SuperNode (much faster rounds).

    Start it next to the site's SuperNode and point the SuperNode at it:

      fedmol site worker /data/store &
      flower-supernode ... --node-config 'site-store="/data/store" site-worker="/data/store/worker.sock"'
    """
    import logging

    from client.worker import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(store, socket, name=name, fault=fault_drill)
