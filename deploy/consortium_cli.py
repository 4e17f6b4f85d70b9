"""`fedmol consortium ...`: what an operator does, on one machine or against a running SuperLink.

Every path argument is made absolute on entry (`_absolute`): Flower's processes run with the work folder
as their working directory, where a relative path would name another place (it once put the Flower
connection under ops/flower/ops/flower/). Every failure exits non-zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedmol.errors import InputError

if TYPE_CHECKING:
    from fedmol.deploy.launcher import LocalSuperLink

consortium_app = typer.Typer(help="Operate a consortium: credentials, sites, runs (see deploy/README.md).",
                             no_args_is_help=True)


def _absolute(path: Path) -> Path:
    """The path as given on the command line, made absolute once (``~`` expanded, symlinks resolved)."""
    return Path(path).expanduser().resolve()


def _state(workdir: Path) -> dict:
    path = workdir / "consortium.json"
    if not path.exists():
        raise InputError(f"no running consortium in {workdir}: start one with `fedmol consortium up {workdir} ...`")
    return json.loads(path.read_text())


def _link(workdir: Path) -> LocalSuperLink:
    from fedmol.deploy.launcher import LocalSuperLink

    workdir = _absolute(workdir)
    state = _state(workdir)
    link = LocalSuperLink(workdir / "flower", simulation=False, port=int(state["superlink"].rsplit(":", 1)[1]),
                          tls_dir=workdir / "pki" if state["tls"] else None, supernode_auth=state["auth"])
    if not (link.flwr_home / "config.toml").exists():  # else flwr would write an empty one and fail
        raise InputError(f"no Flower connection in {link.flwr_home}: start the consortium with "
                         f"`fedmol consortium up {workdir} --stores ...`")
    return link


@consortium_app.command("init")
def init(
    workdir: Annotated[Path, typer.Argument(help="The operator's folder (keeps the CA key: protect it).")],
    host: Annotated[list[str], typer.Option(help="Addresses sites use to reach the SuperLink (repeatable).")] = [],  # noqa: B006
) -> None:
    """Create the consortium CA and the SuperLink's TLS certificate.

    Example: fedmol consortium init ops/ --host 10.0.0.5 --host fedmol.example.org
    """
    from fedmol.deploy.pki import make_ca, make_server_cert

    pki = _absolute(workdir) / "pki"
    make_ca(pki)
    make_server_cert(pki, list(host) or None)
    typer.echo(f"CA and server certificate in {pki}. Give {pki / 'ca.crt'} to every site; keep ca.key offline.")


@consortium_app.command("add-site")
def add_site(
    workdir: Annotated[Path, typer.Argument(help="The operator's folder.")],
    name: Annotated[str, typer.Argument(help="Site name (letters, digits, - and _).")],
) -> None:
    """Make a site's SuperNode key pair (normally the site runs this itself and sends only the .pub).

    Example: fedmol consortium add-site ops/ acme
    """
    from fedmol.deploy.pki import make_site_key

    private, public = make_site_key(_absolute(workdir) / "pki", name)
    typer.echo(f"private key {private} (stays at the site), public key {public} (admit it)")


@consortium_app.command("up")
def up(
    workdir: Annotated[Path, typer.Argument(help="Folder for credentials, Flower state, MLflow and outputs.")],
    stores: Annotated[Path, typer.Option(help="Folder whose sub-folders are site stores (one SuperNode each).")],
    tls: Annotated[bool, typer.Option(help="TLS and SuperNode authentication.")] = True,
    mlflow: Annotated[bool, typer.Option(help="Start a real `mlflow server` for tracking.")] = True,
) -> None:
    """Start a SuperLink, an MLflow server and one SuperNode per site store on 127.0.0.1.

    Runs until stopped: Ctrl-C, SIGTERM or SIGHUP stop every process it started (exit status 0); if the
    SuperLink or the MLflow server dies, everything is stopped and the exit status is non-zero.

    Example: fedmol consortium up ops/ --stores sites/   (then, in another shell: fedmol consortium run ops/)
    """
    import time

    from fedmol.deploy.consortium import LocalConsortium
    from fedmol.deploy.launcher import LaunchError, Stopped, stop_on_signals

    given = workdir
    workdir, stores = _absolute(workdir), _absolute(stores)
    sites = {p.name: p for p in sorted(stores.iterdir()) if (p / "tasks.json").exists()} if stores.is_dir() else {}
    if not sites:
        raise InputError(f"no site stores in {stores} (prepare them with `fedmol prepare ... --out {stores}/NAME`)")
    cons = LocalConsortium(workdir, sites, tls=tls, auth=tls, mlflow_server=mlflow)
    try:
        with stop_on_signals(), cons:
            assert cons.link is not None
            typer.echo(f"SuperLink {cons.link.address} ({'TLS + SuperNode auth' if tls else 'insecure'}); "
                       f"MLflow {cons.mlflow.uri if cons.mlflow else 'off'}; sites: {', '.join(sites)}")
            typer.echo(f"Start a run: fedmol consortium run {given} --set num-server-rounds=10. Ctrl-C to stop.")
            reported: set[str] = set()
            while True:
                time.sleep(1)
                dead = cons.dead()
                for name in ("superlink", "mlflow"):
                    if name in dead:
                        raise LaunchError(f"the {name} exited with code {dead[name]} (logs in {workdir}); "
                                          "stopped the consortium")
                for name in sorted(set(dead) - reported):
                    typer.echo(f"warning: {name}'s SuperNode exited with code {dead[name]} "
                               f"(see {workdir / 'flower'}/supernode-*.log)", err=True)
                    reported.add(name)
    except Stopped as stop:
        typer.echo(f"{stop}: stopped every process of the consortium.")


@consortium_app.command("admit")
def admit(
    workdir: Annotated[Path, typer.Argument(help="The running consortium's folder.")],
    public_key: Annotated[Path, typer.Argument(help="The site's OpenSSH public key (.pub).")],
) -> None:
    """Admit a site: register its public key so its SuperNode may connect.

    Example: fedmol consortium admit ops/ acme.pub
    """
    public_key = _absolute(public_key)
    if not public_key.exists():
        raise InputError(f"public key {public_key} not found")
    typer.echo(_link(workdir).admit(public_key))


@consortium_app.command("sites")
def sites(workdir: Annotated[Path, typer.Argument(help="The running consortium's folder.")]) -> None:
    """List SuperNodes with their status and when it last changed (last seen)."""
    typer.echo(_link(workdir).list_supernodes())


@consortium_app.command("run")
def run(
    workdir: Annotated[Path, typer.Argument(help="The running consortium's folder.")],
    run_config: Annotated[list[str], typer.Option("--set", help="Run-config KEY=VALUE (repeatable).")] = [],  # noqa: B006
) -> None:
    """Start a federation on the running consortium, stream its log, and print at the end the round
    whose model the federation kept (and why) and the federation-gain table (each site's local-only
    model against the federated one, pairs won). n-bits defaults to the stores' fingerprint size.

    Example: fedmol consortium run ops/ --set num-server-rounds=10 --set consortium-tasks="logS:regression"
    """
    import time

    from fedmol.config import FederationConfig
    from fedmol.deploy.launcher import CONNECTION, Stopped, flwr_run, stop_on_signals
    from fedmol.deploy.report import print_gain_report
    from fedmol.deploy.stores import with_store_n_bits

    started = time.time()
    workdir = _absolute(workdir)
    state = _state(workdir)
    cfg = FederationConfig(output_dir=state["output_dir"], tracking_uri=state["mlflow"] or "",
                           min_sites=len(state["sites"])).with_overrides(
        with_store_n_bits(run_config, [Path(p) for p in state["sites"].values()]))
    link = _link(workdir)
    try:
        with stop_on_signals():  # stops the `flwr run` child instead of leaving it behind
            code = flwr_run(link, cfg.to_run_config(), on_line=print)
    except Stopped as stop:
        typer.echo(f"{stop}: stopped following the run; it goes on at the SuperLink "
                   f"(FLWR_HOME={link.flwr_home} flwr stop RUN_ID {CONNECTION})", err=True)
        raise typer.Exit(128 + stop.signum) from None
    if code == 0:
        print_gain_report(cfg.output_path, since=started)
    raise typer.Exit(code)


@consortium_app.command("status")
def status(
    workdir: Annotated[Path, typer.Argument(help="The consortium's folder.")],
    watch: Annotated[bool, typer.Option(
        "--watch", help="Refresh while the run is RUNNING; stops by itself when it ends (Ctrl-C: stop watching, "
        "exit 0).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.", min=0.1)] = 5.0,
    run_id: Annotated[str, typer.Option(help="The MLflow run to show (default: the federation run still "
                                        "RUNNING that started last, else the last one).")] = "",
    tracking_uri: Annotated[str, typer.Option(help="Where the server logged (default: the consortium's MLflow "
                                              "server, or sqlite:///<output dir>/mlflow.db without one).")] = "",
) -> None:
    """The federation's progress per site, from its MLflow run.

    Per site: the last round it answered in; its validation score (mean
    ROC-AUC / R² over its scored tasks, and the round of the model scored);
    validation loss; rejected updates; rounds it missed; when the server
    last heard from it.

    Above the table: the round, the time per round and, while the run is
    RUNNING, the time left (rounds left up to num-server-rounds x the
    median round time; patience may stop the federation sooner).
    Below: the reasons of rejected updates and the run's MLflow link.

    --watch refreshes every --interval seconds and stops by itself when
    the run is no longer RUNNING; Ctrl-C stops watching (exit 0), the
    federation goes on.

    Examples:

      fedmol consortium status ops/

      fedmol consortium status ops/ --watch --interval 10
    """
    import os

    from rich.console import Console

    from fedmol.config import FederationConfig
    from fedmol.deploy import status as view
    from fedmol.deploy.launcher import Stopped, stop_on_signals

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server that is away: fail in seconds
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    state = _state(_absolute(workdir))
    uri = tracking_uri or state.get("mlflow") or FederationConfig(output_dir=state["output_dir"]).resolved_tracking_uri
    console = Console()
    if not watch:
        client = view.client_for(uri)
        console.print(view.render(view.read_status(client, view.find_run(client, run_id).info.run_id)))
        return
    try:
        with stop_on_signals():
            client = view.client_for(uri)
            shown = view.find_run(client, run_id).info.run_id
            final = view.watch(lambda: view.read_status(client, shown), interval=interval, console=console)
    except (Stopped, KeyboardInterrupt):
        console.print("stopped watching; the federation goes on.")
        return
    console.print(f"the run is {final.status}: stopped watching.")
