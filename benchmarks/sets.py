"""The public data sets the benchmarks run on: the key, each set's data facts, preparation, site splits.

* `BENCHMARK_KEY_TEXT` / `benchmark_key`: the fixed, **public** consortium key of every benchmark.
  It only decides the bit permutation and the fold hash; a benchmark must be reproducible, and
  no real data is protected by it. Never use it for a real consortium (`fedmol keygen` makes one).
* `TOX21_TASKS`, `SETS`: the sets of the federation benchmarks, data facts only (file, id column,
  how many sites and how they are split, metric, consortium tasks) and the sizes of each set's
  ``--quick`` smoke run. No set has a recipe or a model size of its own: `federation_config` is
  `fedmol.config.FederationConfig`'s defaults plus what is not a recipe (`RUN_KEYS`: the sites,
  seed, folders, names, reporting and MELLODDY's scoring quorum `EVAL_MIN_LABELS`).
* `FEATURES`: `fedmol prepare`'s default featurisation (ECFP6, 32,768 bits), the defaults' input width.
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
# `fedmol prepare`'s default featurisation (FeaturizeSettings: ECFP6 = radius 3, 32,768 bits), the
# width of run-config n-bits' default.
FEATURES = {"radius": 3, "n_bits": 32768}
EVAL_MIN_LABELS = 10  # MELLODDY's per-fold scoring quorum, the same for every approach
QUICK_HIDDEN = "64"  # --quick only: a small trunk for a smoke run, never a result
# Data facts per set. "quick": the smoke run's first rows of the file and its most rounds.
SETS: dict[str, dict[str, Any]] = {
    "tox21": {
        "file": "tox21.csv.gz", "id_col": "mol_id", "sites": 4, "split": "by_scaffold", "metric": "ROC-AUC",
        "consortium": ",".join(f"{t}:classification" for t in TOX21_TASKS),
        "quick": {"nrows": 2500, "num_server_rounds": 3},
    },
    "chembl_5thresh": {
        "file": "chembl_5thresh.csv.gz", "id_col": None, "sites": 5, "split": "by_task", "metric": "R²",
        "consortium": "",
        "quick": {"nrows": 1000, "num_server_rounds": 2},
    },
    "sider": {  # side-effect classes of 1,427 drugs, no missing label: 3 sites of private classes
        "file": "sider.csv.gz", "id_col": None, "sites": 3, "split": "by_task", "metric": "ROC-AUC",
        "consortium": "",
        "quick": {"nrows": 700, "num_server_rounds": 2},
    },
}
# The run-config keys `federation_config` sets (none is a recipe); every other key keeps its default
# (--quick: also num-server-rounds and hidden).
RUN_KEYS = ("consortium-tasks", "min-sites", "seed", "sim-store-dir", "output-dir", "experiment", "run-name",
            "table-name", "report-task-names", "register-model", "num-threads", "eval-min-labels")


def benchmark_key() -> bytes:
    """The fixed, public 32-byte key of the benchmarks (sha256 of ``BENCHMARK_KEY_TEXT``)."""
    return hashlib.sha256(BENCHMARK_KEY_TEXT).digest()


def prepared_store(data: Path, work: Path, *, radius: int = 3, n_bits: int = 32768, nrows: int | None = None,
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
    """The federation of set ``name``: `FederationConfig`'s defaults (whatever fedmol/config.py says
    today) with only `RUN_KEYS` set. ``quick``: a smoke run's fewer rounds and `QUICK_HIDDEN` trunk too."""
    from fedmol.config import FederationConfig

    spec = SETS[name]
    cfg = FederationConfig().replace(
        consortium_tasks=spec["consortium"], min_sites=n_sites, seed=seed, sim_store_dir=str(sites_dir),
        output_dir=str(output_dir), experiment=experiment, run_name=run_name, table_name=name,
        report_task_names=True, register_model=False, num_threads=1, eval_min_labels=EVAL_MIN_LABELS,
    )
    if quick:
        cfg = cfg.replace(num_server_rounds=min(cfg.num_server_rounds, spec["quick"]["num_server_rounds"]),
                          hidden=QUICK_HIDDEN)
    return cfg


def changed_keys(cfg: Any) -> dict[str, Any]:
    """The run-config keys of ``cfg`` that differ from `FederationConfig`'s defaults."""
    from fedmol.config import FederationConfig

    default = FederationConfig().to_run_config()
    return {k: v for k, v in cfg.to_run_config().items() if v != default[k]}
