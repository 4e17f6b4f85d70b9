"""The MLflow pyfunc of a fedmol model: a DataFrame with a ``smiles`` column in, per-task
predictions (and MC-dropout standard deviations; conformal p-values or intervals when the model
carries its calibration) out.

Two kinds of registered model load through it: the consortium's shared model (the server's
registry, ``fedmol-shared``), and a site's own full model (shared trunk and consortium heads plus
the site's private heads, personalised where the site chose so, calibrated on its validation fold),
registered in the site's own registry as ``fedmol-site-<site>``. Load it anywhere fedmol is
installed, with the consortium key::

    model = mlflow.pyfunc.load_model("models:/fedmol-shared/1", model_config={"key_file": "consortium.key"})
    model.predict(pd.DataFrame({"smiles": ["CCO", "c1ccccc1O"]}))

(or set FEDMOL_KEY_FILE instead of model_config).

A shared model without heads (every task of the federation private to the sites: only the trunk is
shared) predicts nothing: loading it warns, and predicting fails with a message that points to the
site's own model.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel

log = logging.getLogger("fedmol.scoring")


class FedmolPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        from fedmol.scoring.scorer import NO_HEADS_MESSAGE, Scorer, resolve_key

        config = dict(getattr(context, "model_config", None) or {})
        key = resolve_key(config.get("key_file"))
        self.scorer = Scorer(context.artifacts["model"], key, mc_samples=int(config.get("mc_samples", 20)),
                             allow_no_heads=True)
        self.no_heads = NO_HEADS_MESSAGE if self.scorer.headless else ""
        if self.no_heads:  # loading succeeds (mlflow models serve starts), and says why it cannot predict
            log.warning("%s", self.no_heads)
            warnings.warn(self.no_heads, UserWarning, stacklevel=2)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if getattr(self, "no_heads", ""):
            raise MlflowException.invalid_parameter_value(self.no_heads)
        if isinstance(model_input, pd.Series):
            model_input = model_input.to_frame("smiles")
        if "smiles" not in model_input.columns:
            raise ValueError(f"input needs a 'smiles' column; it has {list(model_input.columns)}")
        return self.scorer.score(model_input["smiles"].astype(str).tolist())
