"""Scoring speed: raw RDKit against `fedmol score` end to end and `fedmol serve`, in one run.

    .venv/bin/python -m benchmarks.score [--data ../shared/data/muv.csv.gz]
    .venv/bin/python -m benchmarks.score --quick    # a smoke run: 500 molecules, 2 score rows, 1 request

Model: the consortium defaults (ECFP6 = Morgan r3, 32,768 bits, trunk 400, dropout 0.2), one
classification head per task column of the data (17 for MUV), random weights (speed does not
depend on the weights), standardisation settings as `fedmol prepare` writes them by default.

Rows (molecules per second):
  raw RDKit      MolFromSmiles + Morgan r3 GetFingerprint (32k bits), one process: the baseline.
                 Measured right before and after every fedmol row on --pair molecules spread
                 over the file, and every ratio uses the mean of that pair.
  score ...      `fedmol score FILE --out OUT.parquet` in a child process: gzip CSV in, Parquet
                 predictions + rejects out, progress bar, per settings:
                   standardize=model  MolStandardize as the model's sites did (the default;
                                      tautomer canonicalisation dominates), on --std-limit molecules
                   standardize=off    no standardisation (faithful for a model prepared with
                                      --no-standardize, or for inputs fedmol already standardised)
                   mc=20 / mc=0       MC-dropout samples (20 is the default)
                   no canonical SMILES  --no-canonical-smiles: RDKit's SMILES writer skipped
                   workers=1 / all    process pool over chunks (each worker's start-up, ~2-3 CPU s
                                      for imports and the model, is part of the time: the rows on
                                      the file 3 times over show the scaling once it is amortised)
                 rate = molecules / the scoring loop's seconds (file in to predictions out,
                 worker start-up included; wall_s adds the command's imports and model loading),
                 and per CPU second (the loop's CPU time, workers included).
                 ratio per core = per-CPU-second rate / paired raw per-CPU-second rate: CPU time,
                 unlike wall time, does not depend on how many other jobs share the cores. Peak RSS of the main
                 process and of the largest worker; 10k vs all rows shows memory stays flat.
  serve          `fedmol serve` on 127.0.0.1 (fedmol.scoring.local_service), sequential POST
                 /v1/score requests of 1,000 SMILES (CPU time of the server and its scoring workers,
                 from psutil; JSON parsing and answers included).
Also: how many molecules standardisation changes (canonical SMILES with vs without), which is
what skipping it would get wrong for a model trained with it.
Results: ``score.json`` in ``--out`` (default benchmarks/results; ``score_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import DATA_DIR, RESULTS, ROOT


def build_model(root: Path, tasks: list[str]) -> tuple[Path, Path]:
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.keys import generate_key_file, key_fingerprint, load_key
    from fedmol.datasets.standardize import StandardizeSettings
    from fedmol.models.io import save_model
    from fedmol.models.network import MultiTaskNet
    from fedmol.models.spec import build_spec

    key_path = generate_key_file(root / "consortium.key")
    fs = FeaturizeSettings()  # r3, 32768 bits
    spec = build_spec(fs.n_bits, [(t, "classification") for t in tasks], [], hidden=(400,), dropout=0.2)
    meta = {"federation_id": "bench", "key_fingerprint": key_fingerprint(load_key(key_path)),
            "prep_settings": {"standardize": StandardizeSettings().to_dict(), "featurize": fs.to_dict()}}
    return save_model(root / "model", MultiTaskNet(spec, seed=0), meta=meta), key_path


def raw_rate(smiles: list[str]) -> tuple[float, float]:
    """Molecules per wall second and per CPU second of parse + Morgan r3 32k-bit fingerprint."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=32768)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            gen.GetFingerprint(mol)
    return len(smiles) / (time.perf_counter() - t0), len(smiles) / (time.process_time() - c0)


