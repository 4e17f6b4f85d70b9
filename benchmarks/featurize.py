"""Featurisation speed: fedmol against raw RDKit, one and two processes.

    .venv/bin/python -m benchmarks.featurize [--data ../shared/data/hiv.csv.gz] [--limit N]
    .venv/bin/python -m benchmarks.featurize --quick   # 1,000 molecules, one repeat: a smoke run

Rows (molecules per second, same SMILES list):
  raw           RDKit MolFromSmiles + Morgan r3 GetFingerprint (32k bits), one process: baseline
  featurise     fedmol featurisation without standardisation, one process: parse, sparse
                counts, key permutation, CSR assembly (fedmol.datasets.featurize.Featurizer)
  pipeline      prepare's per-structure hot path without standardisation, one process: the
                above plus canonical SMILES (duplicate identity) and the scaffold fold
  pipeline x2   the same over a pool of 2 worker processes (fedmol.datasets.structures)
  +std rows     the pipeline with MolStandardize (cleanup, parent, neutralise, tautomer cap 100)
Targets (issue 2): featurise >= 0.9x raw per core; pipeline x2 >= 1.7x pipeline x1.

Comparisons are paired so that a busy machine disturbs both sides alike: raw and featurise run
alternately on blocks of 1,000 molecules (their times are summed), and the one- and two-worker
pipelines alternate ``--repeat`` times (fastest kept). Wall and CPU time (this process and its
workers) are both recorded; the two-worker speed-up is wall time and needs idle cores, so the
load average is recorded too. Results go to ``featurize.json`` in ``--out`` (default
benchmarks/results; ``featurize_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from benchmarks.common import DATA_DIR, RESULTS


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its children) of one call."""
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
           + c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR / "hiv.csv.gz")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N molecules")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of the pipeline rows")
    parser.add_argument("--std-limit", type=int, default=4000,
                        help="molecules for the (slow) standardisation rows")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1,000 molecules, 100 standardised, one repeat")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result file")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.std_limit, args.repeat = min(args.limit or 1000, 1000), min(args.std_limit, 100), 1
    out = args.out / ("featurize_quick.json" if args.quick else "featurize.json")

    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    from fedmol.datasets.featurize import Featurizer, FeaturizeSettings, bit_permutation
    from fedmol.datasets.standardize import StandardizeSettings
    from fedmol.datasets.structures import StructureSettings, process_structures

    RDLogger.DisableLog("rdApp.*")
    smiles = pd.read_csv(args.data, nrows=args.limit)["smiles"].astype(str).tolist()
    if args.limit:
        smiles = smiles[: args.limit]
    n = len(smiles)
    key = bytes(range(32))
    fs = FeaturizeSettings()
    perm = bit_permutation(key, fs.n_bits)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=32768)
    featurizer = Featurizer(fs, perm)  # one per process, as in the workers

    def raw(block: list[str]) -> None:
        for s in block:
            m = Chem.MolFromSmiles(s)
            if m is not None:
                gen.GetFingerprint(m)

    def featurise(block: list[str]) -> None:
        for s in block:
            m = Chem.MolFromSmiles(s)
            if m is not None:
                featurizer.add(m)
        featurizer.finish().to_csr(fs.n_features)

    raw(smiles[:500])  # warm-up: RDKit's first calls load tables
    featurise(smiles[:500])
    rows: list[dict[str, object]] = []

    def record(name: str, count: int, procs: int, wall: float, cpu: float, load: float) -> None:
        rows.append({"name": name, "molecules": count, "processes": procs, "wall_s": round(wall, 3),
                     "cpu_s": round(cpu, 3), "per_s_wall": round(count / wall, 1),
                     "per_s_cpu": round(count / cpu, 1), "load_before": round(load, 2)})
        print(f"{name:48s} {count:>7,} mol  wall {wall:7.2f} s {count / wall:8,.0f}/s   "
              f"cpu {cpu:7.2f} s {count / cpu:8,.0f}/s per core  (load {load:.1f})", flush=True)

    # raw and featurise, alternating on blocks of 1,000 molecules
    load = os.getloadavg()[0]
    totals = {"raw": [0.0, 0.0], "featurise": [0.0, 0.0]}
    for b, start in enumerate(range(0, n, 1000)):
        block = smiles[start:start + 1000]
        pair = [("raw", raw), ("featurise", featurise)]
        for name, fn in pair if b % 2 == 0 else pair[::-1]:
            wall, cpu = _timed(lambda fn=fn, block=block: fn(block))
            totals[name][0] += wall
            totals[name][1] += cpu
    record("raw RDKit (parse + Morgan r3 bits)", n, 1, *totals["raw"], load)
    record("fedmol featurise, no standardisation", n, 1, *totals["featurise"], load)

    # pipelines: one and two workers alternate; the fastest run of each is kept
    no_std = StructureSettings(standardize=StandardizeSettings(enabled=False), featurize=fs)
    with_std = StructureSettings(featurize=fs)
    std_smiles = smiles[: args.std_limit]
    for label, settings, data in (("no standardisation", no_std, smiles),
                                  ("standardisation", with_std, std_smiles)):
        best = {1: (float("inf"), float("inf")), 2: (float("inf"), float("inf"))}
        load = os.getloadavg()[0]
        for r in range(args.repeat):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                res = _timed(lambda w=workers, d=data, s=settings: process_structures(d, s, key, workers=w))
                best[workers] = min(best[workers], res)
        record(f"fedmol pipeline, {label}", len(data), 1, *best[1], load)
        record(f"fedmol pipeline, {label}, 2 workers", len(data), 2, *best[2], load)

    r = {str(row["name"]): row for row in rows}
    names = list(r)
    ratios = {
        "featurise / raw, per core (CPU; target >= 0.9)": r[names[0]]["cpu_s"] / r[names[1]]["cpu_s"],
        "featurise / raw, wall": r[names[0]]["wall_s"] / r[names[1]]["wall_s"],
        "pipeline / raw, per core (CPU)": (r[names[0]]["cpu_s"] / n) / (r[names[2]]["cpu_s"] / n),
        "pipeline 2 workers / 1, wall (target >= 1.7)": r[names[2]]["wall_s"] / r[names[3]]["wall_s"],
        "pipeline+std 2 workers / 1, wall": r[names[4]]["wall_s"] / r[names[5]]["wall_s"],
    }
    print()
    for k, v in ratios.items():
        print(f"{k:56s} {v:5.2f}x")
    loads = [float(x["load_before"]) for x in rows]  # type: ignore[arg-type]
    print(f"load average (1 min) before the rows: {min(loads):.1f}-{max(loads):.1f} on "
          f"{os.cpu_count()} cores (wall-clock speed-ups need otherwise idle cores)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "data": str(args.data), "molecules": n, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "rdkit": Chem.rdBase.rdkitVersion,
        "rows": rows, "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
