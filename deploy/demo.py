"""`fedmol demo`: a small consortium from data that ships with the package, end to end.

Four simulated sites built from the demo sets embedded in fedmol (``fedmol.datasets.embedded``; no network):

* ``pharma-a`` and ``pharma-b`` each hold half of the aqueous-solubility set and share the
  consortium task ``logS`` (a consortium head, aggregated with the trunk);
* ``biotech-c`` owns a private classification task, ``soluble`` (the set's solubility class
  "medium" or "high"), on another part of the solubility set;
* ``institute-d`` owns a private regression task, ``hydration_free_energy`` (FreeSolv).

Each site prepares its own store with the shared consortium key; the federation runs in
Flower's simulation engine, where each site also trains its local-only model (cached in its store)
and the server writes the federation-gain table (local-only, federated and, where a site kept it,
personalised, per site and task); the demo adds the pooled model, trained on every site's training
folds, and prints the table, the round whose model the federation kept, the MLflow run and the
registered models (the shared one, and each site's own, `fedmol.client.site_registry`).

Reproducible: the key decides the folds and the feature positions, so the demo uses a fixed,
public demo key (`DEMO_KEY_HEX`, written to ``out/consortium.key``) unless it is given one; with
the same options two runs print the same table. Local-only and pooled use the same recipe selection
(`fedmol.models.baselines.baseline_recipes`: Adam, or the federation's own recipe, whichever is
better on the validation fold), so no side gets a choice the other does not. The table reports R²
(regression tasks) and ROC-AUC (classification) apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from fedmol.config import FederationConfig

SITES = ("pharma-a", "pharma-b", "biotech-c", "institute-d")
CONSORTIUM_TASKS = "logS:regression"
# Public on purpose (it is in the source): it makes the demo's folds, and so its table, the same on
# every run and machine. Never prepare real data with it: use `fedmol keygen`.
DEMO_KEY_HEX = hashlib.sha256(b"fedmol demo consortium key: public, for the demo data only").hexdigest()


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("fedmol-demo")
    rounds: int = 15
    local_epochs: int = 3
    batch_size: int = 32  # sites hold a few hundred compounds: small batches give enough local steps
    head_epochs: int = 3
    radius: int = 2
    n_bits: int = 2048  # a small consortium of small sets: ECFP4 at 2,048 bits (see README)
    hidden: str = "400"
    seed: int = 0
    fresh: bool = True
    key_file: Path | None = None  # None: the fixed demo key (DEMO_KEY_HEX)


def site_frames(seed: int = 0) -> dict[str, pd.DataFrame]:
    """The four sites' raw tables (wide format: smiles + their own task columns)."""
    from fedmol.datasets.embedded import freesolv, solubility

    sol = solubility()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sol))
    thirds = np.array_split(order, 3)
    a = sol.iloc[thirds[0]][["smiles", "logS"]]
    b = sol.iloc[thirds[1]][["smiles", "logS"]]
    c = sol.iloc[thirds[2]][["smiles", "solubility_class"]].copy()
    # The set's 3-class label: medium or high solubility (logS >= -3) counts as soluble.
    c["soluble"] = (c.pop("solubility_class") != "(A) low").astype(float)
    fs = freesolv()
    d = pd.DataFrame({"smiles": fs["smiles"], "hydration_free_energy": fs["expt"]})
    return dict(zip(SITES, (a, b, c, d), strict=True))