def run_child(args: list[str]) -> dict[str, float]:
    """`fedmol score ARGS` in a fresh process; wall, CPU and peak RSS (MiB) of it and its workers."""
    code = ("import json, resource, sys, time\n"
            "from fedmol.cli import main\n"
            "t = time.perf_counter(); rc = main(sys.argv[1:]); wall = time.perf_counter() - t\n"
            "s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'rc': rc, 'wall_s': wall, 'cpu_s': s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime,"
            " 'rss_main_mib': s.ru_maxrss / 1024, 'rss_worker_mib': c.ru_maxrss / 1024}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=7200)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"fedmol score failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    found = re.search(r" in ([0-9.]+) s \(", proc.stderr)
    out["scoring_s"] = float(found.group(1)) if found else float("nan")
    found = re.search(r"; ([0-9.]+) CPU s", proc.stderr)
    out["scoring_cpu_s"] = float(found.group(1)) if found else float("nan")
    if out["rc"] != 0:
        raise RuntimeError(f"fedmol score exited {out['rc']}: {proc.stderr[-2000:]}")
    return out


def write_subset(data: Path, n: int | None, path: Path, times: int = 1) -> Path:
    """The first ``n`` rows of ``data`` (None: all), ``times`` times over, as gzip CSV at ``path``."""
    frame = pd.read_csv(data, nrows=n)
    with gzip.open(path, "wt") as fh:
        pd.concat([frame] * times, ignore_index=True).to_csv(fh, index=False)
    return path


def standardisation_changes(smiles: list[str]) -> float:
    """Fraction of parsable molecules whose canonical SMILES changes under default standardisation."""
    from rdkit import Chem

    from fedmol.datasets.standardize import MoleculeReject, Standardizer, StandardizeSettings

    on, off = Standardizer(StandardizeSettings()), Standardizer(StandardizeSettings(enabled=False))
    changed = total = 0
    for s in smiles:
        try:
            a, b = Chem.MolToSmiles(on.from_smiles(s)), Chem.MolToSmiles(off.from_smiles(s))
        except MoleculeReject:
            continue
        total += 1
        changed += a != b
    return changed / max(total, 1)


def bench_service(model: Path, key: Path, smiles: list[str], n_requests: int, standardize: str) -> dict:
    import httpx
    import psutil

    from fedmol.scoring.local_service import local_service

    def service_cpu(server: psutil.Process) -> float:
        """CPU seconds of the server and its scoring workers (fedmol serve scores in child processes)."""
        total = 0.0
        for proc in (server, *server.children(recursive=True)):
            try:
                total += sum(proc.cpu_times()[:2])
            except psutil.NoSuchProcess:
                continue
        return total

    rows = []
    with local_service(model, key, "--standardize", standardize, "--max-molecules", "1000",
                       "--rate-limit", "10000000", "--mc-samples", "20") as svc:
        server = psutil.Process(svc.pid)
        with httpx.Client(timeout=600) as client:
            client.post(f"{svc.url}/v1/score", json=smiles[:50], headers=svc.headers)  # warm-up
            cpu0 = service_cpu(server)
            t0 = time.perf_counter()
            for i in range(n_requests):
                batch = smiles[i * 1000:(i + 1) * 1000]
                r = client.post(f"{svc.url}/v1/score", json=batch, headers=svc.headers)
                r.raise_for_status()
                rows.append(r.json()["n_read"])
            wall = time.perf_counter() - t0
            cpu = service_cpu(server) - cpu0
        rss = sum(p.memory_info().rss for p in (server, *server.children(recursive=True))) / 2**20
    return {"requests": n_requests, "molecules": sum(rows), "wall_s": round(wall, 2),
            "per_s": round(sum(rows) / wall, 1), "server_cpu_s": round(cpu, 2),  # server + scoring workers
            "per_cpu_s": round(sum(rows) / cpu, 1), "rss_server_mib": round(rss, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR / "muv.csv.gz")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 500 molecules; of the score rows only the defaults on one worker and "
                             "standardize=off on every core; one request to the service (standardize=off)")
    parser.add_argument("--std-limit", type=int, default=3000, help="molecules for the standardize=model rows")
    parser.add_argument("--pair", type=int, default=10_000, help="molecules of each paired raw measurement")
    parser.add_argument("--requests", type=int, default=20, help="1,000-molecule requests to the service")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result file")
    args = parser.parse_args(argv)
    if args.quick:
        args.std_limit, args.pair, args.requests = 50, 500, 1
    out_path = args.out / ("score_quick.json" if args.quick else "score.json")

    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    with tempfile.TemporaryDirectory(prefix="fedmol-bench-score-") as scratch:
        measure(args, Path(scratch), out_path)


def measure(args: argparse.Namespace, tmp: Path, out_path: Path) -> None:
    """Every row of the benchmark, with its model and data files in the scratch folder ``tmp``."""
    header = pd.read_csv(args.data, nrows=1)
    tasks = [c for c in header.columns if c != "smiles"]
    model, key = build_model(tmp, tasks)
    n_all = 500 if args.quick else None
    data = write_subset(args.data, n_all, tmp / "quick.csv.gz") if n_all else args.data
    smiles = pd.read_csv(data, usecols=["smiles"])["smiles"].astype(str).tolist()
    n = len(smiles)
    small = write_subset(args.data, min(10_000, n // 2 if args.quick else 10_000), tmp / "10k.csv.gz")
    triple = write_subset(data, None, tmp / "x3.csv.gz", times=3)  # a larger library: start-up amortised
    std_file = write_subset(args.data, args.std_limit, tmp / "std.csv.gz")
    cores = os.cpu_count() or 1
    raw_rate(smiles[:500])  # warm-up
    sample = smiles[::max(1, n // args.pair)]  # spread over the file: the same mix of molecules
    result: dict = {"data": str(args.data), "molecules": n, "cpu_count": cores, "python": platform.python_version(),
                    "model": f"ECFP6 (r3) 32,768 bits, trunk 400, dropout 0.2, {len(tasks)} classification tasks",
                    "rows": []}
    t0 = time.perf_counter()
    wall_rate, cpu_rate = raw_rate(smiles)
    result["raw_full"] = {"molecules": n, "per_s": round(wall_rate, 1), "per_cpu_s": round(cpu_rate, 1),
                          "load": os.getloadavg()[0]}
    print(f"raw RDKit on all {n:,}: {wall_rate:,.0f}/s, {cpu_rate:,.0f} per CPU s", flush=True)

    runs = [  # (label, file, standardize, mc, workers)
        ("defaults (standardize=model, mc=20)", std_file, "model", 20, 1),
        ("defaults (standardize=model, mc=20)", std_file, "model", 20, cores),
        ("standardize=off, mc=20", data, "off", 20, 1),
        ("standardize=off, mc=20", data, "off", 20, cores),
        ("standardize=off, mc=20, no canonical SMILES", data, "off+nocanon", 20, 1),
        ("standardize=off, mc=0", data, "off", 0, 1),
        ("standardize=off, mc=20, 10k rows", small, "off", 20, 1),
        ("standardize=off, mc=20, the file 3 times", triple, "off", 20, 1),
        ("standardize=off, mc=20, the file 3 times", triple, "off", 20, cores),
    ]
    if args.quick:  # the two ways a file is scored: standardised on one worker, unstandardised on a pool
        runs = [runs[0], runs[3]]
    for label, path, std, mc, workers in runs:
        before = raw_rate(sample)
        load = os.getloadavg()[0]
        outp = tmp / "out.parquet"
        std, *extra = std.split("+")
        flags = ["--no-canonical-smiles"] if "nocanon" in extra else []
        stats = run_child(["score", str(path), "--model", str(model), "--key-file", str(key), "--out", str(outp),
                           "--standardize", std, "--mc-samples", str(mc), "--workers", str(workers), *flags])
        after = raw_rate(sample)
        paired_wall, paired = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        scored = len(pd.read_parquet(outp, columns=["line"]))
        rejected = len(pd.read_csv(tmp / "out.parquet.rejects.csv"))
        count = scored + rejected
        rate = count / stats["scoring_s"]
        cpu_rate = count / stats["scoring_cpu_s"]
        row = {"name": f"score {label}", "workers": workers, "molecules": count, "scored": scored,
               "rejected": rejected, "wall_s": round(stats["wall_s"], 2),
               "scoring_s": round(stats["scoring_s"], 2), "cpu_s": round(stats["cpu_s"], 2),
               "scoring_cpu_s": round(stats["scoring_cpu_s"], 2), "per_s": round(rate, 1),
               "per_cpu_s": round(cpu_rate, 1), "raw_paired_per_s": round(paired_wall, 1),
               "raw_paired_per_cpu_s": round(paired, 1), "ratio_per_core": round(cpu_rate / paired, 3),
               "rss_main_mib": round(stats["rss_main_mib"], 1), "rss_worker_mib": round(stats["rss_worker_mib"], 1),
               "load_before": round(load, 2)}
        result["rows"].append(row)
        print(f"{row['name']:<40} x{workers}: {count:>7,} mol {row['scoring_s']:>7.1f} s {rate:>7,.0f}/s "
              f"{cpu_rate:>7,.0f}/CPU s  raw {paired:,.0f}/CPU s  ratio/core {row['ratio_per_core']:.2f}  "
              f"RSS {row['rss_main_mib']:.0f}/{row['rss_worker_mib']:.0f} MiB  (load {load:.1f})", flush=True)

    services = (("off", args.requests), ("model", max(1, min(3, args.requests))))
    for std, n_req in services[:1] if args.quick else services:
        paired_wall, paired = raw_rate(sample)
        svc = bench_service(model, key, smiles, n_req, std)
        svc.update({"name": f"serve 1,000-molecule requests, standardize={std}, mc=20",
                    "raw_paired_per_s": round(paired_wall, 1), "raw_paired_per_cpu_s": round(paired, 1),
                    "ratio_per_core": round(svc["per_cpu_s"] / paired, 3)})
        result["rows"].append(svc)
        print(f"{svc['name']:<48}: {svc['molecules']:,} mol {svc['per_s']:,.0f}/s {svc['per_cpu_s']:,.0f}/CPU s "
              f"ratio/core {svc['ratio_per_core']:.2f} "
              f"RSS {svc['rss_server_mib']:.0f} MiB", flush=True)

    result["standardisation_changes_fraction"] = round(standardisation_changes(smiles[:args.std_limit]), 4)
    print(f"standardisation changes the canonical SMILES of {result['standardisation_changes_fraction']:.1%} "
          f"of the first {args.std_limit:,} molecules", flush=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["rss_benchmark_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out_path}")


if __name__ == "__main__":
    main()
