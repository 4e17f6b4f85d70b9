"""The MLflow pyfunc of a shared fedmol model: a DataFrame with a ``smiles`` column in,
per-task predictions (and MC-dropout standard deviations) out.

Load it anywhere fedmol is installed, with the consortium key::

    model = mlflow.pyfunc.load_model("models:/fedmol-shared/1", model_config={"key_file": "consortium.key"})
    model.predict(pd.DataFrame({"smiles": ["CCO", "c1ccccc1O"]}))

(or set FEDMOL_KEY_FILE instead of model_config).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel


class FedmolPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        from fedmol.scoring.scorer import Scorer, resolve_key

        config = dict(getattr(context, "model_config", None) or {})
        key = resolve_key(config.get("key_file"))
        self.scorer = Scorer(context.artifacts["model"], key, mc_samples=int(config.get("mc_samples", 20)))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if isinstance(model_input, pd.Series):
            model_input = model_input.to_frame("smiles")
        if "smiles" not in model_input.columns:
            raise ValueError(f"input needs a 'smiles' column; it has {list(model_input.columns)}")
        return self.scorer.score(model_input["smiles"].astype(str).tolist())