def prepare_sites(opts: DemoOptions, key_path: Path, progress: Any = None) -> dict[str, Path]:
    """Each site prepares its own table with the consortium key into ``out/sites/site-<i>``."""
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.keys import load_key
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec

    key = load_key(key_path)
    stores: dict[str, Path] = {}
    for i, (site, frame) in enumerate(site_frames(opts.seed).items()):
        out = opts.out / "sites" / f"site-{i}"
        settings = PrepareSettings(
            table=TableSpec(smiles_col="smiles", task_cols=tuple(c for c in frame.columns if c != "smiles")),
            featurize=FeaturizeSettings(radius=opts.radius, n_bits=opts.n_bits),
        )
        result = prepare_frame(frame.reset_index(drop=True), key, None, settings, workers=1, progress=False,
                               source=f"embedded:{site}")
        result.store.settings["site_name"] = site
        result.store.save(out)
        result.rejects.to_csv(out / "rejects.csv", index=False)
        stores[site] = out
        if progress:
            progress(site)
    return stores


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run everything; return the paths and the federation-gain table."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedmol.config import FederationConfig
    from fedmol.datasets.keys import load_key
    from fedmol.deploy.launcher import LocalSuperLink, flwr_run
    from fedmol.errors import InputError
    from fedmol.models.baselines import train_baselines
    from fedmol.models.report import GainTable

    console = Console()
    out = opts.out.resolve()
    if opts.key_file is not None:
        key_path = opts.key_file.expanduser().resolve()
        if opts.fresh and out in key_path.parents:
            raise InputError(f"--key-file {key_path} lies inside --out {out}, which the demo recreates: "
                             "keep the key elsewhere")
        load_key(key_path)  # a bad key file fails here, before anything is removed
    if opts.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    opts = DemoOptions(**{**opts.__dict__, "out": out})
    if opts.key_file is None:
        key_path = write_demo_key(out / "consortium.key")
    t0 = time.perf_counter()

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        prep = progress.add_task("1/4 preparing site stores", total=len(SITES))
        stores = prepare_sites(opts, key_path, progress=lambda s: progress.advance(prep))

        cfg = FederationConfig(
            num_server_rounds=opts.rounds, min_sites=len(SITES), local_epochs=opts.local_epochs,
            batch_size=opts.batch_size, head_epochs=opts.head_epochs,
            n_bits=opts.n_bits, hidden=opts.hidden, consortium_tasks=CONSORTIUM_TASKS, seed=opts.seed,
            sim_store_dir=str(out / "sites"), output_dir=str(out / "server"), table_name="demo",
            report_task_names=True, experiment="fedmol-demo", model_name="fedmol-demo",
            num_threads=1,
        )
        # The pooled reference only: the sites train their local-only models in the federation.
        base = progress.add_task("2/4 pooled baseline", total=1)
        pooled = train_baselines(stores, cfg, select=True, local=False, on_model=lambda name: progress.advance(base))

        fed = progress.add_task("3/4 federation (Flower simulation, local-only at each site)", total=opts.rounds)
        sites_task = progress.add_task("    sites answered this round", total=len(SITES))
        log_lines: list[str] = []

        def on_line(line: str) -> None:
            log_lines.append(line)
            if "[ROUND " in line:
                progress.update(fed, completed=int(line.split("[ROUND ")[1].split("/")[0]) - 1)
                progress.update(sites_task, completed=0)
            elif "aggregate_train: Received" in line:  # a round's model is aggregated
                progress.update(sites_task, completed=int(line.split("Received ")[1].split(" ")[0]))
                progress.advance(fed)

        with LocalSuperLink(out / "flower") as link:
            code = flwr_run(link, cfg.to_run_config(), on_line=on_line,
                            federation_config={"num-supernodes": len(SITES), "client-resources-num-cpus": 1})
        (out / "flower" / "run.log").write_text("\n".join(log_lines))
        outputs_path = out / "server" / "last_federation.json"
        if code != 0 or not outputs_path.exists():
            tail = "\n".join(log_lines[-30:])
            raise RuntimeError(f"the federation failed (flwr exit code {code}); log tail:\n{tail}")
        outputs = json.loads(outputs_path.read_text())
        progress.update(fed, completed=opts.rounds)
        progress.add_task("4/4 federation-gain table", total=1, completed=1)

    if not outputs.get("table"):
        raise RuntimeError(f"the federation wrote no federation-gain table (no site evaluated the final model); "
                           f"see {out / 'flower' / 'run.log'}")
    federated = GainTable.from_json(Path(outputs["table"]))  # local-only, federated, personalised
    table = pooled.merge(federated)
    table.notes.update(table_notes(cfg, outputs, key_path if opts.key_file is not None else None,
                                   personalised="personalised" in table.values))
    table.to_json(out / "federation_gain.json")
    table.to_markdown(out / "federation_gain.md")
    table.print(console)
    console.print(f"\n[bold]Done in {time.perf_counter() - t0:.0f} s.[/]")
    for line in next_steps(cfg, outputs, stores, key_path):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"Everything is in {out}")
    return {**outputs, "gain_table": str(out / "federation_gain.json")}


