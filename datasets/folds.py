"""Scaffold folds: the same scaffold lands in the same fold at every site, decided by the key.

fold = int(HMAC-SHA256(derive(key, "folds"), scaffold SMILES)) mod n_folds, where the scaffold is
RDKit's plain Bemis-Murcko scaffold (ring systems and linkers, atom and bond types kept; written
as canonical SMILES without stereo, so stereoisomers share a fold). The plain scaffold is used
rather than the generic (all-carbon, single-bond) one because generic scaffolds merge very
different chemotypes (benzene, pyridine and cyclohexane all become C1CCCCC1) and make folds
even more lopsided.

Two kinds of molecules are hashed by their own identity (canonical SMILES of the standardised
molecule without stereo; isotope labels stay when stereo was dropped at standardisation)
instead of their scaffold, so that they spread over all folds:

* acyclic molecules, whose scaffold is empty (otherwise all of them share one fold);
* with ``split_single_ring`` (default on), molecules whose scaffold is a single ring. On Tox21
  the benzene scaffold alone holds ~1,500 molecules, which made one fold 3x bigger than another
  (see DESIGN.md). A lone ring says little about the chemical series, so splitting these by
  molecule costs little leakage. MELLODDY-TUNER solved the same problem with a "preferred"
  scaffold from the scaffold network; this is the simpler rule.

Both rules only depend on the structure and the key, so every site still agrees.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from fedmol.datasets.keys import derive

__all__ = ["FoldAssigner", "FoldSettings", "assign_fold", "fold_balance", "scaffold_smiles"]

FoldBasis = Literal["scaffold", "acyclic", "single_ring"]


@dataclass(frozen=True)
class FoldSettings:
    """Scaffold-fold parameters (consortium-wide: every site must use the same)."""

    n_folds: int = 5
    scaffold: Literal["murcko"] = "murcko"
    split_single_ring: bool = True

    def __post_init__(self) -> None:
        from fedmol.errors import ConfigError

        if not 2 <= self.n_folds <= 100:
            raise ConfigError(f"n_folds must be between 2 and 100, not {self.n_folds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scaffold_smiles(mol: Chem.Mol) -> str:
    """Canonical SMILES (no stereo) of the plain Murcko scaffold; '' for acyclic molecules."""
    if mol.GetRingInfo().NumRings() == 0:
        return ""
    return Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol), isomericSmiles=False)


class FoldAssigner:
    """Assigns folds with one derived sub-key; build once per process."""

    def __init__(self, key: bytes, settings: FoldSettings, *, subkey: bytes | None = None) -> None:
        # Worker processes get only the derived sub-key (``subkey``), never the consortium key.
        self._fold_key = subkey if subkey is not None else derive(key, "folds")
        self.settings = settings

    def basis(self, mol: Chem.Mol, identity: str | None = None) -> tuple[FoldBasis, str]:
        """What the fold is hashed from: ("scaffold", scaffold SMILES), or ("acyclic" |
        "single_ring", the molecule's identity). The identity is its canonical SMILES without
        stereo; a caller that already has it (stereo dropped at standardisation) passes it in."""
        ring_count = mol.GetRingInfo().NumRings()
        if ring_count == 0 or (ring_count == 1 and self.settings.split_single_ring):
            # a molecule with one ring has a one-ring scaffold (Murcko keeps every ring)
            kind: FoldBasis = "acyclic" if ring_count == 0 else "single_ring"
            return kind, identity if identity is not None else Chem.MolToSmiles(mol, isomericSmiles=False)
        return "scaffold", scaffold_smiles(mol)

    def fold_of(self, mol: Chem.Mol, identity: str | None = None) -> tuple[int, FoldBasis]:
        """(fold 0..n_folds-1, basis) of a molecule."""
        basis, text = self.basis(mol, identity)
        return self.fold_of_text(text), basis

    def fold_of_text(self, text: str) -> int:
        digest = hmac.digest(self._fold_key, text.encode(), hashlib.sha256)
        return int.from_bytes(digest[:8], "big") % self.settings.n_folds


def assign_fold(mol_or_smiles: Chem.Mol | str, key: bytes, n_folds: int = 5,
                settings: FoldSettings | None = None) -> int:
    """The fold (0..n_folds-1) of one molecule or SMILES (parsed as is, not standardised)."""
    mol = Chem.MolFromSmiles(mol_or_smiles) if isinstance(mol_or_smiles, str) else mol_or_smiles
    if mol is None:
        from fedmol.errors import InputError

        raise InputError(f"cannot assign a fold: unparsable SMILES {mol_or_smiles!r}")
    settings = settings or FoldSettings(n_folds=n_folds)
    return FoldAssigner(key, settings).fold_of(mol)[0]


def fold_balance(folds: np.ndarray, n_folds: int) -> dict[str, Any]:
    """Fold sizes and the ratio of the largest to the smallest fold (1.0 = perfectly even)."""
    sizes = np.bincount(np.asarray(folds, dtype=np.int64), minlength=n_folds)[:n_folds]
    smallest = int(sizes.min()) if len(sizes) else 0
    return {
        "sizes": [int(s) for s in sizes],
        "max_over_min": round(float(sizes.max() / smallest), 3) if smallest else None,
    }
