"""Local-only and pooled baselines on the same sites, folds and model shape as a federation.

* **local**: each site trains alone on its training folds (early stopping on its validation fold)
  and is tested on its own test fold (`local_only`; a site in a federation does the same, once,
  cached in its store: `fedmol.client.local_only`);
* **pooled**: all sites' training folds in one place (the upper reference a federation tries to
  reach). Consortium tasks are one column; private tasks stay separate per site (two sites'
  private "IC50" are different assays). Tested on each site's test fold.

Recipe selection (`baseline_recipes`): a baseline trains with the library's Adam recipe and with
the federation's own recipe (`federation_recipe`) and keeps the one better on the validation fold,
so no side gets a choice the other does not.

Results are `fedmol.models.report.GainTable` values with metric ``score`` (ROC-AUC for classification,
R² for regression), the same table the federation writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedmol.config import FederationConfig, TaskKind
from fedmol.datasets.store import SiteStore
from fedmol.datasets.tasks import TaskInfo
from fedmol.errors import TrainingDiverged
from fedmol.models.data import TaskData
from fedmol.models.metrics import MetricThresholds
from fedmol.models.network import MultiTaskNet
from fedmol.models.report import GainTable
from fedmol.models.site_model import split_rows
from fedmol.models.spec import ModelSpec, build_spec
from fedmol.models.training import EvalResult, Monitor, TrainConfig, evaluate, fit_target_scaling, train_epochs

__all__ = ["LocalOnly", "baseline_recipes", "federation_recipe", "local_only", "local_only_key", "pooled_store",
           "store_content_hash", "train_baselines"]

SEP = "::"  # pooled private task name: "<site>::<task>"
ADAM_EPOCHS = 25  # the Adam recipe's maximum (early stopping usually ends it sooner)
LOCAL_ONLY_VERSION = 1  # part of `local_only_key`: raise it when the local-only training changes


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
                       momentum=cfg.momentum, weight_decay=cfg.weight_decay, regression_weight=cfg.regression_weight,
                       lr_step_epoch=max(cfg.local_epochs, 1), lr_gamma=cfg.lr_decay,
                       patience=patience, monitor=monitor, seed=cfg.seed, device=cfg.device,
                       num_threads=cfg.num_threads or None)


def adam_recipe(cfg: FederationConfig, epochs: int = ADAM_EPOCHS) -> TrainConfig:
    """The library's default baseline recipe: Adam lr 1e-3, <= ``epochs`` epochs, lr x0.3 at half-way,
    early stopping on the validation loss (patience 5)."""
    return TrainConfig(epochs=epochs, lr=1e-3, optimizer="adam", patience=5, monitor="loss", seed=cfg.seed,
                       device=cfg.device, num_threads=cfg.num_threads or None, lr_step_epoch=max(epochs // 2, 1))


def baseline_recipes(cfg: FederationConfig, epochs: int = ADAM_EPOCHS) -> dict[str, TrainConfig]:
    """The recipes a baseline chooses from on its validation fold: ``adam`` (`adam_recipe`, at most
    ``epochs`` epochs) and ``federation`` (`federation_recipe`: the run config's own)."""
    return {"adam": adam_recipe(cfg, epochs), "federation": federation_recipe(cfg)}


# -- one site's local-only model -----------------------------------------------------------------
@dataclass
class LocalOnly:
    """A site's local-only model and its metrics on the site's own validation and test folds.

    ``recipe``: the recipe kept (best validation score; see `local_only`); ``validation``: every
    recipe's validation score (None: it scored no task or diverged); ``results``: the kept model's
    `EvalResult` per split (``valid``, ``test``); ``model``: the kept model (None when read back
    from a cache without its weights).
    """

    recipe: str
    results: dict[str, EvalResult]
    validation: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    key: str = ""
    model: MultiTaskNet | None = field(default=None, repr=False, compare=False)

    def score(self, split: str) -> float | None:
        return self.results[split].score

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "validation": self.validation, "seconds": self.seconds, "key": self.key,
                "results": {split: r.to_dict() for split, r in self.results.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocalOnly:
        results = {split: EvalResult(per_task={t: dict(m) for t, m in r["per_task"].items()},
                                     summary=dict(r["summary"]), loss=float(r["loss"]), n_labels=int(r["n_labels"]),
                                     kinds=dict(r.get("kinds", {})))
                   for split, r in d["results"].items()}
        return cls(recipe=str(d["recipe"]), results=results, validation=dict(d.get("validation", {})),
                   seconds=float(d.get("seconds", 0.0)), key=str(d.get("key", "")))


def _choice(result: LocalOnly | None, name: str, res: dict[str, EvalResult]) -> bool:
    """True when ``res`` (recipe ``name``) beats ``result``: the higher validation score, then the lower
    validation loss (a fold too small to score any task still has a loss)."""
    if result is None:
        return True

    def rank(r: dict[str, EvalResult]) -> tuple[float, float]:
        s = r["valid"].score
        return (s if s is not None and math.isfinite(s) else -math.inf, -r["valid"].loss)

    return rank(res) > rank(result.results)


def local_only(store: SiteStore, cfg: FederationConfig, *, recipes: Mapping[str, TrainConfig] | None = None,
               consortium: list[tuple[str, TaskKind]] | None = None) -> LocalOnly:
    """Train a site's local-only model with the federation's recipe selection.

    The site's model shape (the consortium's heads plus a head per kind of its own trainable tasks,
    as in the federation), its training folds, early stopping on its validation fold; each of
    ``recipes`` (default `baseline_recipes`) is trained and the one with the better validation score
    is kept (ties and unscored folds: the lower validation loss). Tasks are scored on the validation
    and test folds with `MetricThresholds.at_least` of ``eval-min-labels``. A recipe that diverges
    is left out; raises `TrainingDiverged` when every one did.
    """
    t0 = time.perf_counter()
    recipes = baseline_recipes(cfg) if recipes is None else recipes
    consortium = cfg.consortium_task_list if consortium is None else consortium
    thresholds = MetricThresholds.at_least(cfg.eval_min_labels)
    best: LocalOnly | None = None
    validation: dict[str, float | None] = {}
    failures: list[str] = []
    for name, recipe in recipes.items():
        try:
            model = _train(store, consortium, cfg, recipe)
        except TrainingDiverged as exc:
            validation[name] = None
            failures.append(f"{name}: {exc}")
            continue
        res = {split: evaluate(model, TaskData.from_store(store, model.spec, split_rows(store, cfg, split),
                                                          trainable_only=False),
                               device=cfg.device, thresholds=thresholds)
               for split in ("valid", "test")}
        validation[name] = res["valid"].score
        if _choice(best, name, res):
            best = LocalOnly(recipe=name, results=res, model=model)
    if best is None:
        raise TrainingDiverged("every local-only recipe diverged: " + "; ".join(failures))
    best.validation = validation
    best.seconds = time.perf_counter() - t0
    return best


def local_only_spec(store: SiteStore, cfg: FederationConfig,
                    consortium: list[tuple[str, TaskKind]] | None = None) -> ModelSpec:
    """The model shape of a site's local-only model: the same as the site's model in the federation."""
    consortium = cfg.consortium_task_list if consortium is None else consortium
    shared = {n for n, _ in consortium}
    private = [(t.name, t.kind) for t in store.trainable_tasks() if t.name not in shared]
    return build_spec(cfg.n_bits, consortium, private, hidden=cfg.hidden_sizes, dropout=cfg.dropout,
                      input_transform=cfg.input_transform)


def store_content_hash(store: SiteStore) -> str:
    """sha256 of what a model learns from in a store: features, labels, censoring, folds, task catalogue."""
    digest = hashlib.sha256()
    X = store.X.tocsr()
    for arr in (np.asarray(X.shape), X.indptr, X.indices, X.data, store.Y, store.censor, store.folds):
        a = np.ascontiguousarray(arr)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    digest.update(json.dumps([asdict(t) for t in store.tasks], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def local_only_key(store: SiteStore, cfg: FederationConfig, *, recipes: Mapping[str, TrainConfig] | None = None,
                   content_hash: str | None = None) -> str:
    """What a site's local-only model depends on, hashed: the store's content (`store_content_hash`;
    ``content_hash`` when already known), the model spec, every recipe (but the device and thread
    count), the folds, ``eval-min-labels`` and the seed. Federation-only settings (rounds' timeout,
    output folder, run name, tracking URI, ...) are not in it, except as far as they shape a recipe
    (`federation_recipe` trains rounds x local epochs)."""
    recipes = baseline_recipes(cfg) if recipes is None else recipes
    doc = {
        "version": LOCAL_ONLY_VERSION,
        "store": content_hash or store_content_hash(store),
        "spec": json.loads(local_only_spec(store, cfg).to_json()),
        "recipes": {n: {k: v for k, v in tc.to_dict().items() if k not in ("device", "num_threads")}
                    for n, tc in recipes.items()},
        "folds": [cfg.test_fold, cfg.valid_fold],
        "eval_min_labels": cfg.eval_min_labels,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


# -- training ------------------------------------------------------------------------------------
def _train(store: SiteStore, consortium: list[tuple[str, TaskKind]], cfg: FederationConfig,
           recipe: TrainConfig) -> MultiTaskNet:
    """One model of the site's shape trained on ``store``'s training folds, early stopping on its validation fold."""
    spec = local_only_spec(store, cfg, consortium)
    model = MultiTaskNet(spec, seed=cfg.seed)
    train = TaskData.from_store(store, spec, split_rows(store, cfg, "train"))
    valid = TaskData.from_store(store, spec, split_rows(store, cfg, "valid"))
    fit_target_scaling(model, train, [h.name for h in spec.heads if h.kind == "regression"])
    train_epochs(model, train, recipe, valid=valid)
    return model


def _train_and_test(store: SiteStore, consortium: list[tuple[str, TaskKind]], cfg: FederationConfig,
                    recipe: TrainConfig, test_sets: Mapping[str, tuple[SiteStore, Callable[[str], str | None]]],
                    folds: tuple[str, ...] = ("test",)) -> dict[str, dict[str, dict]]:
    """Train one model on ``store``; fold ("test", "valid") -> site -> task -> metrics on each test store."""
    model = _train(store, consortium, cfg, recipe)
    thresholds = MetricThresholds.at_least(cfg.eval_min_labels)
    out: dict[str, dict[str, dict]] = {fold: {} for fold in folds}
    for site, (test_store, rename) in test_sets.items():
        for fold in folds:
            test = _aligned(test_store, model.spec, rename, split_rows(test_store, cfg, fold))
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


def train_baselines(store_paths: Mapping[str, Path], cfg: FederationConfig, *, epochs: int = ADAM_EPOCHS,
                    dataset: str | None = None, on_model: Callable[[str], None] | None = None,
                    recipe: TrainConfig | None = None, validation: GainTable | None = None,
                    select: bool = False, local: bool = True) -> GainTable:
    """Local-only (per site, `local_only`) and pooled models, each tested on every site's test fold.

    Recipe: `adam_recipe` with at most ``epochs`` epochs, or ``recipe`` when given; with ``select``
    both of `baseline_recipes` (``epochs`` for Adam), each local-only model keeping the one better on
    its site's validation fold, the pooled model the one better on the mean over sites of the
    validation scores (the table's notes say which). Tasks are scored with
    `MetricThresholds.at_least` of run-config ``eval-min-labels``. ``validation``, when given,
    receives the same models' scores on each site's validation fold. ``local=False``: the pooled
    model only (the local-only models come from elsewhere, e.g. a federation's own table).
    """
    stores = {site: SiteStore.load(p) for site, p in store_paths.items()}
    consortium = cfg.consortium_task_list
    shared = {n for n, _ in consortium}
    if select:
        recipes = baseline_recipes(cfg, epochs)
    else:
        recipes = {"given" if recipe is not None else "adam": recipe or adam_recipe(cfg, epochs)}
    table = GainTable(dataset or cfg.table_name, "score")
    valid = validation if validation is not None else GainTable(table.dataset, "score")
    targets = {"test": table, "valid": valid}

    def add(approach: str, fold: str, site: str, per_task: Mapping[str, Mapping[str, float]]) -> None:
        targets[fold].add(approach, site, {t: _score(m) for t, m in per_task.items()},
                          {t: "roc_auc" if "roc_auc" in m else "r2" for t, m in per_task.items()})

    chosen: dict[str, str] = {}
    for site, store in (stores if local else {}).items():
        alone = local_only(store, cfg, recipes=recipes, consortium=consortium)
        chosen[f"local:{site}"] = alone.recipe
        for fold in ("test", "valid"):
            add("local", fold, site, alone.results[fold].per_task)
        if on_model:
            on_model(f"local:{site}")
    pooled = pooled_store(stores, consortium)
    tests = {site: (store, (lambda n, s=site: n if n in shared else f"{s}{SEP}{n}"))
             for site, store in stores.items()}
    best: tuple[float, str, dict[str, dict[str, dict]]] | None = None
    failures: list[str] = []
    for name, tc in recipes.items():
        try:
            res = _train_and_test(pooled, consortium, cfg, tc, tests, ("test", "valid"))
        except TrainingDiverged as exc:
            failures.append(f"{name}: {exc}")
            continue
        scores = [s for per_task in res["valid"].values() if (s := _mean_score(per_task)) is not None]
        mean = sum(scores) / len(scores) if scores else -math.inf
        if best is None or mean > best[0]:
            best = (mean, name, res)
    if best is None:
        raise TrainingDiverged("every pooled recipe diverged: " + "; ".join(failures))
    chosen["pooled"] = best[1]
    for fold in ("test", "valid"):
        for site, per_task in best[2][fold].items():
            add("pooled", fold, site, per_task)
    if on_model:
        on_model("pooled")
    if select:
        table.notes["baseline recipes (chosen on the validation fold)"] = ", ".join(f"{k}: {v}"
                                                                                      for k, v in chosen.items())
    return table


def _mean_score(per_task: Mapping[str, Mapping[str, float]]) -> float | None:
    vals = [v for m in per_task.values() if math.isfinite(v := _score(m))]
    return sum(vals) / len(vals) if vals else None


def _score(m: Mapping[str, float]) -> float:
    return float(m["roc_auc"] if "roc_auc" in m else m["r2"])
