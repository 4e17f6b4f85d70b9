"""`fedmol site audit`: a membership-inference audit a site runs on its own store. Nothing is sent.

What is audited (`load_plan`), from ``<store>/federations/<federation>/`` (`fedmol.models.site_model`):

* **shared**: the federation's chosen shared model as the site received it in the final evaluation
  (``shared_final.npz``, kept by `SiteNode.evaluate_round` with `save_shared_final`; the site
  received it, so keeping it leaks nothing) with the site's private heads of that round
  (``private_heads.pt``); for an older federation without it, the registered site model
  (``site_model/``) when the site did not personalise;
* **personalised**: ``personalised.pt``, when the site personalised.

``--model`` audits any model instead: a model folder (``spec.json``, ``weights.pt``), a
``models:/NAME/VERSION`` URI of the site's registry, a full state_dict (``.pt``, the site's model
shape) or shared arrays (``.npz``, with the federation's private heads).

Who is who: **members** are the site's training folds (every fold but the run config's
``test-fold`` and ``valid-fold``), a random subsample as large as the non-members; **non-members**
are the test fold. The validation fold is left out of both: it chose the federation's round and the
personalisation, so it is neither trained on nor untouched. Compounds without a (trainable) label
are left out. At most ``max_compounds`` of each. Read the numbers with scaffold folds in mind: the test
fold holds other scaffolds than the training folds, harder for any model, so the loss and confidence
attacks score that generalisation gap too (300-600 BACE compounds, 1024 bits: a model trained for 3
epochs had a loss-attack ROC-AUC of 0.64-0.66 with scaffold folds, 0.49 with random folds; LiRA, calibrated
per compound by the reference models, 0.44-0.60 with scaffold folds): LiRA is the better measure of
memorisation there.

Attacks (`fedmol.models.membership`): loss threshold, confidence, and LiRA with ``lira_models``
reference models trained here from scratch with the federation's recipe
(`fedmol.models.baselines.federation_recipe`: the sites' optimiser, lr, momentum, batch size, lr
decay per ``local-epochs``) for ``lira_epochs`` epochs, each on a random half of the audited compounds
(each compound IN for exactly half of the models) plus other labelled compounds of the site up to
``lira_train_size`` (0: as many as the site's training folds hold), scored with one variance per
side (LiRA's choice for few reference models).

Canaries (``canaries`` N): N random fingerprints, each with as many on-bits as a random compound of
the store has and the bits drawn uniformly from the fingerprint's length (the features are
key-permuted hashes, so no bit is special), with the label pattern of a random training compound and
random labels (classification: 0/1 with p = 0.5; regression: normal with the task's mean and
standard deviation). They are inserted into a copy of the training folds and a copy of the audited
(shared) model is trained on it for ``canary_epochs`` epochs with the site's local training recipe
at its final round's lr. Exposure (The Secret Sharer) ranks each canary's loss among
``canary_references`` canaries drawn the same way and not inserted.

Results: ``<store>/privacy/audit-<UTC time>.json`` (PREAMBLE contract 3) and the ROC plot beside it,
and a run in the experiment ``fedmol-site-audit`` of the site's own MLflow when a tracking URI is
given. Never the server's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from fedmol.config import FederationConfig
from fedmol.datasets.store import SiteStore
from fedmol.errors import InputError, StoreError
from fedmol.models.baselines import federation_recipe
from fedmol.models.data import TaskData, iter_feature_batches
from fedmol.models.membership import (
    AttackResult,
    balanced_in_mask,
    compound_statistics,
    evaluate_attack,
    exposure,
    lira_scores,
)
from fedmol.models.network import MultiTaskNet
from fedmol.models.site_model import federation_dir, fold_rows, site_model, site_name, site_spec
from fedmol.models.training import TrainConfig, resolve_device, train_epochs

__all__ = ["AUDIT_EXPERIMENT", "SHARED_FINAL", "AuditPlan", "AuditSettings", "audit_models", "load_plan",
           "run_audit", "save_shared_final", "summary_table", "write_results"]

log = logging.getLogger("fedmol.client")

SHARED_FINAL = "shared_final.npz"  # the shared arrays of the federation's final evaluation (the chosen round)
SHARED_FINAL_META = "shared_final.json"  # its round and the federation's run config
PERSONALISED = "personalised.pt"
AUDIT_EXPERIMENT = "fedmol-site-audit"
ATTACKS = ("loss", "confidence", "lira")
Progress = Callable[[str, int, int], None]  # (step, done, total)


# -- what the site keeps -------------------------------------------------------------------------
def save_shared_final(store_path: Path, federation_id: str, shared: Mapping[str, np.ndarray],
                      cfg: FederationConfig, server_round: int) -> Path:
    """Keep the shared arrays of the final evaluation (the server's chosen round) and the run
    config in the site's federation folder, for the audit; returns the ``.npz`` path."""
    folder = federation_dir(Path(store_path), federation_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SHARED_FINAL
    tmp = folder / (SHARED_FINAL + ".tmp")
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in shared.items()}
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)
    meta = {"federation_id": federation_id, "round": int(server_round), "run_config": cfg.to_run_config(),
            "saved": datetime.now(UTC).isoformat(timespec="seconds")}
    (folder / SHARED_FINAL_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


# -- settings and plan -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditSettings:
    """The audit's knobs (the CLI's options); see the module docstring."""

    lira_models: int = 4  # 0: no LiRA; each compound has lira_models // 2 IN and as many OUT references
    lira_epochs: int = 10
    lira_train_size: int = 0  # compounds per reference model; 0: as many as the site's training folds
    max_compounds: int = 1000  # members and non-members each
    canaries: int = 0
    canary_references: int = 1023  # exposure at most log2(1024) = 10 bits
    canary_epochs: int = 10
    seed: int = 0
    device: str = ""  # "": the run config's

    def __post_init__(self) -> None:
        if self.lira_models == 1 or self.lira_models < 0:
            raise InputError(f"--lira-models {self.lira_models}: use 0 (no LiRA) or at least 2")
        if self.lira_epochs < 1 or self.canary_epochs < 1:
            raise InputError("--lira-epochs and --canary-epochs must be at least 1")
        if self.max_compounds < 2 or self.canaries < 0 or self.canary_references < 1 or self.lira_train_size < 0:
            raise InputError("--max-compounds must be >= 2, --canaries >= 0, --canary-references >= 1 and "
                             "--lira-train-size >= 0")


@dataclass
class AuditPlan:
    """The models to audit (``shared``, and ``personalised`` or None), the run config (folds,
    recipe), the federation and the final round (for the canaries' lr), and where each model came from."""

    cfg: FederationConfig
    models: dict[str, MultiTaskNet | None]
    sources: dict[str, str | None]
    federation_id: str | None = None
    final_round: int = 1


def _federations(store_path: Path) -> list[Path]:
    root = store_path / "federations"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and any(
        (p / name).exists() for name in (SHARED_FINAL, PERSONALISED, "site_model"))]
    return sorted(found, key=lambda p: max(c.stat().st_mtime for c in p.iterdir()))


