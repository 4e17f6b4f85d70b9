"""Federation gain: local-only vs federated vs pooled, on two public sets split into sites.

    .venv/bin/python benchmarks/federation_gain.py --seed 0 1 2  # both sets, 3 seeds, ~40 min (+5 min first prep)
    .venv/bin/python benchmarks/federation_gain.py            # one seed (0), ~15 min
    .venv/bin/python benchmarks/federation_gain.py --quick    # small subsets, a few rounds: smoke test
    .venv/bin/python benchmarks/federation_gain.py --only tox21

With several seeds (each: another site split, initialisation and shuffling), every set runs once
per seed; the reported means are over the seeds, the pairs are summed over them, and the targets
are judged on those (each seed's own verdict is listed too). The margins at stake on chembl_5thresh
are smaller than one seed's noise, so one seed cannot settle them either way.

What it does, per set:

1. **Prepare once** (fedmol.datasets.prepare) with the fixed public benchmark key of
   `benchmarks/baselines.py`, ECFP4 (radius 2) folded to 2,048 bits, scaffold folds (test fold 0,
   validation fold 1). The prepared store is cached under ``--work`` (preparation of
   chembl_5thresh takes ~5 min on 2 cores; the cache makes reruns cheap).
2. **Split into sites** (fedmol.datasets.partition) and save them as ``site-0 .. site-N-1``:

   * **tox21**: 4 sites by scaffold cluster (`by_scaffold`: no scaffold at two sites); all 12
     tasks are consortium tasks (shared heads, ``consortium-tasks=NAME:classification,...``).
     Metric: ROC-AUC.
   * **chembl_5thresh**: 5 sites that each own a disjoint set of targets (`by_task`, over the
     302 targets that meet the training quorum in the whole set); private heads only. Metric: R².

3. **Baselines** with `fedmol.models.baselines.train_baselines` (the same code the demo uses): a
   *local-only* model per site and a *pooled* model on every site's training folds, each tested
   on each site's test fold. Two training recipes are run and, per approach, the one with the
   better mean on the **validation** fold is reported (``baseline recipe`` in the results): the
   library default (Adam lr 1e-3, lr x0.3 half-way, early stopping on validation loss) and
   `fedmol.models.baselines.federation_recipe` (the centralised counterpart of the federation: the sites'
   own optimiser, lr, momentum, batch size and per-round lr decay for rounds x local-epochs
   epochs, plus early stopping on the validation loss, which the federation does not get). The
   federation's settings were chosen on the validation fold too, so both sides are chosen alike.
   Until 2026-11-22 the recipe better on the *test* fold was reported, which gives the baselines
   a choice the federation never gets; that stricter comparison is still computed and listed
   ("against the baseline recipe that is better on the test fold", ``best_on_test_baselines``).
4. **Federation** in Flower's simulation engine (fedmol.deploy.launcher.LocalSuperLink + flwr_run,
   1 CPU per virtual client, ``num-threads=1``); the server writes its last round's per-site,
   per-task test metrics as a GainTable (``outputs["table"]``), merged here with the baselines.

Fairness: every approach uses the same model spec (ECFP4 2,048 bits binary, hidden 1000,
dropout 0.5: the colleague's best Tox21 setting in benchmarks/baselines.py; chembl_5thresh uses
hidden 2000, for every approach alike, chosen on validation as described below), the same folds, and
the same scoring quorum: a task is scored at a site when the site's test fold has >= 10
positives and >= 10 negatives (regression: >= 10 exact values), MELLODDY's per-fold evaluation
quorum, set with the run-config key ``eval-min-labels=10`` for the sites and the baselines alike.
Means per site are over the tasks every approach scored there (fedmol.models.report.GainTable); the
"mean" of a set is the mean over sites. The federated model is the one after the last round (no
model selection on validation, unlike the baselines); for chembl_5thresh each site then
personalises it (``finetune-epochs``, below): it fine-tunes a copy of the final model (trunk and
its private heads) on its own training folds, with early stopping on its validation fold, and
reports that model. The fine-tuned trunk never leaves the site (the final evaluate reply carries
no arrays); the shared model is unchanged. "federated" for chembl_5thresh is that personalised
model ("FedAvg + local fine-tuning"); the plain federated model's means are in
``federated_final_round_means`` (``test_federated_score``).

Federation settings (run-config keys), chosen on the validation fold with an in-process FedAvg
emulation of `fedmol.client.site.SiteNode` before running it in Flower:

* tox21: FedAvg, SGD momentum 0.9, lr 1.0 x 0.92 per round (``lr-decay``), 2 local epochs,
  batch 128, 24 rounds. With a constant lr the federation peaked near 0.788 at round ~25 and then
  overfit (0.784 at 40); lr 0.05 (the default) learnt far too slowly (0.50 after 20 rounds); Adam
  restarted every round reached 0.70. Measured (test fold, ``--seed 0 1 2``, 2026-11-22):
  local-only 0.7600 / 0.7715 / 0.7619, federated 0.7894 / 0.7965 / 0.7870, pooled 0.7803 /
  0.8042 / 0.7859; mean 0.7645 / 0.7910 / 0.7901, 79/106 pairs (75%): both targets met at every
  seed.
* chembl_5thresh: hidden 2000 (every approach), FedAvg, SGD momentum 0.9, lr 0.1, 2 local
  epochs, batch 128, 20 rounds (lr 0.5 with decay was unstable: R² 0.06 after 20 rounds),
  ``head-epochs=0``, and personalisation ``finetune-epochs=20 finetune-lr=0.03
  finetune-patience=5``. Validation fold numbers of the emulation (R², mean over sites of the
  mean over tasks; "vs local" is over the tasks both scored, against the local-only Adam recipe,
  validation mean 0.3087 at hidden 1000), first at hidden 1000:

  - ``head-epochs=1`` (before: the private heads are refitted with a fresh Adam for an epoch on
    every received trunk and kept, i.e. an extra Adam epoch every round now that a site evaluates
    every round) overfits: the 15-round Flower run's validation mean peaked at 0.263 in round 9
    and fell to 0.231 in round 15 (test 0.188). With ``head-epochs=0`` (heads trained only in
    the local epochs) the same federation rises steadily: 0.226 after 5 rounds, 0.280 after 10,
    0.295 after 15, 0.297 after 19-20. Hence 20 rounds, no refit.
  - The plain federated model after 20 rounds: 0.3017 vs local 0.3087, better on 122/288 pairs
    (42%); with its heads refitted for an epoch 0.3087 (45%). Trunk sharing alone does not beat a
    site's own early-stopped model here.
  - Personalisation from it (early stopping on the validation loss, patience 3 unless noted):
    Adam lr 1e-3 hurt (site-0 0.239 -> 0.220; lr 3e-4 about neutral); SGD lr 0.1: 0.3043 (44%);
    SGD lr 0.01: 0.3149 (52%); SGD lr 0.03: 0.3156 (52%); **SGD lr 0.03, patience 5: 0.3160
    (151/288, 52%)**, chosen; Adam lr 1e-4: 0.3145 (51%); one head-refit epoch first, then SGD
    0.03: 0.3145 (51%). The validation gain over local-only is small (+0.007, within seed noise
    of about 0.015), so the test-fold targets are a close call, not a certainty.

  - Hidden 2000 (the same federation and personalisation): local-only 0.3072 on validation (no
    gain from width alone), plain federated 0.3118 (137/288 pairs, 48%), **personalised 0.3231
    (169/288, 59%)**: the wider trunk is where sharing pays (+0.016 over local-only on
    validation, against +0.007 at hidden 1000), so chembl_5thresh uses hidden 2000.

  Measured with these settings (test fold, hidden 2000, ``--seed 0 1 2``, 2026-11-22; the
  baseline recipes chosen on validation; results/federation_gain.*):

  ====  ==========  ======================  ======  ==============
  seed  local-only  federated + personal.   pooled  pairs won
  ====  ==========  ======================  ======  ==============
  0     0.2462      0.2522 (plain 0.2450)   0.2376  157/278 (56%)
  1     0.2553      0.2500 (plain 0.2382)   0.2493  147/278 (53%)
  2     0.2476      0.2640 (plain 0.2493)   0.2704  158/278 (57%)
  mean  0.2497      0.2554                  0.2524  462/834 (55%)
  ====  ==========  ======================  ======  ==============

  Both targets are met on the mean over the three seeds (+0.006 mean R², 55% of pairs), and the
  majority target at every seed; no-negative-transfer misses at seed 1 (-0.005). The local-only
  recipe chosen on validation is the one better on the test fold at all three seeds, so the
  stricter comparison gives the same local-only mean; only the pooled reference changes (0.2603).
  "plain" is the federated model before each site's fine-tuning (server log; a mean over all of
  a site's scored tasks, so not exactly the table's tasks): below local-only at seeds 0 and 1,
  above it at seed 2; the personalisation adds 0.007 to 0.015. The same seed-0 settings gave
  federated 0.2533 in an earlier run (thread timing in the simulation makes runs differ slightly).

  Measured at hidden 1000 (test fold, seed 0, 2026-11-22): local-only 0.2623 (Adam recipe),
  federated + personalisation 0.2471 (plain federated model 0.2357, server log), pooled 0.2533;
  personalised better than local-only on 141/278 pairs (51%). Per site: better at site-0/1/2
  (+0.014, +0.021, +0.025), worse at site-3 (-0.051) and site-4 (-0.085), where the pooled model
  is also far below local-only (site-4: 0.107 vs 0.177) while validation showed no such gap.
  Even centralising all data (pooled) is below local-only on this test fold. The same local-only
  recipe scored 0.2459 in the previous run (a different random initialisation: the run before
  built every model with an extra placeholder head), the size of the seed noise.

Reported per set: mean test metric of local-only, federated and pooled, the federated/pooled
ratio, and the share of (site, task) pairs scored by every approach where federated beats
local-only. Outputs: ``benchmarks/results/federation_gain.json`` and ``.md`` (with every per-task
value), ``federation_gain.png`` (per-site means). Every Flower process started here is stopped
before the script returns.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    DATA_DIR,
    RESULTS,
    flower_leftovers,
    log,
    prepared_store,
    quiet_warnings,
    run_flower,
    save_sites,
)

TOX21_TASKS = ["NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD", "NR-PPAR-gamma",
               "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53"]
MODEL = {"n_bits": 2048, "hidden": "1000", "dropout": 0.5, "input_transform": "binary"}
SETS: dict[str, dict[str, Any]] = {
    "tox21": {
        "file": "tox21.csv.gz", "id_col": "mol_id", "sites": 4, "split": "by_scaffold", "metric": "ROC-AUC",
        "consortium": ",".join(f"{t}:classification" for t in TOX21_TASKS),
        "federation": {"strategy": "fedavg", "optimizer": "sgd", "lr": 1.0, "lr_decay": 0.92, "momentum": 0.9,
                       "local_epochs": 2, "batch_size": 128, "num_server_rounds": 24},
        "quick": {"nrows": 2500, "num_server_rounds": 3, "baseline_epochs": 4},
    },
    "chembl_5thresh": {
        "file": "chembl_5thresh.csv.gz", "id_col": None, "sites": 5, "split": "by_task", "metric": "R²",
        "consortium": "", "model": {"hidden": "2000"},
        "federation": {"strategy": "fedavg", "optimizer": "sgd", "lr": 0.1, "lr_decay": 1.0, "momentum": 0.9,
                       "local_epochs": 2, "batch_size": 128, "num_server_rounds": 20, "head_epochs": 0,
                       "finetune_epochs": 20, "finetune_lr": 0.03, "finetune_patience": 5},
        "quick": {"nrows": 4000, "num_server_rounds": 2, "baseline_epochs": 3},
    },
}
BASELINE_EPOCHS = 25  # the Adam recipe's maximum (early stopping usually ends it sooner)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="small subsets, 2-3 rounds (~2 min): a smoke test")
    p.add_argument("--only", choices=sorted(SETS), action="append", help="run only this set (repeatable)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedmol-bench",
                   help="prepared-store cache, site stores, Flower and server outputs")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON/MD/PNG results go")
    p.add_argument("--seed", type=int, nargs="+", default=[0], dest="seeds", metavar="SEED",
                   help="one or more seeds (site split, initialisation, shuffling); with several, each set "
                        "runs once per seed and the targets are judged on the mean over the seeds "
                        "(default: 0)")
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seed: each seed once, not {args.seeds}")
    return args


def split_sites(store: Any, spec: dict[str, Any], seed: int) -> list[Any]:
    from fedmol.datasets.partition import by_scaffold, by_task

    if spec["split"] == "by_scaffold":
        return [store.subset(rows) for rows in by_scaffold(store, spec["sites"], seed)]
    return [store.subset(rows, names) for rows, names in by_task(store, spec["sites"], seed)]


def pair_stats(table: Any) -> dict[str, Any]:
    """(site, task) pairs every approach scored: how many, and where federated beats local-only."""
    won = lost = tied = 0
    for site in table.sites:
        for task in table.common_tasks(site):
            f, l_ = table.values["federated"][site][task], table.values["local"][site][task]
            won += f > l_
            lost += f < l_
            tied += f == l_
    n = won + lost + tied
    return {"pairs": n, "federated_wins": won, "local_wins": lost, "ties": tied,
            "share_federated_wins": won / n if n else float("nan")}


def approach_means(table: Any) -> dict[str, float]:
    """Mean over sites of local-only, federated and pooled in a merged GainTable."""
    summary = table.summary()
    return {a: summary[a]["mean_over_sites"] for a in ("local", "federated", "pooled")}


def judge(name: str, means: dict[str, float], pairs: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets for set ``name`` from mean test metrics and pair counts."""
    if name == "tox21":
        return {"federated >= 0.98 x pooled": means["federated"] >= 0.98 * means["pooled"],
                "federated >= local + 0.02": means["federated"] >= means["local"] + 0.02}
    return {"no negative transfer (federated >= local)": means["federated"] >= means["local"],
            "federated better on a majority of pairs": pairs["share_federated_wins"] > 0.5}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One set's runs at several seeds: means over the seeds, pairs summed, targets judged on those."""
    if len(runs) == 1:
        return runs[0]
    name = runs[0]["set"]

    def over_seeds(get: Any) -> dict[str, float]:
        return {a: sum(get(r)[a] for r in runs) / len(runs) for a in ("local", "federated", "pooled")}

    def summed(get: Any) -> dict[str, Any]:
        won = sum(get(r)["federated_wins"] for r in runs)
        n = sum(get(r)["pairs"] for r in runs)
        return {"pairs": n, "federated_wins": won, "local_wins": sum(get(r)["local_wins"] for r in runs),
                "ties": sum(get(r)["ties"] for r in runs), "share_federated_wins": won / n if n else float("nan")}

    means, pairs = over_seeds(lambda r: r["means"]), summed(lambda r: r["pairs"])
    strict_means = over_seeds(lambda r: r["best_on_test_baselines"]["means"])
    strict_pairs = summed(lambda r: r["best_on_test_baselines"]["pairs"])
    return {
        "set": name, "seeds": [r["seed"] for r in runs], "file": runs[0]["file"], "metric": runs[0]["metric"],
        "quick": runs[0]["quick"], "means": means,
        "federated_over_pooled": means["federated"] / means["pooled"] if means["pooled"] else float("nan"),
        "pairs": pairs, "targets": judge(name, means, pairs),
        "per_seed": {str(r["seed"]): {"means": r["means"], "pairs": r["pairs"], "targets": r["targets"]}
                     for r in runs},
        "best_on_test_baselines": {"means": strict_means, "pairs": strict_pairs,
                                   "targets": judge(name, strict_means, strict_pairs)},
        "seconds": {"total": sum(r["seconds"]["total"] for r in runs)},
        "runs": runs,
    }


