"""How much of a federation-gain comparison is seed noise? A control for the federation-gain benchmark.

    .venv/bin/python -m benchmarks.seed_noise --sites /tmp/fedmol-bench/full/chembl_5thresh/sites --seed 7
    .venv/bin/python -m benchmarks.seed_noise --quick   # a smoke run on federation_gain --quick's sites

Run it on the site stores a `benchmarks.federation_gain` run leaves under its ``--work`` folder
(``full/<set>/sites``). Each store then holds its local-only model (cached by the federation) and
the federation's final model of that site: the chosen round's shared arrays (``shared_final.npz``)
with the private heads of that round, or ``personalised.pt`` where the site kept its fine-tuned model.

Per site this trains a **second local-only model** with nothing changed but the seed (``--seed``;
the same recipe selection, `fedmol.models.baselines.local_only`; cached under ``--work``), then
scores on the site's test fold, over the (site, task) pairs that the federation-gain table scores
(the same quorum, ``eval-min-labels``):

* ``local``: the run's local-only model (the federation-gain table's ``local`` column);
* ``local (other seed)``: the second one: how far a comparison moves with the seed alone;
* ``site model``: the model the site uses (the table's "site model", reproduced here);
* ensembles, the plain mean of two models' predictions (P(active), or values in task units):
  ``local + local (other seed)`` and ``local + site model``.

Pairs won are counted against ``local``, as in the federation-gain table (a tie is not a win), and
``local + site model`` against ``local + local (other seed)`` as well: whether a federated model
adds more to a site's local model than a second local model does. Results: ``seed_noise_<set>.json``
/ ``.md`` under ``--out``; the dated figures are in benchmarks/results/federation_gain_notes.md.
``--quick`` uses the chembl_5thresh sites of ``federation_gain --quick`` under ``--work`` (running that
first when they are not there) and writes ``seed_noise_quick.*``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, log, quiet_warnings

Scores = dict[str, float]  # task -> test metric (ROC-AUC or R²)
QUICK_SET = "chembl_5thresh"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sites", type=Path, default=None,
                   help="the site stores of a federation_gain run: <work>/full/<set>/sites")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run on the chembl_5thresh sites of `federation_gain --quick --work WORK`")
    p.add_argument("--seed", type=int, default=7, help="the second local-only model's seed (default 7)")
    p.add_argument("--name", default="", help="the set's name in the results (default: the folder above sites/)")
    p.add_argument("--work", type=Path, default=None,
                   help="where the second local-only models are cached (default: <sites>/../seed-noise); with "
                        "--quick, federation_gain's --work (default /tmp/fedmol-bench)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        bench = args.work or Path(tempfile.gettempdir()) / "fedmol-bench"
        args.sites = bench / "quick" / QUICK_SET / "sites"
        args.work = bench / "quick" / QUICK_SET / "seed-noise"
        if not list(args.sites.glob("*/federations/*/shared_final.json")):
            from benchmarks import federation_gain

            federation_gain.main(["--quick", "--only", QUICK_SET, "--work", str(bench), "--out", str(args.out)])
    elif args.sites is None:
        p.error("--sites is required (or --quick)")
    return args


def site_models(path: Path, seed: int, work: Path) -> dict[str, Any]:
    """The three models of one site (loaded or trained) and their test predictions with the labels."""
    import torch

    from fedmol.client.audit import load_plan
    from fedmol.client.local_only import LOCAL_ONLY_DIR
    from fedmol.datasets.store import SiteStore
    from fedmol.models.baselines import local_only, local_only_key
    from fedmol.models.io import load_model, save_model
    from fedmol.models.site_model import split_rows

    store = SiteStore.load(path)
    # The newest federation's models as the site keeps them (what `fedmol site audit` examines): the
    # chosen round's shared arrays with that round's private heads, and the personalised model if kept.
    plan = load_plan(path, store)
    cfg = plan.cfg
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    personalised = plan.models["personalised"]
    model = personalised if personalised is not None else plan.models["shared"]
    assert model is not None
    key = local_only_key(store, cfg)
    local, _ = load_model(path / LOCAL_ONLY_DIR / key)
    other_dir = work / path.name / f"seed{seed}-{key}"
    if not (other_dir / "weights.pt").exists():
        t0 = time.perf_counter()
        result = local_only(store, cfg.replace(seed=seed))
        assert result.model is not None
        save_model(other_dir, result.model, meta={"seed": seed, "recipe": result.recipe,
                                                  "validation": result.validation})
        log(f"  {path.name}: second local-only model (seed {seed}, recipe {result.recipe}) in "
            f"{time.perf_counter() - t0:.0f} s")
    other, _ = load_model(other_dir)
    return {"cfg": cfg, "personalised": personalised is not None, "federation_id": plan.federation_id,
            "round": plan.final_round,
            "test": predictions(store, cfg, split_rows(store, cfg, "test"),
                                {"local": local, "other": other, "site": model})}


def predictions(store: Any, cfg: Any, rows: np.ndarray, models: dict[str, Any]) -> dict[str, Any]:
    """Per task: labels, censoring, kind, and each model's test predictions (task units)."""
    from fedmol.models.data import TaskData
    from fedmol.models.training import predict

    ref = models["local"]
    data = TaskData.from_store(store, ref.spec, rows, trainable_only=False)
    preds = {name: predict(m, data.X, device="cpu") for name, m in models.items()}
    out: dict[str, Any] = {}
    for head in ref.spec.heads:
        for j, task in enumerate(head.tasks):
            if all(task in p.values for p in preds.values()):
                out[task] = {"y": data.heads[head.name].values[:, j], "censor": data.heads[head.name].censor[:, j],
                             "kind": head.kind, **{name: p[task] for name, p in preds.items()}}
    return out