def _config_from(run_config: Mapping[str, Any], store: SiteStore) -> FederationConfig:
    """The federation's run config (keys this fedmol does not know are dropped: an older record)."""
    known = {f.name.replace("_", "-") for f in dataclasses.fields(FederationConfig)}
    dropped = sorted(set(run_config) - known)
    if dropped:
        log.warning("audit: run-config keys %s are not known to this fedmol and are ignored", dropped)
    cfg = FederationConfig.from_run_config({k: v for k, v in run_config.items() if k in known})
    return cfg if cfg.n_bits == store.n_features else cfg.replace(n_bits=store.n_features)


def _resolve_model_dir(model: str, tracking_uri: str) -> Path:
    if not model.startswith(("models:/", "runs:/")):
        return Path(model).expanduser()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(model))
    except Exception as exc:  # MlflowException and friends: say which model and where
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"cannot load {model} from the site's registry {tracking_uri} ({msg}): check the "
                         "name/version and --tracking-uri") from None
    found = sorted(p.parent for p in local.rglob("spec.json"))
    if not found:
        raise InputError(f"{model} is not a fedmol model (no spec.json in its artifacts)")
    return found[0]


def _load_state(model: MultiTaskNet, path: Path) -> None:
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError, OSError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{path} does not fit the site's model of this federation ({first})") from None


