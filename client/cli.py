"""Site-side commands: `fedmol site ledger`, `fedmol site report`, `fedmol site worker`."""

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
    full: Annotated[bool, typer.Option("--full", help="Every array of every reply: name, shape, dtype, bytes, "
                                       "full sha256; and the metric and report keys sent.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The raw ledger: one JSON object per reply.")] = False,
) -> None:
    """Show everything this site has sent, from its outbox ledger (<store>/outbox.jsonl).

    Default: one line per reply, within 80 columns:
    when (month-day time), federation, round, phase (train replies carry
    the model update, evaluate replies only metrics), number of arrays,
    bytes, and a digest that names the update (sha256 of the arrays'
    sha256s in the order sent, first 12 characters).

    --full: every array of every reply with its whole sha256, one row per
    array, as wide as that takes (in a narrow terminal: | less -S).

    --json: the raw ledger, one JSON object per reply, for scripts.

    Examples:

      fedmol site ledger store/

      fedmol site ledger store/ --full

      fedmol site ledger store/ --json | jq .bytes_total
    """
    from rich.console import Console

    from fedmol.client.ledger import compact_lines, print_full, read_ledger

    entries = read_ledger(store)
    if as_json:
        for e in entries:
            print(json.dumps(e))
    elif full:
        print_full(entries, str(store), Console())
    else:
        for line in compact_lines(entries):
            print(line)


@site_app.command("report")
def report(
    store: Annotated[Path, typer.Argument(help="The site store to report on.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the report to this file (Markdown: its plots "
                                             "are copied beside it). Default: print it.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md (Markdown) or html (one self-contained page).")] = "md",
    federation: Annotated[str | None, typer.Option("--federation", help="Only this federation id.")] = None,
) -> None:
    """A privacy report of this site for its legal team, from the site's own files; nothing is sent.

    It holds what left the site by federation and round (from the outbox ledger: bytes, array names
    and dtypes, metric names and report keys), whether secure aggregation protected the updates and
    their transport, the newest membership-inference audit (fedmol site audit) with its plot, the
    per-compound DP budget spent per federation, the fedmol and flwr versions and the FAB hash that
    ran, and the store's public preparation settings.

    Examples:

      fedmol site report store/ --out privacy-report.md

      fedmol site report store/ --format html --out privacy-report.html
    """
    from fedmol.client.privacy_report import write_report

    text = write_report(store, out=out, fmt=fmt, federation=federation)
    if out is None:
        print(text, end="")
    else:
        print(f"wrote {out}")


@site_app.command("worker")
def worker(
    runtime: Annotated[str, typer.Option(help="The Runtime API of this site's SuperNode, started with "
                                         "`--isolation process --port PORT`: 127.0.0.1:PORT.")] = "127.0.0.1:9094",
    root_certificates: Annotated[Path | None, typer.Option(
        help="CA certificate of the Runtime API, if the SuperNode serves it over TLS (--ssl-certfile).")] = None,
    auth_secret_file: Annotated[Path | None, typer.Option(
        help="The SuperNode's --superexec-auth-secret-file, if it was started with one.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between asks for a new task when idle.")] = 0.05,
    queue_size: Annotated[int, typer.Option(
        help="Tasks that may wait while one runs; one more is refused at once, with the reason.")] = 4,
) -> None:
    """Run this site's ClientApp for its SuperNode in one warm process (fast rounds).

    Flower's default starts a fresh ClientApp process, re-importing torch and reloading the site
    store, for every message. Start the SuperNode with `--isolation process` and this next to it:

      fedmol-supernode ... --isolation process --port 9094 --node-config 'site-store="/data/store"'
      fedmol site worker --runtime 127.0.0.1:9094

    (fedmol-supernode is flower-supernode with a 0.25 s instead of 3 s idle wait.)

    It runs the fedmol installed on this site, and only runs whose app this site approved: the
    installed fedmol's own, or one listed in <site store>/approved-apps.txt (a refused run's log
    line gives the line to add). SIGTERM fails the running task with a reply that says so, and exits 0.
    """
    import logging
    import os

    from fedmol.client.worker import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    reason = serve(runtime, poll=poll, queue_size=queue_size, root_certificates=root_certificates,
                   auth_secret_file=auth_secret_file)
    logging.getLogger("fedmol.client").info("%s: exiting", reason)
    logging.shutdown()
    os._exit(0)  # the running task was reported failed; its computation is not waited for
