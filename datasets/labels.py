"""Label values: parsing with censoring qualifiers, thresholds, and merging duplicates.

Censoring is stored as an int8 next to each value: -1 for '<' (the true value is below), 0 for an
exact value, +1 for '>' (the true value is above). '<=' and '>=' are read as '<' and '>', '=' and
'~' as exact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["QUALIFIERS", "apply_threshold", "parse_values"]

QUALIFIERS = {"": 0, "=": 0, "~": 0, "<": -1, "<=": -1, ">": 1, ">=": 1}
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_PATTERN = r"^\s*(<=|>=|<|>|=|~)?\s*" + _NUMBER + r"\s*$"


def parse_values(
    values: pd.Series | np.ndarray, qualifiers: pd.Series | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse raw label cells.

    ``values``: (n,) numbers, or strings such as "5.2", "<5.2", ">= 7"; missing cells (NaN, "")
    give NaN. ``qualifiers``: optional (n,) strings from a separate qualifier column; a qualifier
    there overrides none in the value. Returns (value float64 (n,), censor int8 (n,),
    bad bool (n,)), where ``bad`` marks non-missing cells that could not be read (value NaN).
    """
    s = pd.Series(values).reset_index(drop=True)
    n = len(s)
    censor = np.zeros(n, dtype=np.int8)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        value = s.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        bad = np.zeros(n, dtype=bool)
        # inf is not a measurement
        bad |= np.isinf(value)
        value[bad] = np.nan
    else:
        text = s.astype("string").str.strip()
        missing = text.isna() | (text == "")
        parts = text.str.extract(_PATTERN)
        numbers = pd.to_numeric(parts[1], errors="coerce")
        value = numbers.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        qual = parts[0].fillna("").to_numpy(dtype=object)
        censor = np.array([QUALIFIERS[q] for q in qual], dtype=np.int8)
        bad = (~missing.to_numpy(dtype=bool)) & np.isnan(value)
        censor[np.isnan(value)] = 0
    if qualifiers is not None:
        q = pd.Series(qualifiers).reset_index(drop=True).astype("string").fillna("").str.strip()
        known = q.isin(list(QUALIFIERS)).to_numpy(dtype=bool)
        has_value = ~np.isnan(value)
        bad |= has_value & ~known
        from_column = np.array([QUALIFIERS.get(x, 0) for x in q.to_numpy(dtype=object)], dtype=np.int8)
        censor = np.where((from_column != 0) & has_value, from_column, censor).astype(np.int8)
    value[bad] = np.nan
    censor[bad] = 0
    return value, censor, bad


def apply_threshold(value: np.ndarray, censor: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Classification labels from values: 1 if value >= threshold, else 0.

    Censored values: '>x' with x >= threshold is 1; '<x' with x <= threshold is 0; otherwise the
    true value could lie on either side, so the label is missing (NaN) and counted as ambiguous.
    Returns (label float64 (n,) with NaN, ambiguous bool (n,)).
    """
    label = np.full(value.shape, np.nan)
    has = ~np.isnan(value)
    exact = has & (censor == 0)
    label[exact] = (value[exact] >= threshold).astype(np.float64)
    above = has & (censor > 0)
    below = has & (censor < 0)
    label[above & (value >= threshold)] = 1.0
    label[below & (value <= threshold)] = 0.0
    ambiguous = has & np.isnan(label)
    return label, ambiguous
