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


@site_app.command("audit")
def audit(
    store: Annotated[Path, typer.Argument(help="The site store to audit (its models and its compounds).")],
    federation: Annotated[str | None, typer.Option(
        "--federation", help="The federation whose models to audit (default: the newest in the store); with "
        "--model, the federation whose run config (folds, recipe) to use.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Audit this model instead: a model folder, a models:/NAME/VERSION URI of the site's "
        "registry, a state_dict .pt or shared arrays .npz (with --federation's run config).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="The site's own MLflow: log the results there too (experiment fedmol-site-audit) "
        "and resolve models:/ URIs there (default: only the files; models:/ from sqlite:///<store>/mlflow.db). "
        "Never the server's.")] = None,
    no_lira: Annotated[bool, typer.Option("--no-lira", help="Skip the likelihood-ratio attack "
                                          "(no reference models are trained).")] = False,
    lira_models: Annotated[int, typer.Option(help="LiRA reference models (each compound IN for half); more: a "
                                             "stronger attack, in proportion more time.")] = 4,
    lira_epochs: Annotated[int, typer.Option(help="Training epochs of each reference model.")] = 10,
    lira_train_size: Annotated[int, typer.Option(
        help="Compounds each reference model trains on (0: as many as the site's training folds).")] = 0,
    max_compounds: Annotated[int, typer.Option(help="At most this many members and as many non-members.")] = 1000,
    canaries: Annotated[int, typer.Option(help="Random compounds with random labels inserted into a local "
                                          "training copy; their exposure is reported (0: none).")] = 0,
    canary_references: Annotated[int, typer.Option(help="Reference canaries (not inserted) the canaries are "
                                                   "ranked among: exposure at most log2(R+1) bits.")] = 1023,
    canary_epochs: Annotated[int, typer.Option(help="Epochs of the site's local training on the copy.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the samples, the reference models and the canaries.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (default: the federation's run config).")] = "",
) -> None:
    """Measure how well an attacker tells this site's training compounds from its held-out ones.

    Run at the site on its own store; nothing is sent anywhere. It audits
    the federation's shared model as the site received it in the final
    evaluation (with the site's private heads of that round) and the
    site's personalised model when it personalised. Members: the training
    folds (a random subsample as large as the non-members); non-members:
    the test fold; the validation fold is in neither.

    Attacks: loss threshold, confidence in the true labels, and LiRA with
    reference models trained here on random halves of the audited
    compounds. Each reports ROC-AUC and the TPR at 1 % and 0.1 % FPR;
    0.5 and the FPR itself are what guessing gets.

    Results: <store>/privacy/audit-<UTC time>.json and a ROC plot (PNG)
    beside it; with --tracking-uri also a run in the site's own MLflow.

    Examples:

      fedmol site audit store/

      fedmol site audit store/ --canaries 20 --tracking-uri sqlite:///store/mlflow.db

      fedmol site audit store/ --model models:/fedmol-site-acme/3 --no-lira
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedmol.client.audit import AuditSettings, run_audit, summary_table

    settings = AuditSettings(lira_models=0 if no_lira else lira_models, lira_epochs=lira_epochs,
                             lira_train_size=lira_train_size, max_compounds=max_compounds, canaries=canaries,
                             canary_references=canary_references, canary_epochs=canary_epochs, seed=seed,
                             device=device)
    console = Console()
    tasks: dict[str, object] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        def on_step(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)  # type: ignore[arg-type]

        outcome = run_audit(store, federation=federation, model=model, tracking_uri=tracking_uri,
                            settings=settings, on_step=on_step)
    console.print(summary_table(outcome.report))
    console.print(f"results: {outcome.json_path}")
    if outcome.png_path is not None:
        console.print(f"plot:    {outcome.png_path}")
    if outcome.mlflow_run:
        console.print(f"MLflow:  run {outcome.mlflow_run} in {tracking_uri} (experiment fedmol-site-audit)")


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
