"""Structure standardisation with RDKit's MolStandardize, MELLODDY-TUNER style.

Order of steps (each can be switched off; all are recorded in settings.json):
cleanup (normalise functional groups, disconnect metals, reionise) → parent fragment (largest
organic fragment, so salts and solvents go) → heavy-atom limit → neutralise → stereo handling →
canonical tautomer (enumeration capped). The heavy-atom limit and stereo handling also apply when
standardisation is disabled, because they define a compound's identity.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, get_args

from rdkit import Chem, RDLogger
from rdkit.Chem.MolStandardize import rdMolStandardize

from fedmol.datasets.options import StereoMode

__all__ = ["MAX_FRAGMENTS", "MoleculeReject", "StandardizeSettings", "Standardizer", "not_a_compound", "parse_smiles",
           "standardize_smiles"]

# Bounds checked before any step whose cost grows faster than the input (a 12 kB SMILES of 6,000
# fragments took RDKit's largest-fragment chooser 20 s): the SMILES at most LENGTH_PER_HEAVY_ATOM
# characters and, as written (salts, solvents, explicit hydrogens included), ATOMS_PER_HEAVY_ATOM
# atoms per allowed heavy atom (``max_heavy_atoms``, applied to the parent fragment later), and at
# most MAX_FRAGMENTS fragments. The most in ../shared/data (178,000 records) is 1,340 characters and
# 20 fragments, so no real record meets them.
LENGTH_PER_HEAVY_ATOM = 100
ATOMS_PER_HEAVY_ATOM = 10
MAX_FRAGMENTS = 50


@dataclass(frozen=True)
class StandardizeSettings:
    """How input structures become the compound that is featurised.

    ``max_tautomers`` caps RDKit's tautomer enumeration (its own default is 1000); beyond the cap
    the canonical tautomer is the best one found so far, which keeps run time bounded.
    """

    enabled: bool = True
    cleanup: bool = True
    parent_fragment: bool = True
    neutralize: bool = True
    canonical_tautomer: bool = True
    max_tautomers: int = 100
    max_heavy_atoms: int = 100
    stereo: StereoMode = "drop"

    def __post_init__(self) -> None:
        if self.stereo not in get_args(StereoMode):
            from fedmol.errors import ConfigError

            raise ConfigError(f"stereo must be 'drop' or 'keep', not {self.stereo!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MoleculeReject(Exception):
    """A molecule that cannot enter the store; ``reason`` is the short text written to rejects.csv."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_smiles(smiles: str, max_atoms: int | None = None) -> Chem.Mol:
    """The molecule ``Chem.MolFromSmiles(smiles)`` returns, about 20 µs cheaper; raises MoleculeReject.

    ``MolFromSmiles`` parses, sanitises, removes explicit hydrogens (re-sanitising) and perceives
    stereochemistry. Here hydrogens are removed only when the molecule has any, and stereochemistry
    is perceived only when the SMILES has a stereo mark: the same molecule (canonical SMILES, with
    and without stereo, and Morgan fingerprints identical on all 178,000 molecules of
    ``../shared/data``; ``tests/datasets/test_fast_paths.py`` checks a sample), with RDKit's own
    sanitisation error as the reject reason instead of ``None``. ``max_atoms``: more atoms as written
    are refused before sanitisation (ring perception and kekulisation grow faster than the size).
    """
    try:
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
    except UnicodeEncodeError:  # a lone surrogate ("\ud800", valid in JSON and Python text): no UTF-8, no SMILES
        raise MoleculeReject("unparsable SMILES: not valid Unicode (a lone surrogate, \\ud800-\\udfff)") from None
    if mol is None:
        raise MoleculeReject("unparsable SMILES: RDKit could not read it")
    if max_atoms is not None and mol.GetNumAtoms() > max_atoms:
        raise MoleculeReject(f"too large: {mol.GetNumAtoms()} atoms as written > {max_atoms}")
    try:
        Chem.SanitizeMol(mol)
        if mol.GetNumHeavyAtoms() != mol.GetNumAtoms():  # hydrogen (or dummy) atoms: RDKit's own path
            mol = Chem.RemoveHs(mol)
        if "@" in smiles or "/" in smiles or "\\" in smiles:  # stereo marks
            Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    except Exception as exc:  # RDKit's sanitisation errors (valence, kekulisation) as plain exceptions
        raise MoleculeReject(f"unparsable SMILES: {str(exc).splitlines()[0][:100]}") from None
    return mol


