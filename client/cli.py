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
    runtime: Annotated[str, typer.Option(help="The Runtime API of this site's SuperNode, started with "
                                         "`--isolation process --port PORT`: 127.0.0.1:PORT.")] = "127.0.0.1:9094",
    root_certificates: Annotated[Path | None, typer.Option(
        help="CA certificate of the Runtime API, if the SuperNode serves it over TLS (--ssl-certfile).")] = None,
    auth_secret_file: Annotated[Path | None, typer.Option(
        help="The SuperNode's --superexec-auth-secret-file, if it was started with one.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between asks for a new task when idle.")] = 0.05,
) -> None:
    """Run this site's ClientApp for its SuperNode in one warm process (fast rounds).

    Flower's default starts a fresh ClientApp process, re-importing torch and reloading the site
    store, for every message. Start the SuperNode with `--isolation process` and this next to it:

      fedmol-supernode ... --isolation process --port 9094 --node-config 'site-store="/data/store"'
      fedmol site worker --runtime 127.0.0.1:9094

    (fedmol-supernode is flower-supernode with a 0.25 s instead of 3 s idle wait.)

    It runs the fedmol installed on this site and refuses runs of any other app or version.
    """
    import logging

    from fedmol.client.worker import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    serve(runtime, poll=poll, root_certificates=root_certificates, auth_secret_file=auth_secret_file)
