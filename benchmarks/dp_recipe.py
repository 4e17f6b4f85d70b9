"""Which recipe should per-compound DP-SGD (``dp="site-dp-sgd"``) use? Candidates at a budget.

    .venv/bin/python -m benchmarks.dp_recipe --candidate b2048-h128-B512 --epsilon 8
    .venv/bin/python -m benchmarks.dp_recipe --local-only --bits 32768 2048     # the bar

The Tox21 federation of `benchmarks.recipes` ("tox21": 4 scaffold sites of the prepared store at
32,768 bits, seed 0; `site_stores`), run in process with the real `SiteNode.train_round` (which
applies DP-SGD and accounts the budget) by `benchmarks.recipes.run_recipe`. Each candidate is a
list of run-config overrides on today's defaults, plus ``dp=site-dp-sgd dp-epsilon=E``; its
``dp-num-server-rounds`` (``num-server-rounds`` without DP) and ``patience`` drive the emulated
federation too. A candidate with ``n-bits`` below 32,768 runs on the same site stores folded to that
width (bit j -> j mod n-bits; the stored bits are key-permuted, so this is a random grouping, as
ECFP's own folding is).

Every candidate runs under its own federation id (a site's budget file survives between runs and
refuses a changed plan). Reported: rounds run, the best round, the federated (shared) model's mean
test ROC-AUC over the sites (``mean_test_plain``), the personalised site models' (``mean_test``:
fine-tuning is local and never leaves the site), the epsilon spent (maximum over sites, from their
budget files) and minutes. ``--local-only``: each site's local-only model without DP
(`fedmol.client.local_only.cached_local_only`, the model of the federation-gain report) on the
same folds and width: the bar a DP federation must reach. Results: dp_recipe.json / .md.
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

from benchmarks.common import RESULTS, log, quiet_warnings
from benchmarks.recipes import SITES, run_recipe, site_stores

SET = "tox21"
FULL_BITS = 32768
# Candidate recipes: run-config overrides (dp and dp-epsilon are added per run). Since the DP recipe
# keys (fedmol.config: dp-hidden, dp-batch-size, dp-local-epochs, dp-lr, dp-lr-decay) exist, a DP
# candidate changes those; hidden, batch-size, local-epochs, lr and lr-decay no longer reach DP training.
# The rows of dp_recipe.md dated before 13:35 on 2026-12-01 ran before those keys, when the general
# keys drove DP training: their overrides name the general keys.
CANDIDATES: dict[str, list[str]] = {
    "defaults": [],  # what dp="site-dp-sgd" dp-epsilon=E gives with nothing else set
    "b512": ["n-bits=512"],  # the features folded to 512 bits (needs data prepared at that width)
    "b1024": ["n-bits=1024"],
    "dropout0": ["dropout=0.0"],
    "dp-hidden400": ["dp-hidden=400"],
}


def folded_stores(stores: list[Path], n_bits: int) -> list[Path]:
    """The site stores with their features folded to ``n_bits`` (j -> j mod n_bits, binary), cached beside."""
    import scipy.sparse as sp

    from fedmol.datasets.store import SiteStore

    if n_bits == FULL_BITS:
        return stores
    out = []
    for path in stores:
        dest = path.parent.with_name(f"{path.parent.name}-f{n_bits}") / path.name
        if not (dest / "settings.json").exists():
            store = SiteStore.load(path)
            X = store.X.tocoo()
            folded = sp.csr_matrix((np.ones_like(X.data), (X.row, X.col % n_bits)),
                                   shape=(X.shape[0], n_bits), dtype=np.float32)
            folded.data[:] = 1.0
            store.X = folded
            store.settings = {**store.settings, "dp_recipe_folded_from": FULL_BITS}
            store.save(dest)
        out.append(dest)
    return out


def run_candidate(name: str, overrides: list[str], stores: list[Path], epsilon: float, seed: int) -> dict[str, Any]:
    from fedmol.client.site import SiteNode
    from fedmol.config import FederationConfig
    from fedmol.privacy import SiteBudget

    dp = [] if epsilon <= 0 else ["dp=site-dp-sgd", f"dp-epsilon={epsilon:g}"]
    planned = FederationConfig().with_overrides([*overrides, *dp])  # the candidate's width, rounds and patience
    n_bits, rounds, patience = planned.n_bits, planned.max_rounds, planned.patience
    fid = f"dpr-{name}-eps{epsilon:g}-{time.strftime('%H%M%S')}"
    sites = folded_stores(stores, n_bits)
    t0 = time.perf_counter()
    # No site registry (MLflow) in the final evaluation: slow, and not what is measured.
    res = run_recipe(name, ["register-model=false", *overrides, *dp], sites, SITES[SET]["consortium"], seed=seed,
                     rounds=rounds, patience=patience, fid=fid)
    spent = []
    for path in sites:
        node = SiteNode(path, path.name)
        budget_file = node.budget_path(fid)
        if budget_file.exists():
            budget = SiteBudget.load(budget_file)
            spent.append((budget.epsilon_spent, budget.noise_multiplier))
    res.update({"epsilon": epsilon, "n_bits": n_bits,
                "epsilon_spent": round(max(s for s, _ in spent), 3) if spent else None,
                "noise_multiplier": round(max(s for _, s in spent), 4) if spent else None,
                "minutes": round((time.perf_counter() - t0) / 60, 1)})
    return res


def run_local_only(stores: list[Path], n_bits: int, seed: int, overrides: list[str]) -> dict[str, Any]:
    """Each site alone, without DP (the federation-gain report's local-only model) on these folds."""
    from fedmol.client.local_only import cached_local_only
    from fedmol.config import FederationConfig
    from fedmol.datasets.store import SiteStore

    cfg = FederationConfig(consortium_tasks=SITES[SET]["consortium"], seed=seed, device="cpu",
                           eval_min_labels=10).with_overrides([f"n-bits={n_bits}", *overrides])
    t0 = time.perf_counter()
    tests = []
    for path in folded_stores(stores, n_bits):
        result, cached = cached_local_only(SiteStore.load(path), path, cfg)
        score = result.results["test"].score
        log(f"  local-only {path.name} at {n_bits} bits: test {score} ({'cached' if cached else 'trained'})")
        tests.append(score)
    vals = [float(t) for t in tests if t is not None]
    return {"recipe": f"local-only-{n_bits}", "overrides": [f"n-bits={n_bits}", *overrides], "epsilon": 0.0,
            "n_bits": n_bits, "site_test": tests, "mean_test_plain": round(float(np.mean(vals)), 4),
            "mean_test": round(float(np.mean(vals)), 4), "minutes": round((time.perf_counter() - t0) / 60, 1)}


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = ["# Per-compound DP-SGD recipes on Tox21 (`python -m benchmarks.dp_recipe`)", "",
             "In-process emulation of the 4-site Tox21 scaffold federation (`benchmarks.recipes.run_recipe`: the "
             "real `SiteNode.train_round` with DP-SGD and its budget accounting, FedAvg's mean). `federated`: the "
             "best round's shared model, mean test ROC-AUC over the sites (the number the issue's target is "
             "about); `site model`: after each site's local fine-tuning (never leaves the site, outside the "
             "budget). Local-only rows: each site alone without DP, the bar.", "",
             "| candidate | epsilon | n-bits | rounds (best / run) | federated test | site model test | "
             "eps spent | noise mult. | minutes | date |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for key in sorted(results, key=lambda k: (results[k].get("epsilon", 0), k)):
        r = results[key]
        rounds = f"{r.get('best_round', '–')} / {r.get('rounds_run', '–')}"
        lines.append(f"| {r['recipe']} | {r.get('epsilon') or '∞ (no DP)'} | {r.get('n_bits')} | {rounds} | "
                     f"{r.get('mean_test_plain')} | {r.get('mean_test')} | {r.get('epsilon_spent', '–')} | "
                     f"{r.get('noise_multiplier', '–')} | {r.get('minutes')} | {r.get('date')} |")
    lines += ["", "Candidates (run-config overrides on the defaults of the day, plus dp=site-dp-sgd dp-epsilon=E):", ""]
    seen = {r["recipe"]: r["overrides"] for r in results.values()}
    lines += [f"- **{name}**: `{' '.join(o for o in ov if not o.startswith('dp')) or '(the defaults)'}`"
              for name, ov in sorted(seen.items())]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--candidate", nargs="*", default=[], help=f"named candidates: {', '.join(CANDIDATES)}")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=KEY=V,KEY=V",
                   help="an ad-hoc candidate: NAME then comma-separated overrides (repeatable)")
    p.add_argument("--epsilon", type=float, nargs="+", default=[8.0], help="budgets (0: no DP)")
    p.add_argument("--local-only", action="store_true", help="the local-only bar (no DP) at --bits")
    p.add_argument("--bits", type=int, nargs="+", default=[FULL_BITS])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedmol-bench")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1,500 Tox21 rows, the wired recipe (nothing set but dp and dp-epsilon) for 2 "
                        "rounds at epsilon 8; results as dp_recipe_quick.*")
    args = p.parse_args(argv)
    quiet_warnings()
    todo = {k: CANDIDATES[k] for k in args.candidate}
    if args.quick:
        todo = {"defaults": ["num-server-rounds=2", "finetune-epochs=0", "local-baseline=false"]}
        args.epsilon, args.local_only, args.extra = [8.0], False, []
    stores = site_stores(SET, args.work, args.seed, 1500 if args.quick else None)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("dp_recipe_quick.json" if args.quick else "dp_recipe.json")
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for item in args.extra:
        name, _, rest = item.partition("=")
        todo[name] = [x for x in rest.split(",") if x]

    def keep(key: str, res: dict[str, Any]) -> None:
        res.update({"machine": f"{platform.machine()}, 2 shared cores", "date": time.strftime("%Y-%m-%d %H:%M")})
        results[key] = res
        path.write_text(json.dumps(results, indent=1, default=float))
        write_markdown(results, path.with_suffix(".md"))

    if args.local_only:
        for bits in args.bits:
            res = run_local_only(stores, bits, args.seed, [])
            log(f"local-only at {bits} bits: mean test {res['mean_test_plain']}")
            keep(f"local-only/{bits}", res)
    for name, overrides in todo.items():
        for eps in args.epsilon:
            log(f"candidate {name} at epsilon {eps:g}: {overrides}")
            res = run_candidate(name, overrides, stores, eps, args.seed)
            log(f"candidate {name} eps {eps:g}: federated test {res['mean_test_plain']} (site model "
                f"{res['mean_test']}), best round {res['best_round']} of {res['rounds_run']}, eps spent "
                f"{res['epsilon_spent']}, {res['minutes']} min")
            keep(f"{name}/{eps:g}", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
