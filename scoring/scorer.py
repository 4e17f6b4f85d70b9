"""Scoring molecules with a shared model: SMILES in, per-task predictions with uncertainty out.

The same preparation as at the sites (standardisation, then the key-permuted fingerprint) so
the model sees molecules exactly as in training. Molecules that cannot be prepared are returned
with their reason in ``error`` and empty predictions: none is dropped.

Three models can score:

* the **shared model** (trunk + consortium heads) as registered by the federation. It carries no
  calibration data (no structure or label ever reaches the server), so it gives MC-dropout
  standard deviations but no conformal p-values or intervals;
* a **site's full model** (`Scorer(..., site_store=STORE)`): the shared trunk and consortium
  heads plus the site's private heads from ``<store>/federations/<federation-id>/``, split-conformal
  calibrated on the store's validation fold (``valid-fold`` of the federation's run config), so
  every task with enough validation labels gets p-values (classification) or intervals
  (regression). Nothing leaves the site: the store and the heads are read locally;
* a **site's own registered model** (``models:/fedmol-site-<site>/...`` in the site's own registry,
  `fedmol.client.site_registry`): the same full model, personalised where the site chose so, with
  its calibration inside (``calibration.json``), so it scores as it is.

A shared model without heads (every task private to the sites) predicts nothing: the scorer
refuses it with `NO_HEADS_MESSAGE`, which points to the site's own model (``allow_no_heads`` for
the MLflow pyfunc, which warns on load and fails on predict instead).

Output columns, per task ``T`` (in spec order):

* ``T``: P(active) for classification, the value in the task's own units for regression;
* ``T_std``: MC-dropout standard deviation (when ``mc_samples`` > 0);
* classification, calibrated: ``T_p0``/``T_p1``, the Mondrian conformal p-values of the classes
  inactive/active (a class is in the prediction set at confidence c when its p-value > 1 - c);
* regression, calibrated: ``T_lower``/``T_upper``, the split-conformal interval at ``confidence``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from rdkit import Chem

from fedmol.config import FederationConfig
from fedmol.datasets.featurize import Featurizer, FeaturizeSettings, bit_permutation
from fedmol.datasets.keys import key_fingerprint, load_key
from fedmol.datasets.standardize import MoleculeReject, Standardizer, StandardizeSettings
from fedmol.datasets.store import SiteStore
from fedmol.errors import ConfigError, InputError
from fedmol.models.data import TaskData, iter_feature_batches, transform_features
from fedmol.models.io import load_calibration, load_model
from fedmol.models.network import MultiTaskNet
from fedmol.models.site_model import PRIVATE_HEADS, federation_dir, site_model, site_name, split_rows
from fedmol.models.uncertainty import calibrate

__all__ = ["KEY_ENV", "NO_CALIBRATION_NOTE", "NO_HEADS_MESSAGE", "PreparedBlock", "Scorer", "TaskInfo",
           "model_summary", "resolve_key"]

KEY_ENV = "FEDMOL_KEY_FILE"
DEFAULT_MC_SAMPLES = 20
NO_CALIBRATION_NOTE = (
    "no conformal calibration: the shared model carries no calibration data (no structure or label "
    "leaves a site); give --site-store to calibrate on your store's validation fold"
)
NO_HEADS_MESSAGE = (
    "this is the consortium's shared model and it has no prediction heads: every task of its federation "
    "is private to the sites, so the shared trunk alone predicts nothing. Use your site's own model, "
    "registered at the end of the federation in your site's own MLflow registry: "
    "models:/fedmol-site-<site name>/latest (tracking URI sqlite:///<site store>/mlflow.db unless the "
    "site set its node-config tracking-uri)"
)


def resolve_key(key_file: str | os.PathLike[str] | None) -> bytes:
    """The consortium key from ``key_file`` or $FEDMOL_KEY_FILE; a clear error when absent."""
    path = key_file or os.environ.get(KEY_ENV)
    if not path:
        raise InputError(
            "this model scores in the consortium's key-permuted feature space: give the consortium "
            f"key file (model_config={{'key_file': PATH}}, --key-file, or ${KEY_ENV})"
        )
    return load_key(Path(path))


@dataclass(frozen=True)
class TaskInfo:
    """One output task: its kind, whether its head is shared (consortium) or private, calibrated."""

    name: str
    kind: str  # classification | regression
    scope: str  # consortium | private
    calibrated: bool

    def columns(self, mc: bool) -> list[str]:
        cols = [self.name] + ([f"{self.name}_std"] if mc else [])
        if self.calibrated:
            cols += [f"{self.name}_p0", f"{self.name}_p1"] if self.kind == "classification" else [
                f"{self.name}_lower", f"{self.name}_upper"]
        return cols


@dataclass
class PreparedBlock:
    """n SMILES after standardisation and featurisation (the RDKit part of scoring).

    canonical, errors: (n,) lists ("" where not applicable); ok: (n_ok,) indices of the rows of X;
    X: (n_ok, n_features) float32 CSR in the key-permuted feature space.
    """

    smiles: list[str]
    canonical: list[str]
    errors: list[str]
    ok: np.ndarray
    X: sp.csr_matrix


class Scorer:
    """A loaded model plus the preparation settings it was trained with.

    model_dir: a model folder (spec.json, weights.pt, meta.json), e.g. the federation's shared model.
    key: the consortium key (checked against the model's key fingerprint).
    mc_samples: MC-dropout passes for ``T_std`` (0: one deterministic pass, no std).
    site_store: score with this site's full model (shared + private heads), calibrated on its
        validation fold. standardize: None = as the model was trained (the only faithful choice);
        False skips standardisation (faithful only when inputs are already standardised alike).
    canonical_smiles: False leaves the ``canonical_smiles`` column empty and skips writing it, the
        largest cost after parsing (RDKit's canonical SMILES writer).
    allow_no_heads: accept a shared model without heads (every task private: it predicts nothing,
        `headless`); otherwise such a model is refused with `NO_HEADS_MESSAGE`.

    A site's own registered model (meta ``scope: site``, `fedmol.client.site_registry`) already holds
    the site's private heads and its calibration: it scores as it is, without ``site_store``.
    """

    def __init__(self, model_dir: str | Path, key: bytes, *, mc_samples: int = DEFAULT_MC_SAMPLES,
                 site_store: str | Path | None = None, confidence: float = 0.8,
                 standardize: bool | None = None, seed: int = 0, canonical_smiles: bool = True,
                 allow_no_heads: bool = False) -> None:
        if not 0 < confidence < 1:
            raise InputError(f"confidence must be between 0 and 1, not {confidence}")
        self.model_dir = Path(model_dir)
        self.model, self.meta = load_model(self.model_dir)
        prep: dict[str, Any] = self.meta.get("prep_settings") or {}
        self.standardize = StandardizeSettings(**prep.get("standardize", {}))
        if standardize is not None and standardize != self.standardize.enabled:
            self.standardize = StandardizeSettings(**{**self.standardize.to_dict(), "enabled": standardize})
        self.featurize = FeaturizeSettings(**prep.get("featurize", {"n_bits": self.model.spec.n_features}))
        if self.featurize.n_features != self.model.spec.n_features:
            raise ConfigError(
                f"model expects {self.model.spec.n_features} features, featurisation gives {self.featurize.n_features}"
            )
        expected = self.meta.get("key_fingerprint")
        if expected and key_fingerprint(key) != expected:
            raise InputError("the key given is not the consortium key this model was trained with "
                             f"(fingerprint {key_fingerprint(key)} != {expected})")
        self.permutation = bit_permutation(key, self.featurize.n_bits)
        self.mc_samples = mc_samples
        self.confidence = confidence
        self.seed = seed
        self.canonical_smiles = canonical_smiles  # False: skip RDKit's SMILES writer (~1/4 of the time)
        self.site: str | None = None
        self.calibration = load_calibration(self.model_dir)
        if self.meta.get("scope") == "site":
            self.site = str(self.meta.get("site") or "") or None
            if site_store is not None:
                raise InputError(f"this is site {self.site}'s own model: its private heads and its calibration "
                                 "are in it; score without --site-store")
        if site_store is not None:
            self._load_site(Path(site_store), key_fingerprint(key))
        if self.headless and not allow_no_heads:
            raise InputError(NO_HEADS_MESSAGE + ("" if site_store is not None else
                                                 ", or give --site-store to add your site's private heads"))
        self._standardizer: Standardizer | None = None
        self._featurizer: Featurizer | None = None

    # -- the site's full model ----------------------------------------------------------------
    def _load_site(self, store_path: Path, key_fp: str) -> None:
        """Shared weights from the model folder + private heads from the store; calibrate on valid."""
        run_config = self.meta.get("run_config")
        federation_id = self.meta.get("federation_id")
        if not run_config or not federation_id:
            raise InputError(f"{self.model_dir} has no run_config/federation_id in meta.json: --site-store "
                             "needs a model written by a federation (server/federations/<id>/model)")
        cfg = FederationConfig.from_run_config(run_config)
        store = SiteStore.load(store_path)
        store_fp = store.settings.get("key_fingerprint")
        if store_fp and store_fp != key_fp:
            raise InputError(f"the site store {store_path} was prepared with another key "
                             f"(fingerprint {store_fp} != {key_fp})")
        site = site_name(store, store_path)
        model, fresh = site_model(store, store_path, cfg, self.model.shared_state_dict(), str(federation_id),
                                  site=site)
        if fresh and model.private_head_names():
            heads_path = federation_dir(store_path, str(federation_id)) / PRIVATE_HEADS
            raise InputError(f"no private heads for federation {federation_id} in {store_path} "
                             f"(expected {heads_path}): did this site take part in that federation?")
        model.eval()
        self.model = model
        self.site = site
        valid = TaskData.from_store(store, model.spec, split_rows(store, cfg, "valid"), trainable_only=False)
        self.calibration = calibrate(model, valid, fold=cfg.valid_fold) if valid.n else None

    # -- views --------------------------------------------------------------------------------
    @property
    def headless(self) -> bool:
        """True for a model without heads (a trunk only): it predicts nothing."""
        return not self.model.spec.heads

    @property
    def tasks(self) -> list[TaskInfo]:
        cal = self.calibration
        out = []
        for h in self.model.spec.heads:
            for t in h.tasks:
                calibrated = cal is not None and (t in cal.classifiers if h.kind == "classification"
                                                  else t in cal.regressors)
                out.append(TaskInfo(t, h.kind, "consortium" if h.shared else "private", calibrated))
        return out

    @property
    def columns(self) -> list[str]:
        """Output columns after smiles, canonical_smiles, error."""
        return [c for t in self.tasks for c in t.columns(self.mc_samples > 0)]

    @property
    def calibration_note(self) -> str:
        if self.calibration is None:
            return NO_CALIBRATION_NOTE
        fold = self.calibration.fold
        where = f"the site store's validation fold {fold}" if self.site else f"fold {fold} of the training data"
        return (f"split-conformal calibration on {where}: p-values for classification, "
                f"{self.confidence:.0%} intervals for regression")

    # -- scoring ------------------------------------------------------------------------------
    def prepare(self, smiles: list[str]) -> PreparedBlock:
        """Standardise and featurise; rejected molecules keep their reason in ``errors``."""
        if self._standardizer is None:  # built once: RDKit's helpers are costly (and keep no per-call state)
            self._standardizer = Standardizer(self.standardize)
        # A featuriser per call (~0.6 ms): it collects rows until finish(), so a shared one would carry
        # the rows of a call that failed into the next call's block.
        std, feat, to_smiles = self._standardizer, Featurizer(self.featurize, self.permutation), Chem.MolToSmiles
        n = len(smiles)
        canonical_smiles = self.canonical_smiles
        canonical = [""] * n
        errors = [""] * n
        ok: list[int] = []
        for i, s in enumerate(smiles):
            try:
                mol = std.from_smiles(s if isinstance(s, str) else "")
                if canonical_smiles:
                    canonical[i] = to_smiles(mol)
                feat.add(mol)
            except MoleculeReject as exc:
                errors[i] = exc.reason
                continue
            except Exception as exc:  # anything else on odd input (a lone surrogate: UnicodeEncodeError): this row's
                canonical[i], errors[i] = "", f"unparsable SMILES: {exc.__class__.__name__}"
                continue
            ok.append(i)
        X = feat.finish().to_csr(self.featurize.n_features)
        return PreparedBlock(list(smiles), canonical, errors, np.asarray(ok, dtype=np.int64), X)

    def predict(self, block: PreparedBlock) -> pd.DataFrame:
        """One row per input: smiles, canonical_smiles, error, then `columns` (NaN for rejects)."""
        n = len(block.smiles)
        data: dict[str, Any] = {"smiles": block.smiles, "canonical_smiles": block.canonical,
                                "error": block.errors}
        cols: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in self.columns}
        if len(block.ok):
            values, std = predict_units(self.model, block.X, self.mc_samples, seed=self.seed)
            rows = block.ok
            cal = self.calibration
            for t in self.tasks:
                value = values[t.name]
                cols[t.name][rows] = value
                if std is not None:
                    cols[f"{t.name}_std"][rows] = std[t.name]
                if t.calibrated and cal is not None and t.kind == "classification":
                    p = cal.classifiers[t.name].p_values(value)
                    cols[f"{t.name}_p0"][rows], cols[f"{t.name}_p1"][rows] = p[:, 0], p[:, 1]
                elif t.calibrated and cal is not None:
                    lo, hi = cal.regressors[t.name].interval(value, self.confidence)
                    cols[f"{t.name}_lower"][rows], cols[f"{t.name}_upper"][rows] = lo, hi
        data.update(cols)
        return pd.DataFrame(data)

    def score(self, smiles: list[str]) -> pd.DataFrame:
        """One row per input SMILES: canonical_smiles, error, and per task the `columns`."""
        return self.predict(self.prepare([str(s) if s is not None else "" for s in smiles]))

    def describe(self) -> dict[str, Any]:
        """What the model is and how it was trained (no key, no path of a site store)."""
        run_config = self.meta.get("run_config") or {}
        keep = ("num-server-rounds", "strategy", "local-epochs", "optimizer", "lr", "n-bits", "hidden",
                "dropout", "input-transform", "consortium-tasks", "test-fold", "valid-fold")
        return {
            "tasks": [t.__dict__ for t in self.tasks],
            "site": self.site,
            "calibration": self.calibration_note,
            "confidence": self.confidence if self.calibration is not None else None,
            "mc_samples": self.mc_samples,
            "training": {
                "federation_id": self.meta.get("federation_id"),
                "rounds": self.meta.get("rounds"),
                "reference_hash": self.meta.get("reference_hash"),
                "key_fingerprint": self.meta.get("key_fingerprint"),
                "run_config": {k: run_config[k] for k in keep if k in run_config},
            },
            "preparation": {"standardize": self.standardize.to_dict(), "featurize": self.featurize.to_dict()},
            "architecture": {"n_features": self.model.spec.n_features, "hidden": list(self.model.spec.hidden),
                             "dropout": self.model.spec.dropout},
        }

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes get the loaded model; RDKit helpers are rebuilt there (not picklable).
        state = dict(self.__dict__)
        state["_standardizer"] = state["_featurizer"] = None
        return state


def predict_units(model: MultiTaskNet, X: sp.csr_matrix, mc_samples: int, *, seed: int = 0,
                  batch_size: int = 2048) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Per task (n,) predictions in task units and, with mc_samples > 0, their MC-dropout std.

    X: (n, n_features) raw stored feature values. MC dropout draws ``mc_samples`` dropout masks per
    dropout layer from ``seed`` and applies the same masks to every molecule: each molecule's
    samples are still independent dropout passes (the per-molecule MC estimate is unchanged in
    distribution), and its prediction and std become a function of the molecule alone, the same in
    any file, chunk, worker or request. It is also what makes MC cheap: the sparse input layer runs
    once, and the last dropout folds into the heads' weights, (S, tasks, hidden), so S samples cost
    one (B, hidden) x (hidden, S * tasks) product instead of S forward passes.
    """
    Xt = transform_features(X, model.spec.input_transform)
    heads = model.heads
    mean_parts: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    std_parts: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    was_training = model.training
    model.eval()
    modules = list(model.trunk.layers)
    masks: list[torch.Tensor] = []
    if mc_samples > 0:
        gen = torch.Generator().manual_seed(seed)
        width = model.spec.hidden[0]
        for m in modules:
            if isinstance(m, torch.nn.Linear):
                width = m.out_features
            elif isinstance(m, torch.nn.Dropout):
                keep = 1.0 - m.p
                masks.append(torch.bernoulli(torch.full((mc_samples, width), keep), generator=gen) / keep)
    with torch.no_grad():
        for batch in iter_feature_batches(Xt, batch_size):
            first = model.trunk.input(batch)
            if mc_samples <= 0:
                h = model.trunk.layers(first)
                for name, head in heads.items():
                    mean_parts[name].append(head.to_units(head(h)).numpy())
                continue
            x = first.unsqueeze(0)  # (1 or S, B, hidden)
            pending: torch.Tensor | None = None
            it = iter(masks)
            for m in modules:
                if isinstance(m, torch.nn.Dropout):
                    pending = next(it)
                elif isinstance(m, torch.nn.Linear):
                    assert pending is not None
                    x = torch.nn.functional.linear(x * pending[:, None, :], m.weight, m.bias)  # (S, B, out)
                    pending = None
                else:
                    x = m(x)
            assert pending is not None  # the trunk ends with ReLU, Dropout
            for name, head in heads.items():
                w = head.linear.weight[None, :, :] * pending[:, None, :]  # (S, tasks, hidden)
                if x.shape[0] == 1:  # one product for all samples; (B, S, tasks) stays contiguous
                    out = (x[0] @ w.reshape(-1, w.shape[-1]).T).reshape(x.shape[1], mc_samples, -1)
                else:
                    out = torch.bmm(x, w.transpose(1, 2)).transpose(0, 1)
                out += head.linear.bias
                units = head.to_units(out)  # (B, S, tasks)
                # Two-pass std (centre, then mean of squares): same values as torch.std_mean to
                # ~2e-7 relative, in half the model's time (std_mean's reduction is not vectorised).
                mean = units.mean(dim=1, keepdim=True)
                sd = (units - mean).square_().mean(dim=1).sqrt_()
                mean_parts[name].append(mean[:, 0].numpy())
                std_parts[name].append(sd.numpy())
    model.train(was_training)
    values: dict[str, np.ndarray] = {}
    std: dict[str, np.ndarray] | None = {} if mc_samples > 0 else None
    for h in model.spec.heads:
        empty = np.zeros((0, h.n_tasks), np.float32)
        head_mean = np.concatenate(mean_parts[h.name]) if mean_parts[h.name] else empty
        head_sd = np.concatenate(std_parts[h.name]) if std_parts[h.name] else empty
        for j, task in enumerate(h.tasks):
            values[task] = head_mean[:, j]
            if std is not None:
                std[task] = head_sd[:, j]
    return values, std


def model_summary(model_dir: str | Path) -> dict[str, Any]:
    meta_path = Path(model_dir) / "meta.json"
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}


def resolve_model_dir(model: str, tracking_uri: str | None) -> Path:
    """A model folder (spec.json, weights.pt, meta.json) from a path or a ``models:/NAME/VERSION`` URI."""
    if model.startswith(("models:/", "runs:/")):
        import mlflow  # only for registry URIs: mlflow takes seconds to import, a model folder needs none of it

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(model))
        except Exception as exc:  # MlflowException and friends: say which model and where
            msg = str(exc).splitlines()[0][:200]
            raise InputError(f"cannot load {model} from the registry ({msg}): check the name/version and "
                             "--tracking-uri (or $MLFLOW_TRACKING_URI)") from None
        found = [p.parent for p in local.rglob("spec.json")]
        if not found:
            raise InputError(f"{model} is not a fedmol model (no spec.json in its artifacts)")
        return found[0]
    path = Path(model)
    if not (path / "spec.json").exists():
        raise InputError(f"{path} is not a fedmol model folder (expected spec.json and weights.pt)")
    return path