def load_plan(store_path: Path, store: SiteStore, *, federation: str | None = None, model: str | None = None,
              tracking_uri: str | None = None) -> AuditPlan:
    """What to audit: the federation's models at the site (``federation``: its id or folder name;
    None: the newest), or ``model`` (with ``federation``'s run config when given, else the model's own)."""
    from fedmol.models.io import load_model

    store_path = Path(store_path)
    site = site_name(store, store_path)
    folder: Path | None = None
    if federation is not None:
        folder = federation_dir(store_path, federation)
        if not folder.is_dir():
            known = [p.name for p in _federations(store_path)]
            raise StoreError(f"no federation {federation!r} in {store_path / 'federations'} "
                             f"(known: {', '.join(known) or 'none'})")
    elif model is None and (found := _federations(store_path)):
        folder = found[-1]  # --model alone: the model's own meta says which federation, if any
    if folder is None and model is None:
        raise StoreError(f"{store_path} holds no federation's models (no {store_path / 'federations'}/*/"
                         f"{SHARED_FINAL}): the audit examines the models a federation leaves at the site, so run "
                         "one first, or audit a model of your own with --model PATH_OR_models:/NAME/VERSION")
    meta: dict[str, Any] = {}
    if folder is not None and (folder / SHARED_FINAL_META).exists():
        meta = json.loads((folder / SHARED_FINAL_META).read_text())
    fid = str(meta.get("federation_id", folder.name)) if folder is not None else None
    final_round = int(meta.get("round", 1))

    if model is not None:
        uri = tracking_uri or f"sqlite:///{store_path / 'mlflow.db'}"
        path = _resolve_model_dir(model, uri)
        if path.is_dir():
            net, model_meta = load_model(path)
            run_config = meta.get("run_config") or model_meta.get("run_config") or {}
            if not run_config:
                log.warning("audit: %s carries no run config: the default folds (test fold 0, validation fold 1) "
                            "and recipe are assumed", model)
            cfg = _config_from(run_config, store) if run_config else FederationConfig(n_bits=store.n_features)
            fid = fid or model_meta.get("federation_id") or None
        else:
            if not path.exists():
                raise InputError(f"--model {model}: no such file or folder (a model folder, a models:/ URI, a "
                                 "state_dict .pt or shared arrays .npz)")
            if not meta:
                raise InputError(f"--model {path.name}: a {path.suffix} file needs the federation's run config to "
                                 "build the model: give --federation ID of a federation this site took part in")
            cfg = _config_from(meta["run_config"], store)
            if path.suffix == ".npz":
                with np.load(path) as arrays:
                    net, _ = site_model(store, store_path, cfg, dict(arrays), str(fid), site=site)
            else:
                net = MultiTaskNet(site_spec(store, cfg, site), seed=cfg.seed)
                _load_state(net, path)
        if net.spec.n_features != store.n_features:
            raise InputError(f"--model {model} expects {net.spec.n_features}-bit features, the store has "
                             f"{store.n_features}")
        return AuditPlan(cfg, {"shared": net, "personalised": None}, {"shared": model, "personalised": None},
                         fid, final_round)

    assert folder is not None
    personalised_path = folder / PERSONALISED
    if meta:
        cfg = _config_from(meta["run_config"], store)
        with np.load(folder / SHARED_FINAL) as arrays:
            shared, _ = site_model(store, store_path, cfg, dict(arrays), str(fid), site=site)
        source = f"{folder / SHARED_FINAL} (round {final_round}) with the private heads {folder / 'private_heads.pt'}"
    elif (folder / "site_model" / "meta.json").exists():
        shared, model_meta = load_model(folder / "site_model")
        if model_meta.get("personalised"):
            raise StoreError(f"federation {folder.name}: its shared model was not kept at the site (no {SHARED_FINAL}: "
                             "a federation run with an older fedmol) and its registered site model is the personalised "
                             "one: audit a shared model with --model PATH_OR_models:/NAME/VERSION")
        cfg = _config_from(model_meta.get("run_config") or {}, store)
        fid = str(model_meta.get("federation_id") or fid)
        final_round = int(model_meta.get("rounds", final_round))
        source = str(folder / "site_model")
    else:
        raise StoreError(f"federation {folder.name}: its shared model was not kept at the site (no {SHARED_FINAL}: "
                         "the federation did not finish, or ran with an older fedmol): audit a model with --model")
    personalised = None
    if personalised_path.exists():
        personalised = MultiTaskNet(shared.spec, seed=cfg.seed)
        _load_state(personalised, personalised_path)
    return AuditPlan(cfg, {"shared": shared, "personalised": personalised},
                     {"shared": source, "personalised": str(personalised_path) if personalised else None},
                     fid, final_round)


