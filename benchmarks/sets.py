"""The public data sets the benchmarks run on: the key, each set's spec, preparation, site splits.

* `BENCHMARK_KEY_TEXT` / `benchmark_key`: the fixed, **public** consortium key of every benchmark.
  It only decides the bit permutation and the fold hash; a benchmark must be reproducible, and
  no real data is protected by it. Never use it for a real consortium (`fedmol keygen` makes one).
* `TOX21_TASKS`, `MODEL`, `SETS`: the sets of the federation benchmarks (file, id column, how
  many sites and how they are split, metric, consortium tasks, the federation settings each set
  runs with, and the sizes and trunk of its ``--quick`` smoke run); `federation_config` turns one into a
  `fedmol.config.FederationConfig`.
* `prepared_store`: prepare a CSV once with the benchmark key and cache the store under
  ``--work`` (preparation is the slow part: ~1 min for Tox21, ~5 min for chembl_5thresh).
* `split_sites`: one set's store split into its sites; `save_sites` writes them as
  ``site-0 .. site-N-1``, as the simulation expects them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import log, quiet_warnings

BENCHMARK_KEY_TEXT = b"fedmol public benchmark key - not a secret, never use for real data"

TOX21_TASKS = ["NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD", "NR-PPAR-gamma",
               "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53"]
MODEL = {"n_bits": 2048, "hidden": "1000", "dropout": 0.5, "input_transform": "binary"}
# Why these settings: benchmarks/results/federation_gain_notes.md.
SETS: dict[str, dict[str, Any]] = {
    "tox21": {
        "file": "tox21.csv.gz", "id_col": "mol_id", "sites": 4, "split": "by_scaffold", "metric": "ROC-AUC",
        "consortium": ",".join(f"{t}:classification" for t in TOX21_TASKS),
        "federation": {"strategy": "fedavg", "optimizer": "sgd", "lr": 1.0, "lr_decay": 0.92, "momentum": 0.9,
                       "local_epochs": 2, "batch_size": 128, "num_server_rounds": 24},
        "quick": {"nrows": 2500, "num_server_rounds": 3, "baseline_epochs": 4, "model": {"hidden": "64"}},
    },
    "chembl_5thresh": {
        "file": "chembl_5thresh.csv.gz", "id_col": None, "sites": 5, "split": "by_task", "metric": "R²",
        "consortium": "", "model": {"hidden": "2000"},
        "federation": {"strategy": "fedavg", "optimizer": "sgd", "lr": 0.1, "lr_decay": 1.0, "momentum": 0.9,
                       "local_epochs": 2, "batch_size": 128, "num_server_rounds": 20, "head_epochs": 0,
                       "finetune_epochs": 20, "finetune_lr": 0.03, "finetune_patience": 5},
        "quick": {"nrows": 2000, "num_server_rounds": 2, "baseline_epochs": 3, "model": {"hidden": "64"}},
    },
}


def benchmark_key() -> bytes:
    """The fixed, public 32-byte key of the benchmarks (sha256 of ``BENCHMARK_KEY_TEXT``)."""
    return hashlib.sha256(BENCHMARK_KEY_TEXT).digest()


def prepared_store(data: Path, work: Path, *, radius: int = 2, n_bits: int = 2048, nrows: int | None = None,
                   id_col: str | None = None, workers: int = 2) -> Any:
    """The file (its first ``nrows`` rows) as one SiteStore (scaffold folds, permuted bits), cached in ``work``."""
    quiet_warnings()
    import pandas as pd

    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec
    from fedmol.datasets.store import SiteStore

    settings = PrepareSettings(table=TableSpec(smiles_col="smiles", id_col=id_col),
                               featurize=FeaturizeSettings(radius=radius, n_bits=n_bits))
    identity = [str(data.name), data.stat().st_size, nrows, settings.to_dict(), BENCHMARK_KEY_TEXT.decode()]
    tag = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = work / "prepared" / f"{data.name.split('.')[0]}-{tag}"
    if (path / "settings.json").exists():
        log(f"prepared store of {data.name} from cache {path}")
        return SiteStore.load(path)
    t0 = time.perf_counter()
    log(f"preparing {data.name}{f' (first {nrows} rows)' if nrows else ''} ...")
    frame = pd.read_csv(data, nrows=nrows)
    res = prepare_frame(frame, benchmark_key(), None, settings, workers=workers, progress=False, source=str(data))
    res.store.save(path)
    log(f"prepared {res.store.n_compounds} compounds in {time.perf_counter() - t0:.0f} s -> {path}")
    return res.store


def split_sites(store: Any, spec: dict[str, Any], seed: int) -> list[Any]:
    """``store`` split into ``spec["sites"]`` site stores, by scaffold cluster or by task."""
    from fedmol.datasets.partition import by_scaffold, by_task

    if spec["split"] == "by_scaffold":
        return [store.subset(rows) for rows in by_scaffold(store, spec["sites"], seed)]
    return [store.subset(rows, names) for rows, names in by_task(store, spec["sites"], seed)]


def save_sites(parts: list[Any], out: Path) -> dict[str, Path]:
    """Save site stores as ``out/site-<i>`` (the simulation's partition-id naming)."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    paths: dict[str, Path] = {}
    for i, store in enumerate(parts):
        name = f"site-{i}"
        store.settings["site_name"] = name
        paths[name] = store.save(out / name)
    return paths


def federation_config(name: str, n_sites: int, sites_dir: Path, output_dir: Path, *, quick: bool, seed: int,
                      experiment: str, run_name: str) -> Any:
    """The federation of set ``name`` as the benchmarks run it (model, rounds, optimiser, quorum)."""
    from fedmol.config import FederationConfig

    spec = SETS[name]
    fed = dict(spec["federation"])
    model = {**MODEL, **spec.get("model", {})}
    if quick:  # the smoke run: fewer rounds, a small trunk
        if "num_server_rounds" in spec["quick"]:
            fed["num_server_rounds"] = spec["quick"]["num_server_rounds"]
        model.update(spec["quick"].get("model", {}))
    return FederationConfig(
        **model, **fed, consortium_tasks=spec["consortium"], min_sites=n_sites,
        seed=seed, eval_min_labels=10, num_threads=1, sim_store_dir=str(sites_dir), output_dir=str(output_dir),
        table_name=name, report_task_names=True, register_model=False, experiment=experiment, run_name=run_name,
    )