def score(task: dict[str, Any], pred: np.ndarray, min_labels: int) -> float | None:
    from fedmol.models.metrics import MetricThresholds, classification_metrics, regression_metrics

    th = MetricThresholds.at_least(min_labels)
    if task["kind"] == "classification":
        m = classification_metrics(task["y"], pred, th)
        return None if m is None else float(m["roc_auc"])
    m = regression_metrics(task["y"], pred, task["censor"], th)
    return None if m is None else float(m["r2"])


COLUMNS = {  # name -> how its prediction is made from the three models'
    "local": lambda t: t["local"],
    "local (other seed)": lambda t: t["other"],
    "site model": lambda t: t["site"],
    "local + local (other seed)": lambda t: (t["local"] + t["other"]) / 2,
    "local + site model": lambda t: (t["local"] + t["site"]) / 2,
}


def summarise(per_site: dict[str, dict[str, Scores]]) -> dict[str, Any]:
    """Mean over sites of the per-site mean over pairs, and pairs won against ``local``."""
    out: dict[str, Any] = {}
    for col in COLUMNS:
        means = [float(np.mean([s[col] for s in site.values()])) for site in per_site.values() if site]
        wins = sum(s[col] > s["local"] for site in per_site.values() for s in site.values())
        n = sum(len(site) for site in per_site.values())
        out[col] = {"mean": round(float(np.mean(means)), 4), "won_vs_local": wins, "pairs": n}
    both = "local + site model", "local + local (other seed)"
    out["local + site model vs local + local (other seed)"] = {
        "won": sum(s[both[0]] > s[both[1]] for site in per_site.values() for s in site.values()),
        "pairs": sum(len(site) for site in per_site.values())}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_warnings()
    name = args.name or args.sites.resolve().parent.name
    work = args.work or args.sites.resolve().parent / "seed-noise"
    t0 = time.perf_counter()
    per_site: dict[str, dict[str, Scores]] = {}
    facts: dict[str, Any] = {}
    for path in sorted(p for p in args.sites.iterdir() if (p / "settings.json").exists()):
        models = site_models(path, args.seed, work)
        cfg = models["cfg"]
        scores: dict[str, Scores] = {}
        for task, t in models["test"].items():
            values = {col: score(t, make(t), cfg.eval_min_labels) for col, make in COLUMNS.items()}
            if all(v is not None and np.isfinite(v) for v in values.values()):
                scores[task] = {k: float(v) for k, v in values.items() if v is not None}
        per_site[path.name] = scores
        facts[path.name] = {"personalised": models["personalised"], "federation_id": models["federation_id"],
                            "round": models["round"], "pairs": len(scores)}
        log(f"{path.name}: {len(scores)} pairs; local {np.mean([s['local'] for s in scores.values()]):.4f}, "
            f"other seed {np.mean([s['local (other seed)'] for s in scores.values()]):.4f}, "
            f"site model {np.mean([s['site model'] for s in scores.values()]):.4f}")
    result = {"set": name, "sites": str(args.sites), "second_seed": args.seed, "summary": summarise(per_site),
              "per_site": facts, "per_task": per_site, "minutes": round((time.perf_counter() - t0) / 60, 1),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("seed_noise_quick.json" if args.quick else f"seed_noise_{name}.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {path} and {path.with_suffix('.md')}")
    return result


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"# Seed noise of the federation-gain comparison: {result['set']} (`python -m benchmarks.seed_noise`)",
             "",
             f"Sites: `{result['sites']}`; second local-only seed {result['second_seed']}; test fold; "
             f"{result['date']}, {result['minutes']} min. Ensembles are the plain mean of two models' predictions.",
             "",
             "| model | mean test metric | pairs won against local |",
             "|---|---:|---:|"]
    for col in COLUMNS:
        c = s[col]
        pct = 100 * c["won_vs_local"] / max(c["pairs"], 1)
        lines.append(f"| {col} | {c['mean']:.4f} | {c['won_vs_local']}/{c['pairs']} ({pct:.0f} %) |")
    h2h = s["local + site model vs local + local (other seed)"]
    lines += ["", "local + site model against local + local (other seed): better on "
              f"{h2h['won']}/{h2h['pairs']} pairs.",
              "", "Per site: " + "; ".join(f"{k}: {v['pairs']} pairs, "
                                           f"{'personalised' if v['personalised'] else 'federated'} "
                                           f"(round {v['round']})" for k, v in result["per_site"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