class Standardizer:
    """Reusable standardiser: builds RDKit's helper objects once (they are costly) per process."""

    def __init__(self, settings: StandardizeSettings) -> None:
        RDLogger.DisableLog("rdApp.*")  # bad input is reported in rejects.csv, not on stderr
        self.settings = settings
        self._chooser = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
        self._uncharger = rdMolStandardize.Uncharger(canonicalOrder=True)
        self._enumerator = rdMolStandardize.TautomerEnumerator()
        self._enumerator.SetMaxTautomers(settings.max_tautomers)
        self._enumerator.SetRemoveSp3Stereo(False)
        self._enumerator.SetRemoveBondStereo(False)

    def from_smiles(self, smiles: str) -> Chem.Mol:
        """Parse and standardise one SMILES; raises MoleculeReject with the reason."""
        if not isinstance(smiles, str) or not smiles.strip():
            raise MoleculeReject("empty SMILES")
        text = smiles.strip()
        heavy = self.settings.max_heavy_atoms
        if len(text) > LENGTH_PER_HEAVY_ATOM * heavy:
            raise MoleculeReject(f"too large: a SMILES of {len(text):,} characters > {LENGTH_PER_HEAVY_ATOM * heavy:,}")
        if text.count(".") >= MAX_FRAGMENTS:
            raise MoleculeReject(f"too many fragments: {text.count('.') + 1} > {MAX_FRAGMENTS}")
        mol = parse_smiles(text, max_atoms=ATOMS_PER_HEAVY_ATOM * heavy)
        if "*" in text or ("[" in text and _ISOTOPE.search(text)):
            not_a_compound(mol)
        return self.standardize(mol)

    def standardize(self, mol: Chem.Mol) -> Chem.Mol:
        """Standardise a parsed molecule (a new object is returned; the input may be modified)."""
        s = self.settings
        if mol.GetNumAtoms() == 0:
            raise MoleculeReject("empty molecule: no atoms")
        try:
            if s.enabled:
                if s.cleanup:
                    mol = rdMolStandardize.Cleanup(mol)
                if s.parent_fragment:
                    n_fragments = len(Chem.GetMolFrags(mol))  # after cleanup, which disconnects metals
                    if n_fragments > MAX_FRAGMENTS:
                        raise MoleculeReject(f"too many fragments: {n_fragments} > {MAX_FRAGMENTS}")
                    mol = self._chooser.choose(mol)
            self._check_size(mol)
            if s.enabled and s.neutralize:
                mol = self._uncharger.uncharge(mol)
            if s.stereo == "drop":
                Chem.RemoveStereochemistry(mol)
            if s.enabled and s.canonical_tautomer:
                mol = self._enumerator.Canonicalize(mol)
        except MoleculeReject:
            raise
        except Exception as exc:  # RDKit raises plain RuntimeError/ValueError on odd input
            raise MoleculeReject(f"standardisation failed: {str(exc).splitlines()[0][:80]}") from None
        if mol.GetNumAtoms() == 0:
            raise MoleculeReject("no atoms left after standardisation")
        return mol

    def _check_size(self, mol: Chem.Mol) -> None:
        n = mol.GetNumHeavyAtoms()
        if n > self.settings.max_heavy_atoms:
            raise MoleculeReject(f"too large: {n} heavy atoms > {self.settings.max_heavy_atoms}")


_ISOTOPE = re.compile(r"\[\d")  # a bracket atom that starts with a mass number


def not_a_compound(mol: Chem.Mol) -> None:
    """Raise MoleculeReject for what is no compound: a dummy atom (``*``: a query or attachment
    point) or an isotope no element has (``[300U]``). Ions and metals (``[U+6]``, ``[Fe]``) are
    compounds: they are prepared and scored, as the sites' data has them (``[Hg+2]``, ``[K+]``)."""
    table = Chem.GetPeriodicTable()
    for atom in mol.GetAtoms():
        z = atom.GetAtomicNum()
        if z == 0:
            raise MoleculeReject("dummy atom (*): a query or attachment point, not a compound")
        isotope = atom.GetIsotope()
        if isotope and table.GetMassForIsotope(z, isotope) == 0:
            raise MoleculeReject(f"unknown isotope: {isotope}{atom.GetSymbol()}")


def standardize_smiles(smiles: str, settings: StandardizeSettings | None = None) -> str:
    """Canonical SMILES of the standardised structure (convenience; raises MoleculeReject)."""
    mol = Standardizer(settings or StandardizeSettings()).from_smiles(smiles)
    return Chem.MolToSmiles(mol)