def federation_config(name: str, n_sites: int, sites_dir: Path, output_dir: Path, *, quick: bool, seed: int,
                      experiment: str, run_name: str) -> Any:
    """The federation of set ``name`` as this benchmark runs it (model, rounds, optimiser, quorum)."""
    from fedmol.config import FederationConfig

    spec = SETS[name]
    fed = dict(spec["federation"])
    if quick and "num_server_rounds" in spec["quick"]:
        fed["num_server_rounds"] = spec["quick"]["num_server_rounds"]
    return FederationConfig(
        **{**MODEL, **spec.get("model", {})}, **fed, consortium_tasks=spec["consortium"], min_sites=n_sites,
        seed=seed, eval_min_labels=10, num_threads=1, sim_store_dir=str(sites_dir), output_dir=str(output_dir),
        table_name=name, report_task_names=True, register_model=False, experiment=experiment, run_name=run_name,
    )


def run_set(name: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from fedmol.errors import TrainingDiverged
    from fedmol.models.report import GainTable
    from fedmol.models.baselines import federation_recipe, train_baselines

    spec = SETS[name]
    quick = spec["quick"] if args.quick else {}
    t0 = time.perf_counter()
    work = args.work / ("quick" if args.quick else "full") / name
    store = prepared_store(DATA_DIR / spec["file"], args.work, radius=2, n_bits=MODEL["n_bits"],
                           nrows=quick.get("nrows"), id_col=spec["id_col"])
    t_prep = time.perf_counter() - t0
    parts = split_sites(store, spec, seed)
    sites = save_sites(parts, work / "sites")
    site_info = {s: {"compounds": p.n_compounds, "trainable_tasks": len(p.trainable_tasks())}
                 for s, p in zip(sites, parts, strict=True)}
    log(f"{name}: {len(sites)} sites " + ", ".join(f"{s} {v['compounds']} compounds/{v['trainable_tasks']} tasks"
                                                    for s, v in site_info.items()))

    # One server directory per seed: this process's MLflow client keeps its SQLite store open, so a
    # store deleted and recreated at the same path would not show the new run.
    server_dir = work / f"server-seed{seed}"
    if server_dir.exists():
        shutil.rmtree(server_dir)
    cfg = federation_config(name, len(sites), work / "sites", server_dir, quick=args.quick, seed=seed,
                            experiment=f"bench-{name}", run_name=f"federation-gain-{name}")

    # -- baselines (two recipes; per approach, the one with the better validation mean) ---------
    recipes = {"adam": None, "federation": federation_recipe(cfg)}
    base_epochs = quick.get("baseline_epochs", BASELINE_EPOCHS)
    if args.quick:
        recipes["federation"] = federation_recipe(cfg, epochs=base_epochs)
    tables: dict[str, GainTable] = {}
    valid: dict[str, GainTable] = {}
    t1 = time.perf_counter()
    for rname, recipe in list(recipes.items()):
        tb = time.perf_counter()
        valid[rname] = GainTable(name, "score")
        try:
            tables[rname] = train_baselines(sites, cfg, epochs=base_epochs, dataset=name, recipe=recipe,
                                            validation=valid[rname],
                                            on_model=lambda m, r=rname: log(f"{name}: baseline [{r}] {m} done"))
        except TrainingDiverged as exc:  # a recipe too aggressive for some site: the other one stands
            log(f"{name}: baselines [{rname}] left out: {exc}")
            del recipes[rname], valid[rname]
            continue
        s, v = tables[rname].summary(), valid[rname].summary()
        log(f"{name}: baselines [{rname}] local {s['local']['mean_over_sites']:.4f}, pooled "
            f"{s['pooled']['mean_over_sites']:.4f} (validation: local {v['local']['mean_over_sites']:.4f}, "
            f"pooled {v['pooled']['mean_over_sites']:.4f}; {time.perf_counter() - tb:.0f} s)")
    t_base = time.perf_counter() - t1
    if not recipes:
        raise RuntimeError(f"{name}: every baseline recipe diverged")
    # recipe -> approach -> mean over sites, on the test and on the validation fold
    test_means = {r: {a: tables[r].summary()[a]["mean_over_sites"] for a in ("local", "pooled")} for r in recipes}
    valid_means = {r: {a: valid[r].summary()[a]["mean_over_sites"] for a in ("local", "pooled")} for r in recipes}
    chosen = {a: max(recipes, key=lambda r: _finite(valid_means[r][a])) for a in ("local", "pooled")}
    best_on_test = {a: max(recipes, key=lambda r: _finite(test_means[r][a])) for a in ("local", "pooled")}
    baselines, strictest = GainTable(name, "score"), GainTable(name, "score")
    for target, choice in ((baselines, chosen), (strictest, best_on_test)):
        for approach, rname in choice.items():
            for site, per_task in tables[rname].values[approach].items():
                target.add(approach, site, per_task)

    # -- federation in Flower's simulation engine ----------------------------------------------
    log(f"{name}: federation, {cfg.num_server_rounds} rounds, {len(sites)} virtual clients (1 CPU each)")
    run = run_flower(cfg, len(sites), work, label=name)
    federated = run.federated_table(name)
    table, strict = baselines.merge(federated), strictest.merge(federated)
    means, strict_means = approach_means(table), approach_means(strict)
    pairs, strict_pairs = pair_stats(table), pair_stats(strict)
    ratio = means["federated"] / means["pooled"] if means["pooled"] else float("nan")
    targets = judge(name, means, pairs)
    seconds = time.perf_counter() - t0
    table.notes = {
        "metric": spec["metric"] + " per task ('score'), test fold 0",
        "sites": f"{len(sites)} by {spec['split']} (seed {seed})",
        "consortium tasks": (f"{len(cfg.consortium_task_list)} shared heads" if cfg.consortium_tasks
                             else "none: private heads only (the trunk alone is shared)"),
        "federation": ", ".join(f"{k.replace('_', '-')}={getattr(cfg, k)}" for k in spec["federation"]),
        "baseline recipe": ", ".join(f"{a}: {r}" for a, r in chosen.items()) + " (chosen on the validation fold)",
        "scoring": "tasks with >= 10 positives and >= 10 negatives (regression: >= 10 exact values) in "
                   "the site's test fold",
    }
    if cfg.finetune_epochs > 0:
        log(f"{name}: federated is the personalised model (finetune-epochs={cfg.finetune_epochs})")
    log(f"{name}: local {means['local']:.4f}  federated {means['federated']:.4f}  pooled {means['pooled']:.4f}  "
        f"ratio {ratio:.4f}  federated wins {pairs['federated_wins']}/{pairs['pairs']} pairs  ({seconds:.0f} s)")
    return {
        "set": name, "seed": seed, "file": spec["file"], "metric": spec["metric"], "quick": args.quick,
        "means": means, "federated_over_pooled": ratio, "pairs": pairs, "targets": targets,
        "baseline_recipe": chosen,
        "baseline_recipes": test_means,
        "baseline_recipes_validation": valid_means,
        "best_on_test_baselines": {"recipe": best_on_test, "means": strict_means, "pairs": strict_pairs,
                                   "targets": judge(name, strict_means, strict_pairs)},
        "run_config": {k: v for k, v in cfg.to_run_config().items()
                       if k not in ("sim-store-dir", "output-dir", "tracking-uri")},
        "sites": site_info,
        "seconds": {"total": seconds, "prepare": t_prep, "baselines": t_base, "federation": run.seconds,
                    "rounds": run.round_seconds},
        "mlflow_run_id": run.outputs.get("mlflow_run_id"),
        "federated_final_round_means": _federated_variants(cfg, run.outputs.get("mlflow_run_id")),
        "table": table.to_dict(),
        "_table": table,
    }


def _previous_results(args: argparse.Namespace, names: list[str]) -> list[dict[str, Any]]:
    """The last full run's results of the sets not run now (``--only``), to keep them in the files."""
    from fedmol.models.report import GainTable

    path = args.out / "federation_gain.json"
    if not path.exists():
        return []
    kept = []
    for r in json.loads(path.read_text()).get("sets", []):
        if r.get("set") in names or r.get("set") not in SETS:
            continue
        for run in _runs(r):
            run["_table"] = GainTable.from_dict(run["table"])
        r.setdefault("note", "from an earlier run (this run used --only)")
        kept.append(r)
    return kept


def _runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A set's runs: one per seed (a single-seed result is its own run)."""
    return result.get("runs") or [result]


def _federated_variants(cfg: Any, run_id: str | None) -> dict[str, float | None]:
    """The consortium means (over sites of each site's mean over its scored tasks) the server logged
    for the final round: ``test_score`` (what the site reports: personalised when finetune-epochs > 0)
    and ``test_federated_score`` (the received federated model before fine-tuning)."""
    if not run_id:
        return {}
    try:
        from mlflow.tracking import MlflowClient

        metrics = MlflowClient(cfg.resolved_tracking_uri).get_run(run_id).data.metrics
    except Exception as exc:  # noqa: BLE001 - an extra figure, never worth failing the benchmark
        log(f"could not read the final round's metrics from MLflow: {exc}")
        return {}
    return {k: metrics.get(f"consortium/{k}") for k in ("test_score", "test_federated_score", "valid_score",
                                                         "valid_federated_score")}


def _finite(v: float) -> float:
    return v if math.isfinite(v) else -math.inf


def write_results(results: list[dict[str, Any]], args: argparse.Namespace, command: str, total: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "federation_gain_quick" if args.quick else "federation_gain"
    tables = {(r["set"], run.get("seed", 0)): run.pop("_table") for r in results for run in _runs(r)}
    payload = {"command": command, "total_seconds": total, "machine": f"{platform.machine()}, "
               f"{platform.python_version()}", "sets": results}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=_json) + "\n")

    def row(label: str, r: dict[str, Any], seconds: str) -> str:
        m, p = r["means"], r["pairs"]
        ratio = m["federated"] / m["pooled"] if m["pooled"] else float("nan")
        return (f"| {label} | {r['metric']} | {m['local']:.4f} | {m['federated']:.4f} | {m['pooled']:.4f} | "
                f"{ratio:.3f} | {p['federated_wins']}/{p['pairs']} ({p['share_federated_wins']:.0%}) | {seconds} |")

    lines = [f"# Federation gain{' (quick smoke test, not a result)' if args.quick else ''}", "",
             f"Command: `{command}` — {total / 60:.1f} min on {platform.machine()} "
             "(2 cores, no GPU).", "",
             "Baselines: per approach, the recipe with the better validation-fold mean (see the docstring).",
             "With several seeds, a set's first row is the mean over its seeds (pairs summed) and the targets "
             "are judged on it.", "",
             "| set | metric | local-only | federated | pooled | federated / pooled | pairs won by federated | "
             "run time |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        runs = _runs(r)
        if len(runs) > 1:
            lines.append(row(f"{r['set']}, mean of seeds {', '.join(map(str, r['seeds']))}", r,
                             f"{r['seconds']['total'] / 60:.1f} min"))
        for run in runs:
            lines.append(row(f"{run['set']}, seed {run.get('seed', 0)}", run,
                             f"{run['seconds']['total'] / 60:.1f} min"))
    lines += ["", "Targets:", ""]
    for r in results:
        runs = _runs(r)
        for t, ok in r["targets"].items():
            per_seed = ""
            if len(runs) > 1:
                per_seed = " (per seed: " + ", ".join(
                    f"{run['seed']} {'met' if run['targets'][t] else 'not met'}" for run in runs) + ")"
            lines.append(f"- {r['set']}: {t}: **{'met' if ok else 'NOT met'}**{per_seed}")
        strict = r.get("best_on_test_baselines")
        if strict:
            m = strict["means"]
            lines.append(f"- {r['set']}, against the baseline recipe that is better on the test fold (stricter; "
                         f"local {m['local']:.4f}, pooled {m['pooled']:.4f}): "
                         + ", ".join(f"{t} {'met' if ok else 'NOT met'}" for t, ok in strict["targets"].items()))
    lines += ["", "Baselines per recipe (mean over sites, test fold; validation fold in brackets):", ""]
    for r in results:
        for run in _runs(r):
            val = run.get("baseline_recipes_validation", {})
            for rname, v in run["baseline_recipes"].items():
                vv = val.get(rname)
                vtext = f" [validation: local {vv['local']:.4f}, pooled {vv['pooled']:.4f}]" if vv else ""
                lines.append(f"- {run['set']} seed {run.get('seed', 0)} [{rname}]: local {v['local']:.4f}, "
                             f"pooled {v['pooled']:.4f}{vtext}")
    for r in results:
        if r.get("note"):
            lines.append(f"- {r['set']}: {r['note']}")
        for run in _runs(r):
            v = run.get("federated_final_round_means") or {}
            if v.get("test_federated_score") is not None:
                lines.append(f"- {run['set']} seed {run.get('seed', 0)}: final round, consortium mean of the sites' "
                             f"means over all their scored tasks (server log): personalised {v['test_score']:.4f}, "
                             f"federated model before fine-tuning {v['test_federated_score']:.4f}")
    lines += ["", "How it was measured: see the docstring of `benchmarks/federation_gain.py`.", ""]
    for r in results:
        for run in _runs(r):
            body = tables[(run["set"], run.get("seed", 0))].markdown()
            body = body.replace("\n# ", "\n## ").replace("\n## ", "\n### ")
            lines += ["", body.replace(f"# score on {run['set']}",
                                       f"## {run['metric']} on {run['set']} (seed {run.get('seed', 0)})", 1)]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(tables, [run for r in results for run in _runs(r)], args.out / f"{stem}.png")
    log(f"results: {args.out / stem}.json / .md / .png")


def plot(tables: dict[tuple[str, int], Any], runs: list[dict[str, Any]], path: Path) -> None:
    """Per-site means of local-only, federated and pooled: one panel per set and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = list(dict.fromkeys(r["set"] for r in runs))
    ncols = max(sum(r["set"] == s for r in runs) for s in sets)
    fig, axes = plt.subplots(len(sets), ncols, figsize=(6 * ncols, 4 * len(sets)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    colours = {"local": "#9e9e9e", "federated": "#1f77b4", "pooled": "#2ca02c"}
    for s_i, name in enumerate(sets):
        for ax, r in zip(axes[s_i], [r for r in runs if r["set"] == name], strict=False):
            ax.set_visible(True)
            seed = r.get("seed", 0)
            table = tables[(name, seed)]
            summary = table.summary()
            sites = table.sites
            x = np.arange(len(sites))
            for k, a in enumerate(("local", "federated", "pooled")):
                ax.bar(x + (k - 1) * 0.27, [summary[a][s] for s in sites], 0.27, label=a, color=colours[a])
            ax.set_xticks(x, [f"{s}\n({len(table.common_tasks(s))} tasks)" for s in sites])
            ax.set_ylabel(f"mean test {r['metric']}")
            vals = [summary[a][s] for a in ("local", "federated", "pooled") for s in sites]
            lo = min(v for v in vals if math.isfinite(v))
            ax.set_ylim(min(0.5, lo - 0.05) if r["metric"] == "ROC-AUC" else min(0.0, lo - 0.05),
                        max(vals) + 0.08)
            m = r["means"]
            ax.set_title(f"{name} seed {seed}: local {m['local']:.3f}, fed {m['federated']:.3f}, "
                         f"pooled {m['pooled']:.3f}", fontsize=10)
            ax.legend(loc="upper left", ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    quiet_warnings()
    args.work.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python benchmarks/federation_gain.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    names = args.only or list(SETS)
    results = []
    try:
        for name in names:
            runs = []
            for seed in args.seeds:
                log(f"{name}: seed {seed}")
                runs.append(run_set(name, args, seed))
            results.append(combine(runs))
    finally:
        left = flower_leftovers(args.work)
        if left:
            log("WARNING: Flower processes still running: " + "; ".join(left))
    if args.only and not args.quick:  # keep the other sets' last results in the files
        results = _previous_results(args, names) + results
    write_results(results, args, command.strip(), time.perf_counter() - t0)
    for r in results:
        ok = all(r["targets"].values())
        log(f"{r['set']}: targets {'met' if ok else 'NOT all met'}: {r['targets']}")
    return results


if __name__ == "__main__":
    main()
