"""Local-only and pooled baselines on a public set split into simulated sites.

    .venv/bin/python -m benchmarks.baselines                      # tox21, 4 scaffold sites
    .venv/bin/python -m benchmarks.baselines --data ../shared/data/sider.csv.gz --sites 3
    .venv/bin/python -m benchmarks.baselines --quick              # 1,500 rows, 2 sites, 2 epochs: a smoke run

Steps: prepare the file once into an in-memory store (fedmol.datasets.prepare, scaffold folds), split
it into ``--sites`` sites by scaffold cluster (fedmol.datasets.partition.by_scaffold: no scaffold is
shared between sites), then train

* **local**: one model per site on that site's training folds only;
* **pooled**: one model on every site's training folds together (the centralised upper bound);

and evaluate every model on each site's test fold. All models have the same spec: every task of
the set in consortium heads (the same columns a federation would share). A site trains only on
the tasks that meet the store's quorums at that site (as a federation client does); ``--all-labels``
trains on every label it has. Early stopping on the site's (pooled: all sites') validation fold.

Outputs in ``--out`` (default benchmarks/results): ``baselines_<set>.json`` / ``.md`` (the
`fedmol.models.report.GainTable` of per-site, per-task ROC-AUC, or R² for regression sets) and
``baselines_<set>_details.json`` (every metric, histories, settings, timings); with ``--quick``
``baselines_<set>_quick.json`` / ``.md`` / ``_quick_details.json``.

The consortium key is **public and fixed** here (`benchmarks.sets.benchmark_key`). It only
decides the bit permutation and the fold hash; a benchmark must be reproducible, and no real
data is protected by it. Never use it for a real consortium (`fedmol keygen` makes one).

Per-site test folds are small (a few hundred compounds), so a task is scored at a site when it
has at least ``--min-pos``/``--min-neg`` (default 10/10, MELLODDY's per-fold evaluation quorum)
test labels of each class; the pooled model is also scored on the union of the test folds with
the 25/25 rule (``pooled_union`` in the details and the table notes).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DATA_DIR, RESULTS, json_default
from benchmarks.sets import benchmark_key


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA_DIR / "tox21.csv.gz", help="CSV(.gz) with a smiles column")
    p.add_argument("--rows", type=int, default=None, help="use only the first N rows of the file")
    p.add_argument("--smiles-col", default="smiles")
    p.add_argument("--id-col", default=None, help="compound id column (tox21: mol_id)")
    p.add_argument("--sites", type=int, default=4, help="number of simulated sites")
    p.add_argument("--seed", type=int, default=0, help="seed of the partition, weights and shuffles")
    p.add_argument("--radius", type=int, default=2, help="Morgan radius (2 = ECFP4)")
    p.add_argument("--n-bits", type=int, default=2048, help="folded fingerprint width")
    p.add_argument("--counts", action="store_true", help="count fingerprints (input log1p)")
    p.add_argument("--hidden", default="1000", help="hidden sizes, e.g. 1000 or 400,400")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--monitor", choices=("loss", "score"), default="score",
                   help="early-stopping monitor on the validation fold")
    p.add_argument("--test-fold", type=int, default=0)
    p.add_argument("--valid-fold", type=int, default=1)
    p.add_argument("--min-pos", type=int, default=10)
    p.add_argument("--min-neg", type=int, default=10)
    p.add_argument("--all-labels", action="store_true", help="train on tasks below the site quorums too")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: the first 1,500 rows, 2 sites, hidden 64, 2 epochs")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.sites, args.hidden, args.epochs = args.rows or 1500, 2, "64", 2
    return args


def prepare_store(args: argparse.Namespace) -> Any:
    """The file (its first ``--rows``) as one in-memory SiteStore (scaffold folds, permuted fingerprints)."""
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.prepare import PrepareSettings, prepare_file, prepare_frame
    from fedmol.datasets.readers import TableSpec

    id_col = args.id_col
    if id_col is None and args.data.name.startswith("tox21"):
        id_col = "mol_id"
    settings = PrepareSettings(
        table=TableSpec(smiles_col=args.smiles_col, id_col=id_col),
        featurize=FeaturizeSettings(radius=args.radius, n_bits=args.n_bits, counts=args.counts),
    )
    if args.rows:
        import pandas as pd

        frame = pd.read_csv(args.data, nrows=args.rows)
        return prepare_frame(frame, benchmark_key(), None, settings, workers=None, source=str(args.data))
    return prepare_file(args.data, benchmark_key(), None, settings, workers=None, progress=False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from fedmol.datasets.partition import by_scaffold
    from fedmol.models.data import TaskData
    from fedmol.models.metrics import MetricThresholds
    from fedmol.models.network import MultiTaskNet
    from fedmol.models.report import GainTable
    from fedmol.models.site_model import fold_rows
    from fedmol.models.spec import build_spec
    from fedmol.models.training import TrainConfig, evaluate, fit_target_scaling, train_epochs

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    prepared = prepare_store(args)
    store = prepared.store
    t_prep = time.perf_counter() - t0
    name = args.data.name.split(".")[0]
    stem = f"baselines_{name}_quick" if args.quick else f"baselines_{name}"
    site_rows = by_scaffold(store, args.sites, args.seed)
    sites = {f"site{i}": store.subset(rows) for i, rows in enumerate(site_rows)}
    tasks = [(t.name, t.kind) for t in store.tasks if t.trainable]
    hidden = tuple(int(h) for h in args.hidden.split(","))
    spec = build_spec(store.n_features, tasks, [], hidden=hidden, dropout=args.dropout,
                      input_transform="log1p" if args.counts else "binary")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                         monitor=args.monitor, seed=args.seed, device="auto")
    site_eval = MetricThresholds(min_pos=args.min_pos, min_neg=args.min_neg)
    trainable_only = not args.all_labels

    def split(s: Any, which: str) -> np.ndarray:
        return fold_rows(s.folds, which, args.test_fold, args.valid_fold)

    def data(s: Any, which: str) -> TaskData:
        only = trainable_only and which == "train"
        return TaskData.from_store(s, spec, split(s, which), trainable_only=only)

    def train(train_data: TaskData, valid_data: TaskData) -> tuple[MultiTaskNet, Any, float]:
        t = time.perf_counter()
        model = MultiTaskNet(spec, seed=args.seed)
        fit_target_scaling(model, train_data, heads=[h.name for h in spec.heads if h.kind == "regression"])
        result = train_epochs(model, train_data, config, valid=valid_data)
        return model, result, time.perf_counter() - t

    metric = "roc_auc" if all(k == "classification" for _, k in tasks) else "score"
    table = GainTable(name, metric)
    details: dict[str, Any] = {"sites": {}, "approaches": {"local": {}, "pooled": {}}}
    tests = {s: data(st, "test") for s, st in sites.items()}
    for site, st in sites.items():
        details["sites"][site] = {
            "n_compounds": st.n_compounds, "n_train": int(split(st, "train").size),
            "n_test": int(split(st, "test").size),
            "tasks_trainable": [t.name for t in st.tasks if t.trainable],
        }
        model, result, seconds = train(data(st, "train"), data(st, "valid"))
        ev = evaluate(model, tests[site], thresholds=site_eval)
        table.add("local", site, _pick(ev.per_task, metric))
        details["approaches"]["local"][site] = _run_details(ev, result, seconds)
        print(f"local  {site}: {ev.summary.get('roc_auc', float('nan')):.3f} mean ROC-AUC over "
              f"{int(ev.summary['n_classification'])} tasks ({seconds:.0f} s)", flush=True)

    pooled_train = TaskData.from_store(store, spec, split(store, "train"), trainable_only=trainable_only)
    pooled_valid = TaskData.from_store(store, spec, split(store, "valid"))
    model, result, seconds = train(pooled_train, pooled_valid)
    for site in sites:
        ev = evaluate(model, tests[site], thresholds=site_eval)
        table.add("pooled", site, _pick(ev.per_task, metric))
        details["approaches"]["pooled"][site] = _run_details(ev, result, seconds)
    union = evaluate(model, TaskData.from_store(store, spec, split(store, "test")))
    details["pooled_union"] = union.to_dict()
    print(f"pooled: {union.summary.get('roc_auc', float('nan')):.3f} mean ROC-AUC over "
          f"{int(union.summary['n_classification'])} tasks on the union of test folds ({seconds:.0f} s)")

    summary = table.summary()
    table.notes = {
        "command": "python -m benchmarks.baselines " + " ".join(sys.argv[1:] if argv is None else argv),
        "split": f"{args.sites} sites by scaffold cluster (seed {args.seed}); scaffold folds, test fold "
                 f"{args.test_fold}, validation fold {args.valid_fold}",
        "features": f"ECFP{2 * args.radius} {'counts' if args.counts else 'bits'} folded to {args.n_bits}, "
                    "permuted with the public benchmark key",
        "model": f"hidden {hidden}, dropout {args.dropout}, Adam lr {args.lr}, <= {args.epochs} epochs, "
                 f"early stopping on validation {args.monitor} (patience {args.patience})",
        "site scoring": f"tasks with >= {args.min_pos} positives and >= {args.min_neg} negatives in the "
                        "site's test fold",
        "pooled on the union of test folds (25/25 rule)": f"{_fmt(union.summary.get('roc_auc'))} mean "
        f"ROC-AUC over {int(union.summary['n_classification'])} tasks",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_json(args.out / f"{stem}.json")
    table.to_markdown(args.out / f"{stem}.md")
    details.update({
        "dataset": str(args.data), "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary, "prepare_summary": prepared.summary, "prepare_seconds": t_prep,
        "total_seconds": time.perf_counter() - t0, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    })
    (args.out / f"{stem}_details.json").write_text(
        json.dumps(details, indent=2, sort_keys=True, default=json_default) + "\n")
    print(table.markdown().split("\n## site0")[0])
    return details


def _pick(per_task: dict[str, dict[str, float]], metric: str) -> dict[str, float]:
    if metric == "score":
        return {t: m.get("roc_auc", m.get("r2", float("nan"))) for t, m in per_task.items()}
    return {t: m[metric] for t, m in per_task.items() if metric in m}


def _run_details(ev: Any, result: Any, seconds: float) -> dict[str, Any]:
    return {"eval": ev.to_dict(), "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "train_seconds": seconds, "history": [r.__dict__ for r in result.history]}


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3f}"



if __name__ == "__main__":
    main()
