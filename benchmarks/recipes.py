"""Which federation recipe should be the default? Candidate recipes, measured on several sets.

    .venv/bin/python -m benchmarks.recipes --set tox21 --recipe fedavg-sgd diloco     # one set, two recipes
    .venv/bin/python -m benchmarks.recipes --set tox21 sider chembl_5thresh --seed 0 1

Every set is prepared as a user would (`fedmol prepare`'s default featurisation: ECFP6, 32,768
bits, scaffold folds; the fixed public benchmark key) and split into sites (`SITES`). Each
recipe (`RECIPES`: run-config overrides on top of today's defaults) runs as an in-process
emulation of the federation: the sites are `fedmol.client.site.SiteNode` (the code a site runs
in every round), the server's arithmetic is FedAvg's label-weighted mean, followed for
``fednesterov`` by `fedmol.server.strategies.outer_nesterov_step`. Flower's transport is left out
(it moves the same numpy arrays; `benchmarks/rounds.py` measures it).

Per round: every site evaluates the new global model on its validation and test folds; the
federated validation score is the label-weighted mean over the sites (what the server selects the
best round on). Reported per recipe and set: the validation curve, the best round, and the sites'
test scores of the best round's model (plain, and personalised when ``finetune-epochs`` > 0).
Recipes are chosen on the validation fold only; the test column is for the notes.

Results: ``recipes.json`` and ``recipes.md`` under ``--out`` (default benchmarks/results), merged
with earlier runs; the choice and its reasons are in benchmarks/results/recipes_notes.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DATA_DIR, RESULTS, fedavg_round, log, quiet_warnings
from benchmarks.sets import TOX21_TASKS, prepared_store, split_sites

# The sets: how a consortium of that data would be split (shared tasks or private assays).
SITES: dict[str, dict[str, Any]] = {
    "tox21": {"file": "tox21.csv.gz", "id_col": "mol_id", "sites": 4, "split": "by_scaffold",
              "consortium": ",".join(f"{t}:classification" for t in TOX21_TASKS)},
    "sider": {"file": "sider.csv.gz", "id_col": None, "sites": 3, "split": "by_task", "consortium": ""},
    "chembl_5thresh": {"file": "chembl_5thresh.csv.gz", "id_col": None, "sites": 5, "split": "by_task",
                       "consortium": ""},
}

# Candidate recipes: run-config overrides. The federation's maximum rounds and patience are the
# same for every recipe (`--rounds`, `--patience`), so they compete on the same budget.
RECIPES: dict[str, list[str]] = {
    "defaults": [],
    # Today's best hand-tuned recipes of benchmarks/sets.py (Tox21's and chembl's).
    "fedavg-sgd-tox21": ["strategy=fedavg", "optimizer=sgd", "lr=1.0", "lr-decay=0.92", "local-epochs=2",
                         "head-epochs=0"],
    "fedavg-sgd-chembl": ["strategy=fedavg", "optimizer=sgd", "lr=0.1", "local-epochs=2", "head-epochs=0",
                          "finetune-epochs=20", "finetune-lr=0.03", "finetune-patience=5"],
    # DiLoCo: AdamW at the sites with its state kept between rounds, Nesterov outer step at the server.
    "diloco": ["strategy=fednesterov", "optimizer=adamw", "keep-optimizer-state=true", "lr=0.001",
               "weight-decay=0.01", "local-epochs=1", "outer-lr=0.7", "outer-momentum=0.9", "head-epochs=0"],
    "diloco-ft": ["strategy=fednesterov", "optimizer=adamw", "keep-optimizer-state=true", "lr=0.001",
                  "weight-decay=0.01", "local-epochs=1", "outer-lr=0.7", "outer-momentum=0.9", "head-epochs=0",
                  "finetune-epochs=20", "finetune-lr=0.0003", "finetune-patience=3"],
    "fedavg-adamw": ["strategy=fedavg", "optimizer=adamw", "keep-optimizer-state=true", "lr=0.001",
                     "weight-decay=0.01", "local-epochs=1", "head-epochs=0"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--set", nargs="+", default=["tox21"], choices=sorted(SITES), dest="sets")
    p.add_argument("--recipe", nargs="*", default=list(RECIPES), dest="recipes",
                   help=f"recipes to run (default: all): {', '.join(RECIPES)}")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=KEY=V,KEY=V",
                   help="an ad-hoc recipe: NAME then comma-separated overrides (repeatable)")
    p.add_argument("--seed", type=int, nargs="+", default=[0], dest="seeds")
    p.add_argument("--rounds", type=int, default=30, help="most rounds (default 30)")
    p.add_argument("--patience", type=int, default=6, help="stop after this many rounds without a better "
                                                           "federated validation score (default 6)")
    p.add_argument("--nrows", type=int, default=None, help="first rows of each file only (smoke run)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: Tox21's first 1,500 rows, the defaults, 2 rounds, hidden 64 (~1 min); "
                        "results as recipes_quick.*")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedmol-bench")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def site_stores(name: str, work: Path, seed: int, nrows: int | None) -> list[Path]:
    spec = SITES[name]
    store = prepared_store(DATA_DIR / spec["file"], work, radius=3, n_bits=32768, nrows=nrows, id_col=spec["id_col"])
    out = work / "recipe-sites" / f"{name}-{seed}-{nrows or 'all'}"
    if not (out / "site-0" / "settings.json").exists():
        for i, part in enumerate(split_sites(store, spec, seed)):
            part.settings["site_name"] = f"site-{i}"
            part.save(out / f"site-{i}")
    return sorted(out.glob("site-*"))


def run_recipe(name: str, overrides: list[str], stores: list[Path], consortium: str, *, seed: int, rounds: int,
               patience: int, fid: str) -> dict[str, Any]:
    import shutil

    import torch

    from fedmol import wire
    from fedmol.client.site import SiteNode
    from fedmol.config import FederationConfig
    from fedmol.models.network import MultiTaskNet
    from fedmol.server.rounds import SiteReport
    from fedmol.server.selection import federated_valid_score
    from fedmol.server.strategies import outer_nesterov_step

    cfg = FederationConfig(num_server_rounds=rounds, min_sites=len(stores), consortium_tasks=consortium, seed=seed,
                           device="cpu", local_baseline=False, eval_min_labels=10).with_overrides(overrides)
    sites = [SiteNode(p, p.name) for p in stores]
    for s in sites:
        shutil.rmtree(s.private_dir(fid), ignore_errors=True)
    torch.manual_seed(seed)
    shared = {k: v.detach().cpu().numpy()
              for k, v in MultiTaskNet(sites[0].spec(cfg), seed=seed).shared_state_dict().items()}
    momentum: dict[str, np.ndarray] = {}
    curve, test_curve = [], []
    best = (-np.inf, 0, shared)
    t0 = time.perf_counter()
    for rnd in range(1, rounds + 1):
        mean, _ = fedavg_round(sites, cfg, shared, server_round=rnd, federation_id=fid)
        if cfg.strategy == "fednesterov":
            shared = outer_nesterov_step(shared, mean, momentum, lr=cfg.outer_lr, mu=cfg.outer_momentum)
        else:
            shared = mean
        replies = [s.evaluate_round(cfg, shared, server_round=rnd, federation_id=fid, final=False) for s in sites]
        evals = [json.loads(r.report[wire.REP_SUMMARY]) for r in replies]
        # The server's own federated validation score (fedmol.server.selection): label-weighted, NaN skipped.
        fed = federated_valid_score(SiteReport(i, s.name, r.metrics, summary=e)
                                    for i, (s, r, e) in enumerate(zip(sites, replies, evals, strict=True)))
        score = fed.score if fed.score is not None else float("nan")
        t = np.array([e.get("test_score") if e.get("test_score") is not None else np.nan for e in evals])
        curve.append(round(score, 4))
        test_curve.append(round(float(np.nanmean(t)), 4))
        log(f"  {name} round {rnd}: valid {score:.4f} test {np.nanmean(t):.4f} ({time.perf_counter() - t0:.0f} s)")
        if score > best[0]:
            best = (score, rnd, {k: v.copy() for k, v in shared.items()})
        elif patience and rnd - best[1] >= patience:
            break
    seconds = time.perf_counter() - t0
    final = [json.loads(s.evaluate_round(cfg, best[2], server_round=best[1], federation_id=fid, final=True)
                        .report[wire.REP_SUMMARY]) for s in sites]
    test = [f.get("test_score") for f in final]
    plain = [f.get("test_federated_score", f.get("test_score")) for f in final]
    valid = [f.get("valid_score") for f in final]
    return {"recipe": name, "overrides": overrides, "rounds_run": len(curve), "best_round": best[1],
            "best_valid": round(best[0], 4), "valid_curve": curve, "test_curve": test_curve,
            "site_valid_final": valid, "site_test": test, "site_test_plain": plain,
            "mean_valid_final": _mean(valid), "mean_test": _mean(test), "mean_test_plain": _mean(plain),
            "seconds": round(seconds, 1)}


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None and np.isfinite(float(x))]
    return round(float(np.mean(vals)), 4) if vals else None


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """One row per (set, seed, recipe, rows): the validation score that chose, and the test score."""
    lines = ["# Federation recipes (`python -m benchmarks.recipes`)", "",
             "In-process emulation of the federation (`SiteNode` + FedAvg's mean / the outer Nesterov step); "
             "the federated validation score is label-weighted over the sites; the best round's model is "
             "tested (personalised where `finetune-epochs` > 0 and the site chose it). Notes: recipes_notes.md.",
             "", "| set | seed | recipe | best valid | best round / run / max | test (site model) | test (plain) "
                 "| seconds | date |", "|---|---:|---|---:|---|---:|---:|---:|---|"]
    for key in sorted(results):
        r = results[key]
        rows = f" ({r['nrows']} rows)" if r.get("nrows") else ""
        lines.append(f"| {r['set']}{rows} | {r['seed']} | {r['recipe']} | {r['best_valid']} | {r['best_round']} / "
                     f"{r['rounds_run']} / {r['max_rounds']} | {r['mean_test']} | {r['mean_test_plain']} | "
                     f"{r['seconds']} | {r['date']} |")
    lines += ["", "Recipes (run-config overrides on the defaults of the day):", ""]
    seen: dict[str, list[str]] = {r["recipe"]: r["overrides"] for r in results.values()}
    lines += [f"- **{name}**: `{' '.join(ov) or '(the defaults)'}`" for name, ov in sorted(seen.items())]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_warnings()
    if args.quick:
        args.sets, args.recipes, args.seeds, args.nrows, args.rounds = ["tox21"], ["defaults"], [0], 1500, 2
        RECIPES["defaults"] = ["hidden=64"]
    recipes = {k: RECIPES[k] for k in args.recipes}
    for item in args.extra:
        name, _, rest = item.partition("=")
        recipes[name] = [x for x in rest.split(",") if x]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("recipes_quick.json" if args.quick else "recipes.json")
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for set_name in args.sets:
        for seed in args.seeds:
            stores = site_stores(set_name, args.work, seed, args.nrows)
            for name, overrides in recipes.items():
                log(f"{set_name} seed {seed}: recipe {name} {overrides}")
                res = run_recipe(name, overrides, stores, SITES[set_name]["consortium"], seed=seed,
                                 rounds=args.rounds, patience=args.patience, fid=f"recipe-{name}")
                res.update({"set": set_name, "seed": seed, "nrows": args.nrows, "max_rounds": args.rounds,
                            "patience": args.patience, "machine": f"{platform.machine()}, 2 cores",
                            "date": time.strftime("%Y-%m-%d")})
                results[f"{set_name}/{seed}/{name}/{args.nrows or 'all'}"] = res
                path.write_text(json.dumps(results, indent=1))
                write_markdown(results, path.with_suffix(".md"))
                log(f"{set_name} seed {seed} {name}: best valid {res['best_valid']} at round {res['best_round']}"
                    f" of {res['rounds_run']}; test {res['mean_test']} (plain {res['mean_test_plain']}),"
                    f" {res['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
