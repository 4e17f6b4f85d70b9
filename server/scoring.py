"""Scoring molecules with a shared model: SMILES in, per-task predictions with uncertainty out.

The same preparation as at the sites (standardisation, then the key-permuted fingerprint) so
the model sees molecules exactly as in training. Molecules that cannot be prepared are returned
with their reason in ``error`` and empty predictions: none is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmol.errors import ConfigError, InputError

KEY_ENV = "FEDMOL_KEY_FILE"


def resolve_key(key_file: str | os.PathLike[str] | None) -> bytes:
    """The consortium key from ``key_file`` or $FEDMOL_KEY_FILE; a clear error when absent."""
    from datasets.keys import load_key

    path = key_file or os.environ.get(KEY_ENV)
    if not path:
        raise InputError(
            "this model scores in the consortium's key-permuted feature space: give the consortium "
            f"key file (model_config={{'key_file': PATH}}, --key-file, or ${KEY_ENV})"
        )
    return load_key(path)


class Scorer:
    """A loaded shared model plus the preparation settings it was trained with."""

    def __init__(self, model_dir: str | Path, key: bytes, *, mc_samples: int = 20) -> None:
        from datasets.featurize import FeaturizeSettings, bit_permutation
        from datasets.keys import key_fingerprint
        from datasets.standardize import StandardizeSettings
        from models.io import load_model

        self.model, self.meta = load_model(Path(model_dir))
        self.model.eval()
        prep: dict[str, Any] = self.meta.get("prep_settings") or {}
        self.standardize = StandardizeSettings(**prep.get("standardize", {}))
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

    @property
    def tasks(self) -> list[tuple[str, str]]:
        return [(t, h.kind) for h in self.model.spec.heads for t in h.tasks]

    def score(self, smiles: list[str]) -> pd.DataFrame:
        """One row per input SMILES: canonical_smiles, error, and per task value and std."""
        from rdkit import Chem

        from datasets.featurize import Featurizer
        from datasets.standardize import MoleculeReject, Standardizer
        from models.training import predict

        std = Standardizer(self.standardize)
        feat = Featurizer(self.featurize, self.permutation)
        canonical: list[str] = [""] * len(smiles)
        errors: list[str] = [""] * len(smiles)
        ok: list[int] = []
        for i, s in enumerate(smiles):
            try:
                mol = std.from_smiles(str(s) if s is not None else "")
            except MoleculeReject as exc:
                errors[i] = exc.reason
                continue
            canonical[i] = Chem.MolToSmiles(mol)
            feat.add(mol)
            ok.append(i)
        out = pd.DataFrame({"smiles": smiles, "canonical_smiles": canonical, "error": errors})
        X = feat.finish().to_csr(self.featurize.n_features)
        for task, _kind in self.tasks:
            out[task] = np.nan
            out[f"{task}_std"] = np.nan
        if ok:
            preds = predict(self.model, X, mc_samples=self.mc_samples, seed=0)
            rows = np.asarray(ok)
            for task, _kind in self.tasks:
                out.loc[rows, task] = preds.values[task]
                if preds.std is not None:
                    out.loc[rows, f"{task}_std"] = preds.std[task]
        return out


def model_summary(model_dir: str | Path) -> dict[str, Any]:
    meta_path = Path(model_dir) / "meta.json"
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}
