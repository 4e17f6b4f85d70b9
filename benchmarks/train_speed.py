"""Training speed of the sparse input layer vs a dense ``nn.Linear`` over the same fingerprints.

    .venv/bin/python -m benchmarks.train_speed              # 32,768 bits, CPU (+ CUDA when present)
    .venv/bin/python -m benchmarks.train_speed --quick      # 4,096 bits, 512 compounds, 1 thread: a smoke run

Both trunks have the same shape (n_bits -> hidden -> 12 tasks, ReLU, dropout), the same
optimizer (Adam, as `fedmol.models.training.make_optimizer` builds it) and the same batches; the dense
path densifies each batch (B, n_bits) float32 as a dense model must. Reported: samples per
second of a training epoch (forward, masked BCE, backward, optimizer step), after one warm-up
epoch, best of ``--repeats`` epochs (other processes share the machine), for each torch CPU
thread count in ``--threads`` and on CUDA when present.

Fingerprints: real ECFP6 bits of tox21 molecules folded to ``--n-bits`` when the datasets
featuriser (RDKit) is available, else random sparse rows with ``--on-bits`` (~50) bits each.
``--data`` defaults to ``tox21.csv.gz`` in the public data beside this checkout
(``../shared/data``, see `benchmarks.common.DATA_DIR`). Writes ``train_speed.json`` to ``--out``
(default benchmarks/results; ``train_speed_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.common import DATA_DIR, RESULTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-bits", type=int, default=32768)
    p.add_argument("--n", type=int, default=4096, help="compounds per epoch")
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--on-bits", type=int, default=50, help="bits per row for random fingerprints")
    p.add_argument("--random", action="store_true", help="use random fingerprints even if RDKit is present")
    p.add_argument("--data", type=Path, default=DATA_DIR / "tox21.csv.gz",
                   help="molecules to fingerprint (default: tox21.csv.gz of ../shared/data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", default="1,2", help="torch CPU thread counts to measure, comma-separated")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 4,096 bits, 512 compounds, one timed epoch, 1 CPU thread")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the result file")
    args = p.parse_args(argv)
    if args.quick:
        args.n_bits, args.n, args.repeats, args.threads = 4096, 512, 1, "1"
    return args


def fingerprints(args: argparse.Namespace) -> tuple[sp.csr_matrix, str]:
    """(n, n_bits) float32 CSR of 0/1 and a description of where it came from."""
    if not args.random:
        try:
            import pandas as pd

            from fedmol.datasets.featurize import FeaturizeSettings, featurize_smiles
            from fedmol.datasets.standardize import MoleculeReject
        except ImportError:
            pass
        else:
            from rdkit import Chem, RDLogger

            RDLogger.DisableLog("rdApp.*")
            column = pd.read_csv(args.data)["smiles"].astype(str)
            smiles = [s for s in column if Chem.MolFromSmiles(s) is not None]
            reps = -(-args.n // len(smiles))
            smiles = (smiles * reps)[: args.n]
            try:
                X = featurize_smiles(smiles, FeaturizeSettings(radius=3, n_bits=args.n_bits))
            except MoleculeReject:
                pass
            else:
                X.data[:] = 1.0
                return X.astype(np.float32), f"ECFP6 bits of {args.data.name} molecules (RDKit)"
    rng = np.random.default_rng(args.seed)
    cols = np.concatenate([rng.choice(args.n_bits, size=args.on_bits, replace=False) for _ in range(args.n)])
    rows = np.repeat(np.arange(args.n), args.on_bits)
    X = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(args.n, args.n_bits))
    return X, f"random, {args.on_bits} on-bits per row"


def time_epochs(model: Any, X: sp.csr_matrix, Y: np.ndarray, *, dense: bool, device: Any,
                batch_size: int, repeats: int, seed: int) -> dict[str, Any]:
    """Samples/s of full training epochs (best and all), after a warm-up epoch."""
    import torch

    from fedmol.models.data import SparseBatch
    from fedmol.models.losses import masked_bce
    from fedmol.models.training import TrainConfig, make_optimizer

    model.to(device).train()
    optimizer = make_optimizer(model, TrainConfig())
    labels = torch.from_numpy(np.nan_to_num(Y)).to(device)
    mask = torch.from_numpy(~np.isnan(Y)).to(device)
    rng = np.random.default_rng(seed)

    def epoch() -> float:
        order = rng.permutation(X.shape[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for start in range(0, X.shape[0], batch_size):
            rows = np.sort(order[start : start + batch_size])
            block = X[rows]
            if dense:
                inputs: Any = torch.from_numpy(block.toarray()).to(device, non_blocking=True)
            else:
                inputs = SparseBatch.from_csr(block).to(device)
            optimizer.zero_grad(set_to_none=False)
            out = model(inputs)
            idx = torch.from_numpy(rows).to(device)
            loss = masked_bce(out, labels[idx], mask[idx]).mean()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return X.shape[0] / (time.perf_counter() - t)

    epoch()  # warm-up: allocations, optimizer state
    rates = [epoch() for _ in range(repeats)]
    return {"samples_per_s": max(rates), "all_epochs": rates}


def build_models(n_bits: int, hidden: int, n_tasks: int, seed: int) -> tuple[Any, Any]:
    """(sparse MultiTaskNet trunk + head, dense nn.Sequential with the same layers)."""
    import torch
    from torch import nn

    from fedmol.models.network import MultiTaskNet
    from fedmol.models.spec import build_spec

    spec = build_spec(n_bits, [(f"t{i}", "classification") for i in range(n_tasks)], [], hidden=(hidden,),
                      dropout=0.2)
    sparse_net = MultiTaskNet(spec, seed=seed)

    class SparseOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = sparse_net

        def forward(self, batch: Any) -> torch.Tensor:
            return self.net(batch)["consortium_classification"]

    torch.manual_seed(seed)
    dense = nn.Sequential(nn.Linear(n_bits, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, n_tasks))
    return SparseOnly(), dense


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    from fedmol.models.training import resolve_device

    X, source = fingerprints(args)
    rng = np.random.default_rng(args.seed)
    Y = (rng.random((X.shape[0], 12)) < 0.1).astype(np.float32)
    Y[rng.random(Y.shape) < 0.2] = np.nan
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(resolve_device("cuda"))
    results: dict[str, Any] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for device in devices:
            thread_counts = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [0]
            for threads in thread_counts:
                if threads:
                    torch.set_num_threads(threads)
                tag = device.type + (f"_{threads}threads" if threads else "")
                for kind in ("sparse", "dense"):
                    sparse_model, dense_model = build_models(args.n_bits, args.hidden, 12, args.seed)
                    model = sparse_model if kind == "sparse" else dense_model
                    r = time_epochs(model, X, Y, dense=kind == "dense", device=device,
                                    batch_size=args.batch_size, repeats=args.repeats, seed=args.seed)
                    results[f"{tag}_{kind}"] = r
                    print(f"{tag:14s} {kind:6s}: {r['samples_per_s']:9.0f} samples/s", flush=True)
                speedup = results[f"{tag}_sparse"]["samples_per_s"] / results[f"{tag}_dense"]["samples_per_s"]
                results[f"{tag}_speedup"] = speedup
                print(f"{tag}: sparse is {speedup:.1f}x faster than dense", flush=True)
    report = {
        "n_bits": args.n_bits, "n_compounds": int(X.shape[0]), "mean_on_bits": float(X.nnz / X.shape[0]),
        "fingerprints": source, "hidden": args.hidden, "batch_size": args.batch_size, "optimizer": "adam",
        "repeats": args.repeats, "results": results, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "load_average_1_5_15min_at_end": os.getloadavg(),
        "machine": f"{platform.machine()} {platform.processor()}",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": "python -m benchmarks.train_speed " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("train_speed_quick.json" if args.quick else "train_speed.json")).write_text(
        json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
