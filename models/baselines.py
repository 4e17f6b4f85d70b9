"""Local-only and pooled baselines on the same sites, folds and model shape as a federation.

* **local**: each site trains alone on its training folds (early stopping on its validation fold)
  and is tested on its own test fold;
* **pooled**: all sites' training folds in one place (the upper reference a federation tries to
  reach). Consortium tasks are one column; private tasks stay separate per site (two sites'
  private "IC50" are different assays). Tested on each site's test fold.

Results are `fedmol.models.report.GainTable` values with metric ``score`` (ROC-AUC for classification,
R² for regression), the same table the federation writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fedmol.config import FederationConfig, TaskKind
from fedmol.datasets.store import SiteStore
from fedmol.datasets.tasks import TaskInfo
from fedmol.models.data import TaskData
from fedmol.models.metrics import MetricThresholds
from fedmol.models.network import MultiTaskNet
from fedmol.models.report import GainTable
from fedmol.models.spec import ModelSpec, build_spec
from fedmol.models.training import Monitor, TrainConfig, evaluate, fit_target_scaling, train_epochs

SEP = "::"  # pooled private task name: "<site>::<task>"


def _splits(store: SiteStore, cfg: FederationConfig) -> dict[str, np.ndarray]:
    f = store.folds
    return {"train": np.flatnonzero((f != cfg.test_fold) & (f != cfg.valid_fold)),
            "valid": np.flatnonzero(f == cfg.valid_fold), "test": np.flatnonzero(f == cfg.test_fold)}


def federation_recipe(cfg: FederationConfig, epochs: int | None = None, patience: int | None = 5,
                      monitor: Monitor = "loss") -> TrainConfig:
    """The centralised counterpart of the sites' training in a federation, for a baseline.

    Same optimizer, lr, momentum, batch size and weight decay as `fedmol.client.site.SiteNode.train_round`,
    and the same schedule: lr x ``lr-decay`` every ``local-epochs`` epochs (one server round).
    ``epochs`` defaults to the federation's total, rounds x local epochs. Early stopping on the
    validation fold (``patience``, None: off) is an advantage the federation does not get.
    """
    epochs = cfg.num_server_rounds * cfg.local_epochs if epochs is None else epochs
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
                       momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       lr_step_epoch=max(cfg.local_epochs, 1), lr_gamma=cfg.lr_decay,
                       patience=patience, monitor=monitor, seed=cfg.seed, device=cfg.device,
                       num_threads=cfg.num_threads or None)


def _train_and_test(store: SiteStore, consortium: list[tuple[str, TaskKind]], cfg: FederationConfig, epochs: int,
                    test_sets: Mapping[str, tuple[SiteStore, Callable[[str], str | None]]],
                    recipe: TrainConfig | None = None,
                    folds: tuple[str, ...] = ("test",)) -> dict[str, dict[str, dict]]:
    """Train one model on ``store``; fold ("test", "valid") -> site -> task -> metrics on each test store."""
    shared = {n for n, _ in consortium}
    private = [(t.name, t.kind) for t in store.trainable_tasks() if t.name not in shared]
    spec = build_spec(cfg.n_bits, consortium, private, hidden=cfg.hidden_sizes, dropout=cfg.dropout,
                      input_transform=cfg.input_transform)
    model = MultiTaskNet(spec, seed=cfg.seed)
    split = _splits(store, cfg)
    train = TaskData.from_store(store, spec, split["train"])
    valid = TaskData.from_store(store, spec, split["valid"])
    fit_target_scaling(model, train, [h.name for h in spec.heads if h.kind == "regression"])
    tc = recipe or TrainConfig(epochs=epochs, lr=1e-3, optimizer="adam", patience=5, monitor="loss", seed=cfg.seed,
                               device=cfg.device, num_threads=cfg.num_threads or None,
                               lr_step_epoch=max(epochs // 2, 1))
    train_epochs(model, train, tc, valid=valid)
    thresholds = MetricThresholds.at_least(cfg.eval_min_labels)
    out: dict[str, dict[str, dict]] = {fold: {} for fold in folds}
    for site, (test_store, rename) in test_sets.items():
        for fold in folds:
            test = _aligned(test_store, spec, rename, _splits(test_store, cfg)[fold])
            per_task = evaluate(model, test, device=cfg.device, thresholds=thresholds).per_task
            out[fold][site] = {name: m for t, m in per_task.items() if (name := _back(t, site)) is not None}
    return out


def _back(task: str, site: str) -> str | None:
    """Pooled column name -> the site's own task name (None for another site's private task)."""
    if SEP in task:
        owner, name = task.split(SEP, 1)
        return name if owner == site else None
    return task


def _aligned(store: SiteStore, spec: ModelSpec, rename: Callable[[str], str | None], rows: np.ndarray) -> TaskData:
    names = [rename(t.name) or f"\0{t.name}" for t in store.tasks]
    return TaskData.from_arrays(spec, store.X, store.Y, store.censor, names, rows)


def pooled_store(stores: Mapping[str, SiteStore], consortium: list[tuple[str, TaskKind]]) -> SiteStore:
    """All sites' rows in one store; private tasks renamed ``<site>::<task>``, consortium tasks shared."""
    shared = {n for n, _ in consortium}
    columns: dict[str, TaskInfo] = {}
    for site, store in stores.items():
        for t in store.tasks:
            name = t.name if t.name in shared else f"{site}{SEP}{t.name}"
            columns.setdefault(name, TaskInfo(name=name, kind=t.kind, source=t.source, trainable=True))
    index = {n: j for j, n in enumerate(columns)}
    n_total = sum(s.n_compounds for s in stores.values())
    Y = np.full((n_total, len(columns)), np.nan, np.float32)
    censor = np.zeros(Y.shape, np.int8)
    start = 0
    for site, store in stores.items():
        rows = slice(start, start + store.n_compounds)
        for j, t in enumerate(store.tasks):
            if not t.trainable:
                continue
            col = index[t.name if t.name in shared else f"{site}{SEP}{t.name}"]
            Y[rows, col] = store.Y[:, j]
            censor[rows, col] = store.censor[:, j]
        start += store.n_compounds
    X = sp.vstack([s.X for s in stores.values()], format="csr")
    folds = np.concatenate([s.folds for s in stores.values()])
    return SiteStore(X=X, Y=Y, censor=censor, folds=folds, tasks=list(columns.values()))


