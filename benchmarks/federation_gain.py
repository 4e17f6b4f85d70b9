"""Federation gain: local-only vs federated vs pooled, on Tox21 and chembl_5thresh split into sites.

    .venv/bin/python -m benchmarks.federation_gain --seed 0 1 2  # both sets, 3 seeds, ~40 min (+5 min first prep)
    .venv/bin/python -m benchmarks.federation_gain               # one seed (0), ~15 min
    .venv/bin/python -m benchmarks.federation_gain --only tox21
    .venv/bin/python -m benchmarks.federation_gain --quick       # small subsets, 2-3 rounds: a smoke run

Per set (`benchmarks.sets.SETS`) and seed: prepare the set once with the public benchmark key, split
it into sites (Tox21: 4 by scaffold, shared tasks; chembl_5thresh: 5 by target, private tasks),
train local-only and pooled baselines (two recipes; per approach the one better on the validation
fold), run the federation in Flower's simulation engine, and compare all three on each site's test
fold over the tasks every approach scored. With several seeds the targets are judged on the mean.

Reported: mean test metric of each approach, federated / pooled, and the share of (site, task)
pairs where federated beats local-only, in ``federation_gain.json`` / ``.md`` / ``.png`` under
``--out`` (``federation_gain_quick.*`` with ``--quick``; `benchmarks.gain_report` writes them).
Method, fairness, how the federation settings were chosen and the dated figures:
benchmarks/results/federation_gain_notes.md. Every Flower process started here is stopped before
the script returns.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, RESULTS, flower_leftovers, log, quiet_warnings, run_flower
from benchmarks.gain_report import approach_means, pair_stats, previous_results, write_results
from benchmarks.sets import MODEL, SETS, federation_config, prepared_store, save_sites, split_sites

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


def run_set(name: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from fedmol.errors import TrainingDiverged
    from fedmol.models.baselines import federation_recipe, train_baselines
    from fedmol.models.report import GainTable

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


def _federated_variants(cfg: Any, run_id: str | None) -> dict[str, float | None]:
    """The consortium means (over sites of each site's mean over its scored tasks) the server logged
    for the final evaluation (of the best round's model, ``consortium/final/*``): ``test_score``
    (what the site reports: personalised when finetune-epochs > 0) and ``test_federated_score``
    (the received federated model before fine-tuning)."""
    if not run_id:
        return {}
    try:
        from mlflow.tracking import MlflowClient

        metrics = MlflowClient(cfg.resolved_tracking_uri).get_run(run_id).data.metrics
    except Exception as exc:  # noqa: BLE001 - an extra figure, never worth failing the benchmark
        log(f"could not read the final round's metrics from MLflow: {exc}")
        return {}
    return {k: metrics.get(f"consortium/final/{k}") for k in ("test_score", "test_federated_score", "valid_score",
                                                         "valid_federated_score")}


def _finite(v: float) -> float:
    return v if math.isfinite(v) else -math.inf


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    quiet_warnings()
    args.work.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python -m benchmarks.federation_gain " + " ".join(sys.argv[1:] if argv is None else argv)
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
        results = previous_results(args.out, names, SETS) + results
    write_results(results, args.out, quick=args.quick, command=command.strip(), total=time.perf_counter() - t0)
    for r in results:
        ok = all(r["targets"].values())
        log(f"{r['set']}: targets {'met' if ok else 'NOT all met'}: {r['targets']}")
    return results


if __name__ == "__main__":
    main()
