"""`fedmol train STORE` with its defaults, on the whole of Tox21: does a user who passes no flag get a good model?

    .venv/bin/python -m benchmarks.train_defaults            # 3 random keys, ~6 min on 2 cores
    .venv/bin/python -m benchmarks.train_defaults --keys 1   # one key

Tox21 is prepared as `fedmol prepare` does by default (ECFP6, 32,768 bits, scaffold folds) with
``--keys`` random consortium keys (the key decides the bit permutation and the folds, so each key
is another split), then `fedmol train STORE --out DIR` runs with no other option (test fold 0,
validation fold 1). Target (issue #12): mean test ROC-AUC over the keys >= 0.75.

Results: ``train_defaults.json`` / ``.md`` under ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA_DIR, RESULTS, log, quiet_warnings

TARGET = 0.75


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--keys", type=int, default=3, help="how many random keys (splits); default 3")
    p.add_argument("--nrows", type=int, default=None, help="first rows only (a smoke run)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1,500 rows, one key, 2 epochs (~1 min); "
                                                         "results as train_defaults_quick.*")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedmol-bench" / "train-defaults")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    quiet_warnings()
    extra: list[str] = []
    if args.quick:
        args.nrows, args.keys, extra = 1500, 1, ["--epochs", "2"]
    import pandas as pd

    from fedmol.cli import main as fedmol
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec

    frame = pd.read_csv(DATA_DIR / "tox21.csv.gz", nrows=args.nrows)
    runs = []
    t_all = time.perf_counter()
    for i in range(args.keys):
        key = secrets.token_bytes(32)  # a random key, as `fedmol keygen` makes
        store = args.work / f"key-{i}" / "store"
        settings = PrepareSettings(table=TableSpec(smiles_col="smiles", id_col="mol_id"))
        prepare_frame(frame, key, None, settings, progress=False).store.save(store)
        t0 = time.perf_counter()
        out = args.work / f"key-{i}" / "model"
        code = fedmol(["train", str(store), "--out", str(out), *extra])  # the console script's entry point
        if code != 0:
            raise SystemExit(f"fedmol train exited {code}")
        meta = json.loads((out / "meta.json").read_text())
        score = meta["test"]["summary"].get("mean_roc_auc", meta["test"]["score"])
        runs.append({"key": i, "test_roc_auc": round(float(score), 4), "seconds": round(time.perf_counter() - t0, 1),
                     "best_epoch": meta.get("best_epoch"), "epochs_run": len(meta.get("history", [])),
                     "recipe": meta.get("recipe")})
        log(f"key {i}: test ROC-AUC {score:.4f} ({runs[-1]['seconds']} s, best epoch {meta.get('best_epoch')})")
    mean = sum(r["test_roc_auc"] for r in runs) / len(runs)
    res = {"command": "fedmol train STORE --out DIR (no other option)", "runs": runs,
           "mean_test_roc_auc": round(mean, 4),
           "target": f">= {TARGET}", "met": mean >= TARGET, "nrows": args.nrows,
           "machine": f"{platform.machine()}, 2 cores, no GPU", "date": time.strftime("%Y-%m-%d"),
           "minutes": round((time.perf_counter() - t_all) / 60, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "train_defaults_quick" if args.quick else "train_defaults"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    lines = ["# `fedmol train` with its defaults on Tox21 (`python -m benchmarks.train_defaults`)", "",
             f"{res['date']}, {res['machine']}, {res['minutes']} min. ECFP6 32,768 bits, scaffold folds, "
             "test fold 0, validation fold 1; each key is a fresh random key (another split).", "",
             "| key | test ROC-AUC | epochs run | best epoch | seconds |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['key']} | {r['test_roc_auc']:.4f} | {r['epochs_run']} | {r['best_epoch']} | {r['seconds']} |"
              for r in runs]
    lines += ["", f"Mean {mean:.4f}; target >= {TARGET}: **{'met' if res['met'] else 'not met'}**."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    log(f"mean test ROC-AUC {mean:.4f} (target >= {TARGET}: {'met' if res['met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