# -- losses ----------------------------------------------------------------------------------------------
@torch.no_grad()
def label_losses(model: MultiTaskNet, data: TaskData, *, device: torch.device | None = None,
                 batch_size: int = 1024) -> np.ndarray:
    """Per-label losses (n, labels of every head), NaN where a compound has no label: BCE in nats,
    or the censored squared error of the standardised value (the training loss per label)."""
    device = device or next(model.parameters()).device
    model.to(device)
    was_training = model.training
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in model.heads}
    for batch in iter_feature_batches(data.X, batch_size, device):
        for name, out in model(batch).items():
            outs[name].append(out.float().cpu())
    model.train(was_training)
    parts = []
    for head_spec in model.spec.heads:
        head = model.heads[head_spec.name]
        chunks = outs[head_spec.name]
        out = torch.cat(chunks) if chunks else torch.zeros(0, head_spec.n_tasks)
        labels = data.heads[head_spec.name].batch(np.arange(data.n))
        if head_spec.kind == "classification":
            loss = F.binary_cross_entropy_with_logits(out, labels.values, reduction="none")
        else:
            target = (labels.values - head.target_mean.cpu()) / head.target_std.cpu()
            diff = out - target
            diff = torch.where(labels.censor > 0, diff.clamp(max=0.0), diff)
            diff = torch.where(labels.censor < 0, diff.clamp(min=0.0), diff)
            loss = diff * diff
        parts.append(torch.where(labels.mask, loss.double(), torch.full_like(loss, math.nan).double()).numpy())
    return np.concatenate(parts, axis=1) if parts else np.zeros((data.n, 0))


def _labelled(store: SiteStore, spec: Any, rows: np.ndarray) -> np.ndarray:
    """The rows among ``rows`` with at least one trainable label for this model."""
    data = TaskData.from_store(store, spec, rows)
    has = np.zeros(data.n, dtype=bool)
    for h in data.heads.values():
        has |= h.mask.any(axis=1)
    return rows[has]


# -- the audit -----------------------------------------------------------------------------------------
@dataclass
class AuditResult:
    """Attack results per model (``None`` where a model is absent), the canaries, and the population."""

    attacks: dict[str, dict[str, AttackResult | None] | None]
    canaries: dict[str, Any] | None
    members: str
    nonmembers: str
    seconds: dict[str, float] = field(default_factory=dict)


def _reference_recipe(cfg: FederationConfig, settings: AuditSettings, seed: int) -> TrainConfig:
    tc = federation_recipe(cfg, epochs=settings.lira_epochs, patience=None)
    return dataclasses.replace(tc, seed=seed, device=settings.device or cfg.device)


