"""CUDA check: local training and a small federation on the GPU, with and without mixed precision.

Run where a GPU is present (it refuses to run without one)::

    python -m benchmarks.gpu --prepare DIR     # once, on any machine with RDKit: Tox21 -> pooled + 4 site stores
    python -m benchmarks.gpu --stores DIR      # on the GPU machine (needs torch, numpy, pandas, scikit-learn only)

1. **Training** (`fedmol.models.training.train_epochs`, what `fedmol train` runs): the pooled Tox21
   store at the default model size (32,768 key-permuted ECFP bits, hidden 400, batch 128, SGD), on
   the CPU, on CUDA in float32 (``amp="off"``) and on CUDA with mixed precision (``amp="auto"``, the
   default). Samples per second and test ROC-AUC (test fold 0) for each.
2. **A small federation** on CUDA with mixed precision: 4 scaffold sites of Tox21, each a
   `fedmol.client.site.SiteNode` (the code a site runs in every round: `train_round`,
   `evaluate_round`), aggregated by the label-weighted mean (FedAvg's arithmetic) in this process.
   Flower's transport is left out: it moves numpy arrays and is measured by `benchmarks/rounds.py`;
   what the GPU changes is the sites' compute. Seconds per round and the sites' mean test ROC-AUC.

Results: ``benchmarks/results/gpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DATA_DIR, ROOT, fedavg_round
from benchmarks.sets import TOX21_TASKS as TASKS
from benchmarks.sets import benchmark_key

N_SITES = 4


def prepare(out: Path, n_bits: int, quick: bool) -> None:
    """The pooled Tox21 store and its 4 scaffold sites (needs RDKit)."""
    import pandas as pd

    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.partition import by_scaffold
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec

    df = pd.read_csv(DATA_DIR / "tox21.csv.gz")
    if quick:
        df = df.head(800)
    key = benchmark_key()  # the fixed public benchmark key: the figures are reproducible
    settings = PrepareSettings(table=TableSpec(smiles_col="smiles", id_col="mol_id", task_cols=TASKS),
                               featurize=FeaturizeSettings(n_bits=n_bits))
    store = prepare_frame(df, key, None, settings).store
    store.save(out / "pooled")
    for i, rows in enumerate(by_scaffold(store, N_SITES, seed=0)):
        site = store.subset(rows)
        site.settings["site_name"] = f"site{i}"
        site.save(out / "sites" / f"site-{i}")
    print(f"wrote {out}/pooled and {N_SITES} sites")


def train_check(stores: Path, device: str, amp: str, epochs: int) -> dict:
    import torch

    from fedmol.datasets.store import SiteStore
    from fedmol.models.data import TaskData
    from fedmol.models.network import MultiTaskNet
    from fedmol.models.site_model import fold_rows
    from fedmol.models.spec import build_spec
    from fedmol.models.training import TrainConfig, evaluate, train_epochs

    store = SiteStore.load(stores / "pooled")
    tasks = [(t.name, t.kind) for t in store.tasks if t.trainable]
    torch.manual_seed(0)
    spec = build_spec(store.n_features, [], tasks, hidden=(400,))
    model = MultiTaskNet(spec)
    rows = {split: fold_rows(store.folds, split, test_fold=0, valid_fold=1) for split in ("train", "valid", "test")}
    data = {split: TaskData.from_store(store, spec, r) for split, r in rows.items()}
    cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.05, device=device, amp=amp, seed=0,
                      lr_step_epoch=10**6, lr_gamma=1.0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_epochs(model, data["train"], cfg)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    test = evaluate(model, data["test"], device=device)
    return {"device": device, "amp": amp, "epochs": epochs, "seconds": round(seconds, 3),
            "samples_per_s": round(epochs * data["train"].n / seconds, 1),
            "test_roc_auc": round(float(test.summary.get("roc_auc", float("nan"))), 4),
            "test_score": None if test.score is None else round(float(test.score), 4)}


def federation_check(stores: Path, device: str, rounds: int, overrides: list[str]) -> dict:
    import torch

    from fedmol import wire
    from fedmol.client.site import SiteNode
    from fedmol.config import FederationConfig
    from fedmol.models.network import MultiTaskNet

    cfg = FederationConfig(num_server_rounds=rounds, device=device, min_sites=N_SITES,
                           consortium_tasks=",".join(f"{t}:classification" for t in TASKS),
                           head_epochs=0).with_overrides(overrides)
    rounds = cfg.num_server_rounds
    sites = [SiteNode(p, p.name) for p in sorted((stores / "sites").glob("site-*"))]
    torch.manual_seed(cfg.seed)
    shared = {k: v.detach().cpu().numpy() for k, v in MultiTaskNet(sites[0].spec(cfg)).shared_state_dict().items()}
    fid = f"gpu-check-{device}"
    per_round = []
    for server_round in range(1, rounds + 1):
        t0 = time.perf_counter()
        shared, _ = fedavg_round(sites, cfg, shared, server_round=server_round, federation_id=fid)
        per_round.append(time.perf_counter() - t0)
    evals = [s.evaluate_round(cfg, shared, server_round=rounds, federation_id=fid, final=True) for s in sites]
    aucs = [float(json.loads(e.report[wire.REP_SUMMARY])["test_roc_auc"]) for e in evals]
    return {"device": device, "rounds": rounds, "overrides": overrides,
            "seconds_per_round": [round(s, 3) for s in per_round],
            "median_seconds_per_round": round(float(np.median(per_round)), 3),
            "site_test_roc_auc": aucs, "mean_test_roc_auc": round(float(np.nanmean(aucs)), 4) if aucs else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", type=Path, help="write the stores to this folder and stop (needs RDKit)")
    parser.add_argument("--stores", type=Path, help="the folder --prepare wrote")
    parser.add_argument("--n-bits", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config override of the federation (repeatable), e.g. --set lr=1.0")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 800 molecules, 1 epoch, 2 rounds")
    parser.add_argument("--allow-cpu", action="store_true", help="run the CUDA rows on the CPU (a smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare, args.n_bits, args.quick)
        return 0
    import torch

    if args.stores is None:
        parser.error("--stores DIR (written by --prepare) is needed")
    cuda = "cuda" if torch.cuda.is_available() else None
    if cuda is None and not args.allow_cpu:
        parser.error("no CUDA device: this benchmark measures the GPU (--allow-cpu for a smoke run)")
    gpu = cuda or "cpu"
    epochs, rounds = (1, 2) if args.quick else (args.epochs, args.rounds)
    result: dict = {"torch": torch.__version__, "python": platform.python_version(),
                    "gpu": torch.cuda.get_device_name(0) if cuda else None, "n_bits": args.n_bits}
    result["train"] = [train_check(args.stores, "cpu", "off", epochs),
                       train_check(args.stores, gpu, "off", epochs),
                       train_check(args.stores, gpu, "auto", epochs)]
    for row in result["train"]:
        print("train", row, flush=True)
    result["federation"] = federation_check(args.stores, gpu, rounds, args.overrides)
    print("federation", result["federation"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
