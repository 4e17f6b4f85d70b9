"""A model on disk: ``spec.json`` + ``weights.pt`` (a plain state_dict) + ``meta.json``
(+ ``calibration.json`` when conformal calibration was fitted). No pickled classes: loading uses
``torch.load(..., weights_only=True)`` and rebuilds the network from the spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedmol.errors import ConfigError, InputError
from fedmol.jsonio import json_default
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import ModelSpec
from fedmol.models.uncertainty import ConformalCalibration

__all__ = ["save_model", "load_model", "load_calibration", "MODEL_FILES"]

MODEL_FILES = ("spec.json", "weights.pt", "meta.json")


def save_model(
    directory: str | Path,
    model: MultiTaskNet,
    *,
    meta: dict[str, Any] | None = None,
    calibration: ConformalCalibration | None = None,
) -> Path:
    """Write the model to ``directory`` (created if needed); returns the directory.

    meta: JSON-serialisable facts about the run (training config, metrics, data hashes...).
    The weights include private heads: this is a site-side file.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "spec.json").write_text(model.spec.to_json() + "\n")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, path / "weights.pt")
    (path / "meta.json").write_text(json.dumps(meta or {}, indent=2, sort_keys=True, default=json_default) + "\n")
    if calibration is not None:
        (path / "calibration.json").write_text(calibration.to_json() + "\n")
    return path


def load_model(directory: str | Path, *, map_location: str = "cpu") -> tuple[MultiTaskNet, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, meta)."""
    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"no model at {path}: train one with `fedmol train STORE --out {path}`")
    missing = [f for f in MODEL_FILES if not (path / f).exists()]
    if missing:
        raise InputError(f"incomplete model at {path}: missing {', '.join(missing)}")
    spec = ModelSpec.from_json((path / "spec.json").read_text())
    model = MultiTaskNet(spec)
    try:
        state = torch.load(path / "weights.pt", map_location=map_location, weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"weights in {path} do not fit its spec.json: {exc}") from exc
    model.eval()
    meta = json.loads((path / "meta.json").read_text())
    return model, meta


def load_calibration(directory: str | Path) -> ConformalCalibration | None:
    """The model's conformal calibration, or None when it was saved without one."""
    p = Path(directory) / "calibration.json"
    return ConformalCalibration.from_json(p.read_text()) if p.exists() else None