def table_notes(cfg: FederationConfig, outputs: dict[str, Any], key_path: Path | None, *,
                personalised: bool = False) -> dict[str, str]:
    """What the demo's table rests on, in words: the key (None: the demo key), where each column
    comes from, the recipes."""
    from fedmol.models.baselines import baseline_recipes

    recipes = "; ".join(f"{name}: {tc.optimizer}, lr {tc.lr:g}, batch {tc.batch_size}, at most {tc.epochs} epochs"
                        for name, tc in baseline_recipes(cfg).items())
    notes = {
        "key": "the public demo key" if key_path is None else str(key_path),
        "local": "each site's local-only model on its own folds, trained by the site in the federation "
                 "(cached in its store) and reported by the federation",
        "federated": "the shared model of the round the federation kept (best federated validation score), "
                     "with each site's private heads of that round",
        "pooled": "one model on every site's training folds, trained by the demo",
        "baselines": "local-only and pooled each keep the recipe better on the validation fold of "
                     f"[{recipes}] (early stopping on the validation fold)",
        "federation": str(outputs.get("stop_reason", "")),
    }
    if personalised:
        notes["personalised"] = ("where a site kept its fine-tuned copy of the federated model (chosen on its "
                                 "validation fold)")
    return notes


def next_steps(cfg: FederationConfig, outputs: dict[str, Any], stores: dict[str, Path], key_path: Path) -> list[str]:
    """The lines printed at the end of the demo: the round kept, MLflow, the registered models, how
    to score. A shared model without heads (every task private) predicts nothing, so scoring then
    points to a site's own model (`fedmol.client.site_registry`: ``models:/fedmol-site-<site>``)."""
    from fedmol.client.site_registry import SITE_MODEL_RECORD
    from fedmol.deploy.report import selection_line
    from fedmol.models.site_model import federation_dir

    uri = outputs.get("tracking_uri", "")
    lines = [line] if (line := selection_line(outputs)) else []
    lines.append(f"MLflow run:        {outputs.get('mlflow_run_id', '?')} in {uri}")
    if outputs.get("model_uri"):
        lines.append(f"Registered model:  {outputs['model_uri']} (the shared model)")
    lines.append(f"Open the MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000")
    site_models: dict[str, dict[str, Any]] = {}
    for site, store in stores.items():
        record = federation_dir(store, str(outputs.get("federation_id", ""))) / SITE_MODEL_RECORD
        if record.exists():
            site_models[site] = json.loads(record.read_text())
    for site, rec in site_models.items():
        lines.append(f"{site}'s own model: {rec['model_uri']} in {rec['tracking_uri']}")
    key = f"--key-file {key_path} --out predictions.csv"
    if cfg.consortium_task_list:
        lines.append(f"Score molecules:   fedmol score INPUT.csv --model {outputs['model_dir']} {key}")
    else:
        lines.append("The shared model has no heads (every task is private): it predicts nothing on its own; "
                     + ("score with a site's own model" if site_models
                        else "no site registered its own model (register-model=false)"))
    if site_models:
        site, rec = next(iter(site_models.items()))
        lines.append(f"Score with {site}'s own model (its private tasks too): fedmol score INPUT.csv "
                     f"--model {rec['model_uri']} --tracking-uri {rec['tracking_uri']} {key}")
    return lines


def write_demo_key(path: Path) -> Path:
    """Write the fixed, public demo key to ``path`` (mode 0600) with a comment saying what it is."""
    text = ("# the fedmol demo key: public (it is in fedmol's source), for the demo data only; "
            "make a real key with `fedmol keygen`\n" + DEMO_KEY_HEX + "\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path
