"""The closed choices of data preparation, as types. Light to import (no pandas, no RDKit), so the
`fedmol prepare` command offers them as choices without loading the pipeline.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Layout", "StereoMode"]

Layout = Literal["wide", "long"]  # wide: one column per task; long: one row per (compound, task, value)
StereoMode = Literal["drop", "keep"]  # stereochemistry dropped (MELLODDY) or kept
