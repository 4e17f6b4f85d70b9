"""JSON for the files fedmol writes: numpy scalars and arrays and paths become plain values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def json_default(o: Any) -> Any:
    """``default=`` for `json.dumps`: numpy integers/floats/arrays and paths; anything else is an error."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