def _copy_scaling(dst: MultiTaskNet, src: MultiTaskNet) -> None:
    for h in src.spec.heads:
        if h.kind == "regression":
            dst.set_target_scaling(h.name, src.heads[h.name].target_mean, src.heads[h.name].target_std)


def audit_models(store: SiteStore, cfg: FederationConfig, models: Mapping[str, MultiTaskNet | None],
                 settings: AuditSettings = AuditSettings(), *, final_round: int = 1,
                 on_step: Progress | None = None) -> AuditResult:
    """Run the attacks on each model of ``models`` (name -> model, None: absent) with the site's
    members and non-members (`fedmol.client.audit` docstring), and the canaries on the first model."""
    step = on_step or (lambda _s, _d, _t: None)
    present = {k: m for k, m in models.items() if m is not None}
    if not present:
        raise InputError("nothing to audit: no model")
    first = next(iter(present.values()))
    spec = first.spec
    device = resolve_device(settings.device or cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rng = np.random.default_rng(settings.seed)
    folds = store.folds
    train_rows = _labelled(store, spec, fold_rows(folds, "train", cfg.test_fold, cfg.valid_fold))
    test_rows = _labelled(store, spec, fold_rows(folds, "test", cfg.test_fold, cfg.valid_fold))
    if len(train_rows) < 2 or len(test_rows) < 2:
        raise StoreError(f"the audit needs labelled compounds in the training folds and in the test fold "
                         f"{cfg.test_fold}: found {len(train_rows)} and {len(test_rows)}")
    n = min(len(train_rows), len(test_rows), settings.max_compounds)
    members = np.sort(rng.choice(train_rows, n, replace=False))
    nonmembers = np.sort(rng.choice(test_rows, n, replace=False))
    population = np.concatenate([members, nonmembers])
    is_member = np.arange(2 * n) < n
    pop_data = TaskData.from_store(store, spec, population)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    stats = {name: compound_statistics(label_losses(m, pop_data, device=device)) for name, m in present.items()}
    attacks: dict[str, dict[str, AttackResult | None] | None] = {name: None for name in models}
    for name, s in stats.items():
        attacks[name] = {a: evaluate_attack(s[a][is_member], s[a][~is_member]) for a in ("loss", "confidence")}
        attacks[name]["lira"] = None  # type: ignore[index]
    seconds["attacks"] = time.perf_counter() - t0

    if settings.lira_models:
        t0 = time.perf_counter()
        k = settings.lira_models
        in_mask = balanced_in_mask(k, 2 * n, rng)
        filler_pool = np.setdiff1d(_labelled(store, spec, np.arange(store.X.shape[0])), population)
        size = settings.lira_train_size or len(train_rows)
        ref_stats = np.empty((k, 2 * n))
        for i in range(k):
            step("LiRA reference models", i, k)
            own = population[in_mask[i]]
            extra = max(min(size - len(own), len(filler_pool)), 0)
            rows = np.sort(np.concatenate([own, rng.choice(filler_pool, extra, replace=False)]))
            ref = MultiTaskNet(spec, seed=settings.seed * 7919 + 101 + i)
            _copy_scaling(ref, first)
            train_epochs(ref, TaskData.from_store(store, spec, rows), _reference_recipe(cfg, settings, 1000 + i))
            ref_stats[i] = compound_statistics(label_losses(ref, pop_data, device=device))["lira"]
        step("LiRA reference models", k, k)
        for name, s in stats.items():
            scores = lira_scores(s["lira"], ref_stats, in_mask)
            ok = ~np.isnan(scores)
            attacks[name]["lira"] = evaluate_attack(scores[is_member & ok], scores[~is_member & ok])  # type: ignore[index]
        seconds["lira"] = time.perf_counter() - t0

    canaries = None
    if settings.canaries:
        t0 = time.perf_counter()
        canaries = canary_exposure(store, cfg, first, train_rows, settings, final_round=final_round, rng=rng,
                                   on_step=step)
        seconds["canaries"] = time.perf_counter() - t0

    n_train = len(train_rows)
    exclude = f"{cfg.test_fold} and {cfg.valid_fold}"
    members_text = (f"training folds (every fold but {exclude}): {n} of their {n_train} labelled compounds, "
                    "a random subsample as large as the non-members")
    nonmembers_text = (f"test fold {cfg.test_fold}: {n} of its {len(test_rows)} labelled compounds; the validation "
                       f"fold {cfg.valid_fold} is in neither (it chose the federation's round and the personalisation)")
    return AuditResult(attacks, canaries, members_text, nonmembers_text, seconds)


def random_canaries(store: SiteStore, train_rows: np.ndarray, count: int,
                    rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    """``count`` random compounds: fingerprints with the on-bit count of a random stored compound, bits
    uniform over the fingerprint; the label pattern of a random training compound (trainable tasks),
    random labels. Returns (X (count, n_features) with 1.0 entries, Y (count, store tasks) with NaN)."""
    n_features = store.n_features
    nnz = np.diff(store.X.indptr)[train_rows]
    counts = np.clip(rng.choice(nnz, count), 1, n_features)
    indices = [np.sort(rng.choice(n_features, int(c), replace=False)) for c in counts]
    indptr = np.concatenate([[0], np.cumsum(counts)])
    X = sp.csr_matrix((np.ones(int(indptr[-1]), dtype=np.float32), np.concatenate(indices), indptr),
                      shape=(count, n_features))
    trainable = np.array([t.trainable for t in store.tasks])
    pattern = ~np.isnan(store.Y[rng.choice(train_rows, count)]) & trainable
    Y = np.full((count, len(store.tasks)), np.nan, dtype=np.float32)
    for j, task in enumerate(store.tasks):
        rows = np.flatnonzero(pattern[:, j])
        if task.kind == "classification":
            Y[rows, j] = rng.integers(0, 2, rows.size)
        else:
            col = store.Y[train_rows, j]
            col = col[~np.isnan(col)]
            mean, std = (float(col.mean()), float(col.std()) or 1.0) if col.size else (0.0, 1.0)
            Y[rows, j] = rng.normal(mean, std, rows.size)
    return X, Y


def canary_exposure(store: SiteStore, cfg: FederationConfig, model: MultiTaskNet, train_rows: np.ndarray,
                    settings: AuditSettings, *, final_round: int = 1, rng: np.random.Generator,
                    on_step: Progress | None = None) -> dict[str, Any]:
    """Insert ``settings.canaries`` random compounds into a copy of the training folds, train a copy of
    ``model`` on it with the site's local recipe, and measure each canary's exposure."""
    n, r = settings.canaries, settings.canary_references
    Xc, Yc = random_canaries(store, train_rows, n + r, rng)
    names = [t.name for t in store.tasks]
    exclude = [t.name for t in store.tasks if not t.trainable]
    X = sp.vstack([store.X[train_rows].astype(np.float32), Xc[:n]], format="csr")
    Y = np.vstack([store.Y[train_rows], Yc[:n]])
    censor = np.vstack([store.censor[train_rows], np.zeros((n, len(names)), dtype=store.censor.dtype)])
    train = TaskData.from_arrays(model.spec, X, Y, censor, names, exclude_tasks=exclude)
    copy_ = copy.deepcopy(model)
    tc = TrainConfig(epochs=settings.canary_epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                     lr=cfg.lr * cfg.lr_decay ** max(final_round - 1, 0), momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay, regression_weight=cfg.regression_weight,
                     lr_step_epoch=10**6, lr_gamma=1.0, device=settings.device or cfg.device,
                     seed=settings.seed * 7919 + 7, num_threads=cfg.num_threads or None)
    step = on_step or (lambda _s, _d, _t: None)
    step("canary training", 0, settings.canary_epochs)
    train_epochs(copy_, train, tc, on_epoch=lambda rec: step("canary training", rec.epoch + 1, settings.canary_epochs))
    data = TaskData.from_arrays(model.spec, Xc, Yc, np.zeros(Yc.shape, dtype=np.int8), names, exclude_tasks=exclude)
    loss = -compound_statistics(label_losses(copy_, data, device=resolve_device(tc.device)))["loss"]
    ok = np.isfinite(loss)
    inserted, reference = loss[:n][ok[:n]], loss[n:][ok[n:]]
    e = exposure(inserted, reference)
    return {"n": int(inserted.size), "mean_exposure": float(e.mean()), "max_exposure": float(e.max()),
            "max_possible_exposure": float(np.log2(reference.size + 1)), "reference_size": int(reference.size)}


# -- results ------------------------------------------------------------------------------------------
def report_dict(result: AuditResult, plan: AuditPlan, site: str, settings: AuditSettings, created: datetime,
                plot: str | None) -> dict[str, Any]:
    """The audit file (PREAMBLE contract 3), plus ``sources`` (what was audited) and ``settings``."""
    models: dict[str, Any] = {}
    for name in ("shared", "personalised"):
        attacks = result.attacks.get(name)
        models[name] = None if attacks is None else {
            "attacks": {a: (attacks[a].to_dict() if attacks.get(a) is not None else None)  # type: ignore[union-attr]
                        for a in ATTACKS}}
    return {"kind": "fedmol.site-audit", "version": 1, "created": created.isoformat(timespec="seconds"),
            "site": site, "federation_id": plan.federation_id, "members": result.members,
            "nonmembers": result.nonmembers, "models": models, "canaries": result.canaries, "plot": plot,
            "sources": plan.sources, "settings": dataclasses.asdict(settings),
            "seconds": {k: round(v, 2) for k, v in result.seconds.items()}}


def plot_roc(result: AuditResult, path: Path, title: str) -> Path | None:
    """The attacks' ROC curves on log-log axes (as in LiRA), one panel per model; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(name, a) for name, a in result.attacks.items() if a is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (name, attacks) in zip(axes[0], panels, strict=True):
        floor = 1.0
        for attack, r in attacks.items():
            if r is None:
                continue
            floor = min(floor, 1.0 / max(r.n_nonmembers, 1))
            ax.plot(np.maximum(r.fpr, 1e-5), np.maximum(r.tpr, 1e-5), ls="--" if attack == "confidence" else "-",
                    label=f"{attack}: AUC {r.auc:.3f}, TPR@1% {r.tpr_at_1pct_fpr:.3f}")
        low = min(floor / 2, 1e-3)
        ax.plot([low, 1], [low, 1], ls="--", color="grey", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, 1)
        ax.set_ylim(low, 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{name} model", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_results(report: dict[str, Any], result: AuditResult, store_path: Path,
                  created: datetime) -> tuple[Path, Path | None]:
    """``<store>/privacy/audit-<UTC time>.json`` and the PNG beside it (named in the file's ``plot``)."""
    folder = Path(store_path) / "privacy"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"audit-{created.strftime('%Y%m%dT%H%M%SZ')}"
    png = plot_roc(result, folder / f"{stem}.png",
                   f"membership inference at {report['site']}" + (f", federation {report['federation_id']}"
                                                                  if report["federation_id"] else ""))
    report["plot"] = png.name if png is not None else None
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return path, png


def log_to_mlflow(tracking_uri: str, report: dict[str, Any], files: list[Path], store_path: Path) -> str:
    """A run in the site's own MLflow (experiment ``fedmol-site-audit``): the AUCs and TPRs as metrics,
    the JSON and PNG as artifacts. Returns the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from fedmol.models.registry import ensure_experiment, tracking_uri_of

    experiment = ensure_experiment(tracking_uri, AUDIT_EXPERIMENT, Path(store_path) / "mlartifacts")
    client = MlflowClient(tracking_uri=tracking_uri_of(tracking_uri))
    run = client.create_run(experiment, run_name=f"audit-{report['site']}",
                            tags={"fedmol.kind": "site-audit", "fedmol.site": str(report["site"]),
                                  "fedmol.federation-id": str(report["federation_id"] or "")})
    now = int(time.time() * 1000)
    metrics = []
    for model, entry in report["models"].items():
        for attack, a in ((entry or {}).get("attacks") or {}).items():
            for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
                if a is not None and math.isfinite(a[key]):
                    metrics.append(Metric(f"{model}.{attack}.{key}".replace("%", "pct"), float(a[key]), now, 0))
    if report["canaries"]:
        for key in ("mean_exposure", "max_exposure", "max_possible_exposure"):
            metrics.append(Metric(f"canaries.{key}", float(report["canaries"][key]), now, 0))
    params = [Param(k, str(v)) for k, v in report["settings"].items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    for f in files:
        client.log_artifact(run.info.run_id, str(f))
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def summary_table(report: dict[str, Any]) -> Any:
    """The audit's results as a rich table: a row per model and attack; the canaries in the caption."""
    from rich.table import Table

    title = f"membership-inference audit of {report['site']}"
    if report.get("federation_id"):
        title += f", federation {report['federation_id']}"
    table = Table(title=title, title_justify="left")
    for col in ("model", "attack", "ROC-AUC", "TPR@1% FPR", "TPR@0.1% FPR", "members", "non-members"):
        table.add_column(col, justify="left" if col in ("model", "attack") else "right")
    for name, entry in report["models"].items():
        if entry is None:
            continue
        for attack, a in entry["attacks"].items():
            if a is None:
                table.add_row(name, attack, "skipped", "", "", "", "")
                continue
            table.add_row(name, attack, f"{a['auc']:.3f}", f"{a['tpr_at_1pct_fpr']:.3f}",
                          f"{a['tpr_at_0.1pct_fpr']:.3f}", str(a["n_members"]), str(a["n_nonmembers"]))
    c = report.get("canaries")
    notes = ["0.5 ROC-AUC and a TPR equal to the FPR is what guessing gets"]
    counts = [a["n_nonmembers"] for e in report["models"].values() if e for a in e["attacks"].values() if a]
    if counts and min(counts) < 1000:
        notes.append(f"with {min(counts)} non-members an FPR below 1/{min(counts)} is interpolated towards the "
                     "TPR at zero false positives")
    if c:
        notes.append(f"{c['n']} canaries: exposure mean {c['mean_exposure']:.2f}, max {c['max_exposure']:.2f} "
                     f"of at most {c['max_possible_exposure']:.2f} bits ({c['reference_size']} references)")
    table.caption = "; ".join(notes)
    table.caption_justify = "left"
    return table


@dataclass
class AuditOutcome:
    report: dict[str, Any]
    json_path: Path
    png_path: Path | None
    mlflow_run: str | None = None


def run_audit(store_path: Path, *, federation: str | None = None, model: str | None = None,
              tracking_uri: str | None = None, settings: AuditSettings = AuditSettings(),
              on_step: Progress | None = None) -> AuditOutcome:
    """The whole audit of ``fedmol site audit``: plan, attacks, canaries, files, the site's MLflow."""
    store_path = Path(store_path).expanduser().resolve()
    store = SiteStore.load(store_path)
    plan = load_plan(store_path, store, federation=federation, model=model, tracking_uri=tracking_uri)
    created = datetime.now(UTC).replace(microsecond=0)
    result = audit_models(store, plan.cfg, plan.models, settings, final_round=plan.final_round, on_step=on_step)
    report = report_dict(result, plan, site_name(store, store_path), settings, created, None)
    json_path, png = write_results(report, result, store_path, created)
    run_id = None
    if tracking_uri:
        run_id = log_to_mlflow(tracking_uri, report, [p for p in (json_path, png) if p is not None], store_path)
    return AuditOutcome(report, json_path, png, run_id)
