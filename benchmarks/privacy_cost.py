"""What privacy and transport options cost on Tox21: time per round and the federated ROC-AUC.

    .venv/bin/python -m benchmarks.privacy_cost            # 6 federations of ~4-6 min each
    .venv/bin/python -m benchmarks.privacy_cost --quick    # smoke run: float32 and float16 on 2,500 rows, 3 rounds

The Tox21 federation of `benchmarks/federation_gain.py` (4 scaffold sites, its model and
federation settings from `benchmarks.sets`, simulation engine, 1 CPU per virtual client), run
once per variant:

* ``float32``: the default;
* ``float16``: ``transport-dtype=float16`` (sites upload half the bytes; the server aggregates
  in float32);
* ``int8``: ``transport-dtype=int8`` (sites upload their update in 8 bits with a float32 scale
  per row, about a quarter of the bytes; `fedmol.transport`);
* ``secure-aggregation``: Flower's SecAgg+ (the server sees only the sum of the updates; four
  message round trips per round);
* ``central-dp``: ``dp=server-fixed`` with the run-config defaults (clipping norm 10, noise
  multiplier 0.1): Flower's server-side fixed clipping + Gaussian noise;
* ``central-dp-noise-0.01``: the same with a ten times smaller noise multiplier (weaker privacy).

``--only VARIANT`` reruns some variants and keeps the other rows of the previous results file.

Reported per variant: mean test ROC-AUC over sites (the federated column of federation_gain),
its change against float32, median seconds per round after round 1 (the server's
``round-wall-seconds``), and bytes a site uploads per round (from the outbox ledgers). Results:
benchmarks/results/privacy_cost.json and .md. The machine may be shared: the ROC-AUC does not
depend on load; the seconds do, so compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA_DIR, RESULTS, log, quiet_warnings, run_flower
from benchmarks.sets import FEATURES, SETS, federation_config, prepared_store, save_sites, split_sites

VARIANTS = {
    "float32": {},
    "float16": {"transport_dtype": "float16"},
    "int8": {"transport_dtype": "int8"},
    "secure-aggregation": {"secure_aggregation": True},
    "central-dp": {"dp": "server-fixed"},
    "central-dp-noise-0.01": {"dp": "server-fixed", "dp_noise_multiplier": 0.01},
}
QUICK_VARIANTS = ("float32", "float16")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: Tox21's quick slice (2,500 rows, 3 rounds), variants "
                        + " and ".join(QUICK_VARIANTS) + " unless --only says otherwise")
    p.add_argument("--only", choices=sorted(VARIANTS), action="append", help="run only this variant")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedmol-bench",
                   help="prepared-store cache, site stores, Flower and server outputs")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    args = p.parse_args(argv)
    if args.quick and not args.only:
        args.only = list(QUICK_VARIANTS)
    quiet_warnings()
    from mlflow.tracking import MlflowClient

    spec = SETS["tox21"]
    quick = spec["quick"] if args.quick else {}
    store = prepared_store(DATA_DIR / spec["file"], args.work, **FEATURES,
                           nrows=quick.get("nrows"), id_col=spec["id_col"])
    work = args.work / ("quick" if args.quick else "full") / "privacy-cost"
    sites = save_sites(split_sites(store, spec, 0), work / "sites")
    rows = []
    for name, change in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        out_dir = work / name
        shutil.rmtree(out_dir, ignore_errors=True)
        for path in sites.values():
            (path / "outbox.jsonl").unlink(missing_ok=True)
        cfg = federation_config("tox21", len(sites), work / "sites", out_dir / "server", quick=args.quick, seed=0,
                                experiment="bench-privacy-cost", run_name=name).replace(
            # the shared model's score is the result: no site model, no local-only baseline
            finetune_epochs=0, local_baseline=False, **change)
        log(f"{name}: {cfg.num_server_rounds} rounds")
        t0 = time.perf_counter()
        run = run_flower(cfg, len(sites), out_dir, label=name)
        table = run.federated_table(name)
        auc = table.summary()["federated"]["mean_over_sites"]
        client = MlflowClient(run.outputs["tracking_uri"])
        walls = [m.value for m in sorted(client.get_metric_history(run.outputs["mlflow_run_id"], "round-wall-seconds"),
                                         key=lambda m: m.step)]
        uploads = [json.loads(line)["bytes_total"] for path in sites.values()
                   for line in (path / "outbox.jsonl").read_text().splitlines() if '"phase": "train"' in line]
        rows.append({"variant": name, "settings": change, "mean_test_roc_auc": auc,
                     "median_round_s_after_1": statistics.median(walls[1:]) if len(walls) > 1 else None,
                     "upload_bytes_per_site_round": statistics.median(uploads) if uploads else None,
                     "total_s": time.perf_counter() - t0})
        log(f"{name}: ROC-AUC {auc:.4f}, {rows[-1]['median_round_s_after_1']:.2f} s/round")
    suffix = "_quick" if args.quick else ""
    previous = args.out / f"privacy_cost{suffix}.json"
    if args.only and previous.exists():  # keep the rows of the variants not rerun, in their order
        fresh = {r["variant"]: r for r in rows}
        old = [r for r in json.loads(previous.read_text()) if r["variant"] not in fresh]
        rows = sorted(old + rows, key=lambda r: list(VARIANTS).index(r["variant"]))
    ref = next((r["mean_test_roc_auc"] for r in rows if r["variant"] == "float32"), None)
    lines = ["| variant | mean test ROC-AUC | change vs float32 | s / round (median after round 1) | "
             "upload / site / round (MB) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        delta = "" if ref is None else f"{r['mean_test_roc_auc'] - ref:+.4f}"
        lines.append(f"| {r['variant']} | {r['mean_test_roc_auc']:.4f} | {delta} | {r['median_round_s_after_1']:.2f} "
                     f"| {r['upload_bytes_per_site_round'] / 1e6:.2f} |")
    text = (f"# Privacy and transport options on Tox21 ({len(sites)} sites, {cfg.num_server_rounds} rounds, "
            "simulation)\n\n" + "\n".join(lines) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"privacy_cost{suffix}.json").write_text(json.dumps(rows, indent=2))
    (args.out / f"privacy_cost{suffix}.md").write_text(text)
    print(text)
    return {"rows": rows}


if __name__ == "__main__":
    main()
