"""Featurisation speed: fedmol against raw RDKit, one and two processes.

Usage: .venv/bin/python benchmarks/featurize.py [--data ../shared/data/hiv.csv.gz] [--limit N]

Measures, on the same SMILES list (molecules per second):
  raw        RDKit MolFromSmiles + Morgan r3 GetFingerprint (32k bits), one process: the baseline
  featurise  fedmol featurisation without standardisation, one process: parse, sparse counts,
             key permutation, CSR assembly (datasets.featurize.Featurizer)
  pipeline   prepare's per-structure hot path without standardisation, one process: the above
             plus canonical SMILES (duplicate identity) and the scaffold fold
  pipeline+std  the same with MolStandardize (cleanup, parent, neutralise, tautomer cap 100)
  pipeline x2   the pipeline without standardisation over a pool of 2 worker processes
Targets (issue 2): featurise >= 0.9x raw per core; pipeline x2 >= 1.7x pipeline x1.
Results go to benchmarks/results/featurize.json. The machine load is recorded: timings on a
busy machine are noisy, so the best of ``--repeat`` runs is kept for each row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "hiv.csv.gz"


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N molecules")
    parser.add_argument("--repeat", type=int, default=2, help="runs per row; the fastest is kept")
    parser.add_argument("--std-limit", type=int, default=10000,
                        help="molecules for the (slow) standardisation row")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "featurize.json")
    args = parser.parse_args()

    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    from datasets.featurize import FeaturizeSettings, Featurizer, bit_permutation
    from datasets.standardize import StandardizeSettings
    from datasets.structures import StructureSettings, process_structures

    RDLogger.DisableLog("rdApp.*")
    smiles = pd.read_csv(args.data)["smiles"].astype(str).tolist()
    if args.limit:
        smiles = smiles[: args.limit]
    n = len(smiles)
    key = bytes(range(32))
    fs = FeaturizeSettings()
    perm = bit_permutation(key, fs.n_bits)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=32768)

    def raw() -> None:
        for s in smiles:
            m = Chem.MolFromSmiles(s)
            if m is not None:
                gen.GetFingerprint(m)

    def featurise() -> None:
        f = Featurizer(fs, perm)
        for s in smiles:
            m = Chem.MolFromSmiles(s)
            if m is not None:
                f.add(m)
        f.finish().to_csr(fs.n_features)

    no_std = StructureSettings(standardize=StandardizeSettings(enabled=False), featurize=fs)
    std_smiles = smiles[: args.std_limit]

    def pipeline(workers: int, settings: StructureSettings, data: list[str]):
        return lambda: process_structures(data, settings, key, workers=workers)

    raw()  # warm-up: RDKit's first calls load tables
    rows = []
    for name, fn, count, procs in [
        ("raw RDKit (parse + Morgan r3 bits)", raw, n, 1),
        ("fedmol featurise, no standardisation", featurise, n, 1),
        ("fedmol pipeline, no standardisation", pipeline(1, no_std, smiles), n, 1),
        ("fedmol pipeline, standardisation", pipeline(1, StructureSettings(featurize=fs), std_smiles),
         len(std_smiles), 1),
        ("fedmol pipeline, no standardisation, 2 workers", pipeline(2, no_std, smiles), n, 2),
        ("fedmol pipeline, standardisation, 2 workers",
         pipeline(2, StructureSettings(featurize=fs), std_smiles), len(std_smiles), 2),
    ]:
        load = os.getloadavg()[0]
        seconds = _best(fn, args.repeat)
        rows.append({"name": name, "molecules": count, "processes": procs, "seconds": round(seconds, 3),
                     "per_second": round(count / seconds, 1), "load_before": round(load, 2)})
        print(f"{name:48s} {count:>7,} mol {seconds:8.2f} s {count / seconds:10,.0f} mol/s "
              f"(load {load:.1f})", flush=True)
    rate = {r["name"]: r["per_second"] for r in rows}
    ratios = {
        "featurise / raw (target >= 0.9)": rate[rows[1]["name"]] / rate[rows[0]["name"]],
        "pipeline / raw": rate[rows[2]["name"]] / rate[rows[0]["name"]],
        "pipeline 2 workers / 1 (target >= 1.7)": rate[rows[4]["name"]] / rate[rows[2]["name"]],
        "pipeline+std 2 workers / 1": rate[rows[5]["name"]] / rate[rows[3]["name"]],
    }
    print()
    for k, v in ratios.items():
        print(f"{k:48s} {v:5.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "data": str(args.data), "molecules": n, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "rdkit": Chem.rdBase.rdkitVersion,
        "rows": rows, "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