def train_baselines(store_paths: Mapping[str, Path], cfg: FederationConfig, *, epochs: int = 25,
                    dataset: str | None = None, on_model: Callable[[str], None] | None = None,
                    recipe: TrainConfig | None = None, validation: GainTable | None = None) -> GainTable:
    """Local-only (per site) and pooled models, each tested on every site's test fold.

    Default recipe: Adam lr 1e-3, <= ``epochs`` epochs, lr x0.3 at half-way, early stopping on the
    validation loss (patience 5). ``recipe`` replaces it (e.g. `federation_recipe`); ``epochs`` is
    then ignored. Tasks are scored with `MetricThresholds.at_least` of run-config ``eval-min-labels``.
    ``validation``, when given, receives the same models' scores on each site's validation fold
    (to choose between recipes without looking at the test fold).
    """
    stores = {site: SiteStore.load(p) for site, p in store_paths.items()}
    consortium = cfg.consortium_task_list
    shared = {n for n, _ in consortium}
    table = GainTable(dataset or cfg.table_name, "score")
    targets = {"test": table} if validation is None else {"test": table, "valid": validation}
    folds = tuple(targets)

    def add(approach: str, res: dict[str, dict[str, dict]]) -> None:
        for fold in folds:
            for site, per_task in res[fold].items():
                targets[fold].add(approach, site, {t: _score(m) for t, m in per_task.items()},
                                  {t: "roc_auc" if "roc_auc" in m else "r2" for t, m in per_task.items()})

    for site, store in stores.items():
        add("local", _train_and_test(store, consortium, cfg, epochs, {site: (store, lambda n: n)}, recipe, folds))
        if on_model:
            on_model(f"local:{site}")
    pooled = pooled_store(stores, consortium)
    tests = {site: (store, (lambda n, s=site: n if n in shared else f"{s}{SEP}{n}"))
             for site, store in stores.items()}
    add("pooled", _train_and_test(pooled, consortium, cfg, epochs, tests, recipe, folds))
    if on_model:
        on_model("pooled")
    return table


def _score(m: Mapping[str, float]) -> float:
    return float(m["roc_auc"] if "roc_auc" in m else m["r2"])
