"""How the simulated federation scales with the number of sites: time per round and memory.

    .venv/bin/python -m benchmarks.scale            # 10, 30 and 100 sites, 3 rounds each (~10 min)
    .venv/bin/python -m benchmarks.scale --quick    # smoke run: 2 sites, 2 rounds, 800 compounds
    .venv/bin/python -m benchmarks.scale --sites 10,30,100,200 --rounds 2

Setup: Tox21 prepared once (ECFP4, 2,048 bits, the fixed public benchmark key; cached like
`federation_gain.py`), split into N sites by scaffold cluster (fedmol.datasets.partition.by_scaffold),
all 12 tasks as consortium heads, a small trunk (``hidden=64``), 1 local epoch per round, FedAvg,
Flower's simulation engine with 1 CPU per virtual client (so 2 clients train at a time on this
2-core machine) and ``num-threads=1``. Small sites rarely meet MELLODDY's 25/25 training quorum,
so the site stores are cut with a lower quorum (>= 3 actives and >= 3 inactives) to keep every
site training: this benchmark measures the machinery, not model quality.

Measured per N:

* **time per round**: wall clock between Flower's ``[ROUND k/M]`` log lines (each round =
  train on every site + evaluate on every site + the server's validation, aggregation,
  checkpoint and MLflow logging). Round 1 includes Ray's start-up (~10 s), so the steady-state
  figure is the mean of rounds 2..M.
* **memory**: the sum of RSS over the SuperLink's whole process tree (SuperExec, the simulation
  process with the ServerApp, Ray's GCS/raylet and its workers), sampled every 0.5 s with psutil;
  the peak and the mean are reported. RSS double-counts pages shared between processes (e.g.
  torch's libraries in every Ray worker), so the sum is an upper bound on what the machine needs.

Outputs: ``benchmarks/results/scale.json`` and ``scale.md``. Every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, RESULTS, flower_leftovers, log, quiet_warnings, run_flower
from benchmarks.sets import TOX21_TASKS, prepared_store, save_sites

GiB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 sites, 2 rounds, 800 compounds")
    p.add_argument("--sites", default=None, help="comma-separated site counts (default 10,30,100)")
    p.add_argument("--rounds", type=int, default=None, help="server rounds per federation (default 3)")
    p.add_argument("--hidden", default="64")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedmol-bench",
                   help="prepared-store cache, site stores, Flower and server outputs")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def run_n(store: Any, n: int, args: argparse.Namespace, rounds: int) -> dict[str, Any]:
    from fedmol.config import FederationConfig
    from fedmol.datasets.partition import by_scaffold
    from fedmol.datasets.tasks import QuorumSettings

    quorum = QuorumSettings(min_actives=3, min_inactives=3, min_fold_actives=0, min_fold_inactives=0)
    work = args.work / "scale" / f"n{n}"
    parts = [store.subset(rows, quorum=quorum) for rows in by_scaffold(store, n, args.seed)]
    save_sites(parts, work / "sites")
    if (work / "server").exists():
        shutil.rmtree(work / "server")
    cfg = FederationConfig(
        num_server_rounds=rounds, min_sites=n, n_bits=2048, hidden=args.hidden, dropout=0.2, local_epochs=1,
        lr=0.5, consortium_tasks=",".join(f"{t}:classification" for t in TOX21_TASKS), num_threads=1,
        seed=args.seed, sim_store_dir=str(work / "sites"), output_dir=str(work / "server"), register_model=False,
        table_name=f"scale-{n}", experiment="bench-scale", run_name=f"scale-{n}",
        finetune_epochs=0, local_baseline=False,  # the federation's cost, not the sites' extras
    )
    sizes = [p.n_compounds for p in parts]
    log(f"{n} sites: {min(sizes)}-{max(sizes)} compounds per site; federation of {rounds} rounds ...")
    run = run_flower(cfg, n, work, label=f"{n} sites", sample_memory=True)
    if run.code != 0 or not run.outputs or not run.round_seconds:
        raise RuntimeError(f"{n} sites: the federation failed (exit {run.code}):\n" + "\n".join(run.log_tail))
    steady = run.round_seconds[1:] or run.round_seconds
    row = {
        "sites": n, "rounds": rounds, "compounds_per_site": {"min": min(sizes), "max": max(sizes)},
        "seconds_total": run.seconds, "round_seconds": run.round_seconds,
        "seconds_per_round_steady": sum(steady) / len(steady),
        "seconds_per_site_round_steady": sum(steady) / len(steady) / n,
        "rss_peak_gib": run.rss_peak_bytes / GiB,
        "rss_mean_gib": (sum(r for _, r in run.rss_samples) / len(run.rss_samples) / GiB) if run.rss_samples else 0,
        "rss_samples": len(run.rss_samples),
    }
    log(f"{n} sites: {row['seconds_per_round_steady']:.1f} s per round after round 1 "
        f"(round 1 {run.round_seconds[0]:.1f} s), peak RSS of the process tree {row['rss_peak_gib']:.2f} GiB")
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    quiet_warnings()
    sites = [int(s) for s in (args.sites or ("2" if args.quick else "10,30,100")).split(",")]
    rounds = args.rounds or (2 if args.quick else 3)
    command = ".venv/bin/python -m benchmarks.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    store = prepared_store(DATA_DIR / "tox21.csv.gz", args.work, radius=2, n_bits=2048,
                           nrows=800 if args.quick else None, id_col="mol_id")
    rows = []
    try:
        for n in sites:
            rows.append(run_n(store, n, args, rounds))
    finally:
        left = flower_leftovers(args.work)
        if left:
            log("WARNING: Flower processes still running: " + "; ".join(left))
    total = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale_quick" if args.quick else "scale"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"command": command.strip(), "total_seconds": total, "machine": f"{platform.machine()}, 2 cores, no GPU",
         "hidden": args.hidden, "n_bits": 2048, "data": "tox21", "results": rows}, indent=2) + "\n")
    lines = [f"# Simulation scale{' (quick smoke test)' if args.quick else ''}", "",
             f"Command: `{command.strip()}` — {total / 60:.1f} min on {platform.machine()} (2 cores, no GPU). "
             f"Tox21 split by scaffold, hidden {args.hidden}, 2,048 bits, 1 local epoch, 1 CPU per virtual "
             "client. See the docstring of `benchmarks/scale.py` for what is measured.", "",
             "| sites | compounds/site | rounds | round 1 (s) | s/round after round 1 | s per site-round | "
             "peak RSS (GiB) | mean RSS (GiB) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["compounds_per_site"]
        lines.append(f"| {r['sites']} | {c['min']}–{c['max']} | {r['rounds']} | {r['round_seconds'][0]:.1f} | "
                     f"{r['seconds_per_round_steady']:.1f} | {r['seconds_per_site_round_steady']:.2f} | "
                     f"{r['rss_peak_gib']:.2f} | {r['rss_mean_gib']:.2f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    log(f"results: {args.out / stem}.json / .md")
    return rows


if __name__ == "__main__":
    main()
