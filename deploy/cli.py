"""Operator commands: `fedmol demo`, `fedmol simulate` and `fedmol consortium ...`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from fedmol.deploy.consortium_cli import consortium_app

    app.command("demo")(demo)
    app.command("simulate")(simulate)
    app.add_typer(consortium_app, name="consortium")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for stores, MLflow, checkpoints and tables (recreated).")] = Path(
        "fedmol-demo"),
    rounds: Annotated[int, typer.Option(min=1, help="Federation rounds.")] = 15,
    local_epochs: Annotated[int, typer.Option(min=1, help="Epochs each site trains per round.")] = 3,
    radius: Annotated[int, typer.Option(help="Morgan radius of the fingerprint (2 = ECFP4).")] = 2,
    n_bits: Annotated[int, typer.Option(help="Fingerprint size (bits).")] = 2048,
    hidden: Annotated[str, typer.Option(help="Trunk layer sizes, comma-separated.")] = "400",
    seed: Annotated[int, typer.Option(help="Seed of site splits, model init and shuffling.")] = 0,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="Consortium key to prepare the sites with (default: the fixed, public demo key, "
                           "so the table is the same on every run).")] = None,
) -> None:
    """Run the federated demo on data that ships with fedmol (no download, a few minutes on 2 CPUs).

    Four simulated sites (two sharing the consortium task logS, one with a private solubility class,
    one with private hydration free energies) prepare their stores with a shared consortium key,
    federate in Flower's simulation engine, and the federated model is compared with each site's
    local-only model (trained by the site in the federation) and a pooled model, both with the same
    recipe selection (Adam or the federation's recipe, the better on validation); R² and ROC-AUC
    are reported apart. It prints the round whose model the federation kept, and the registered
    models: the shared one and each site's own. The demo key is fixed and public (the table is
    reproducible); --key-file uses yours.

    Example: fedmol demo --rounds 10 --out /tmp/demo
    """
    from fedmol.deploy.demo import DemoOptions, run_demo

    run_demo(DemoOptions(out=out, rounds=rounds, local_epochs=local_epochs, radius=radius, n_bits=n_bits,
                         hidden=hidden, seed=seed, key_file=key_file))


def simulate(
    stores: Annotated[Path, typer.Argument(help="Folder of site stores (one subfolder per site, made by "
                                                "fedmol prepare); the subfolder names are the site names.")],
    out: Annotated[Path, typer.Option(help="Server output folder (checkpoints, MLflow store, tables).")] = Path(
        "fedmol-server"),
    run_config: Annotated[list[str], typer.Option("--set", help="Run-config override KEY=VALUE (repeatable), "
                                                  "e.g. --set num-server-rounds=10.")] = [],  # noqa: B006
) -> None:
    """Run a federation over prepared site stores in Flower's simulation engine (one process per site).

    STORES is a folder whose subfolders are site stores (fedmol prepare --out STORES/acme): one
    simulated site each, named after its subfolder (or the store's site_name setting), taken in
    the natural order of the names. Other files and folders in STORES are ignored.

    Every KEY is a key of \\[tool.flwr.app.config] in pyproject.toml. n-bits defaults to the
    stores' fingerprint size (fedmol prepare --n-bits). At the end it prints the
    round whose model the federation kept (the best validation round) and why, and the
    federation-gain table: per site, each site's local-only model against the federated one (and
    its personalised one, where it chose so) on its test fold, and the (site, task) pairs won.

    Example: fedmol simulate sites/ --set num-server-rounds=10 --set consortium-tasks="NR-AR:classification"
    """
    from fedmol.config import FederationConfig
    from fedmol.datasets.store import store_folders
    from fedmol.deploy.launcher import LocalSuperLink, flwr_run
    from fedmol.deploy.stores import with_store_n_bits
    from fedmol.errors import InputError

    sites = store_folders(stores)
    if not sites:
        what = "is not a folder" if not stores.is_dir() else "holds no site store"
        raise InputError(f"{stores} {what}: give a folder with one subfolder per site, each made by "
                         "`fedmol prepare ... --out FOLDER/SITE` (features.npz, labels.npz, folds.npy, tasks.json, "
                         "settings.json)")
    print(f"{len(sites)} sites: {', '.join(p.name for p in sites)}", flush=True)
    cfg = FederationConfig(sim_store_dir=str(stores.resolve()), output_dir=str(out.resolve()),
                           min_sites=len(sites)).with_overrides(with_store_n_bits(run_config, sites))
    started = time.time()
    with LocalSuperLink(out.resolve() / "flower") as link:
        code = flwr_run(link, cfg.to_run_config(), on_line=print,
                        federation_config={"num-supernodes": len(sites), "client-resources-num-cpus": 1})
    if code == 0:
        from fedmol.deploy.report import print_gain_report

        print_gain_report(cfg.output_path, since=started)
    raise typer.Exit(code)

