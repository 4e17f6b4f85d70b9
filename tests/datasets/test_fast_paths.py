"""The two shortcuts on the scoring hot path give exactly what the plain RDKit calls give.

* `fedmol.datasets.standardize.parse_smiles` against ``Chem.MolFromSmiles``: same molecules accepted,
  same canonical SMILES (with and without stereo), same Morgan fingerprints (with and without
  chirality), same CIP labels.
* `fedmol.datasets.featurize.Featurizer` decoding RDKit's binary fingerprints against its dict path.

On real molecules from ../shared/data, including every one with stereo marks, explicit hydrogen
atoms or charges in the sampled files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

from fedmol.datasets.featurize import Featurizer, FeaturizeSettings, bit_permutation
from fedmol.datasets.standardize import MoleculeReject, parse_smiles


def _sample(data_dir: Path) -> list[str]:
    """1,500 chembl molecules plus the unusual ones of four small sets (and some broken SMILES)."""
    out = pd.read_csv(data_dir / "chembl_5thresh.csv.gz", usecols=["smiles"], nrows=1500)["smiles"].tolist()
    for name in ("tox21", "bbbp", "clintox", "sider"):
        smiles = pd.read_csv(data_dir / f"{name}.csv.gz", usecols=["smiles"])["smiles"].astype(str)
        out += [s for s in smiles if any(m in s for m in ("@", "/", "\\", "[H", "[2H", "+", "-]", "."))]
    return out + ["C(C)(C)(C)(C)C", "c1cccc1", "C1CC", "not a smiles", "[Na+].[Cl-]", "[H][H]", "[2H]C([2H])([2H])O"]


def _identity(mol: Chem.Mol) -> tuple:
    plain = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=32768)
    chiral = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=32768, includeChirality=True)
    return (Chem.MolToSmiles(mol), Chem.MolToSmiles(mol, isomericSmiles=False),
            plain.GetSparseCountFingerprint(mol).GetNonzeroElements(),
            chiral.GetSparseCountFingerprint(mol).GetNonzeroElements(),
            [a.GetPropsAsDict().get("_CIPCode") for a in mol.GetAtoms()])


def test_parse_smiles_is_molfromsmiles(data_dir: Path) -> None:
    RDLogger.DisableLog("rdApp.*")
    sample = _sample(data_dir)
    stereo = sum(("@" in s or "/" in s) for s in sample)
    hydrogens = sum("[H" in s or "[2H" in s for s in sample)
    assert len(sample) > 2000 and stereo > 200 and hydrogens >= 2  # the sample covers every branch
    rejected = 0
    for s in sample:
        expected = Chem.MolFromSmiles(s)
        try:
            got = parse_smiles(s)
        except MoleculeReject as exc:
            assert expected is None, f"{s}: rejected ({exc.reason}) but RDKit reads it"
            assert exc.reason.startswith("unparsable SMILES: ")
            rejected += 1
            continue
        assert expected is not None, f"{s}: accepted but RDKit rejects it"
        assert _identity(got) == _identity(expected), s
    assert rejected >= 4


def test_parse_smiles_names_rdkits_reason() -> None:
    with pytest.raises(MoleculeReject, match="unparsable SMILES: Explicit valence for atom # 1 C"):
        parse_smiles("CC(C)(C)(C)C")
    with pytest.raises(MoleculeReject, match="unparsable SMILES: Can't kekulize"):
        parse_smiles("c1cccc1")
    with pytest.raises(MoleculeReject, match="could not read it"):
        parse_smiles("C1CC")


@pytest.mark.parametrize("settings", [FeaturizeSettings(), FeaturizeSettings(counts=True),
                                      FeaturizeSettings(n_bits=2000, counts=True),
                                      FeaturizeSettings(radius=2, n_bits=2048, use_chirality=True)],
                         ids=["ecfp6-32k", "counts", "not-power-of-2", "ecfp4-chiral"])
def test_binary_fingerprint_decoding_matches_the_dict_path(data_dir: Path, settings: FeaturizeSettings,
                                                           key: bytes) -> None:
    mols = [m for s in _sample(data_dir) if (m := Chem.MolFromSmiles(s)) is not None]
    perm = bit_permutation(key, settings.n_bits)
    fast, plain = Featurizer(settings, perm), Featurizer(settings, perm)
    assert fast._layout is not None  # this RDKit's layout is the one decoded
    plain._layout = None
    for m in mols:
        fast.add(m)
        plain.add(m)
    a, b = fast.finish().to_csr(settings.n_features), plain.finish().to_csr(settings.n_features)
    assert a.shape == (len(mols), settings.n_features) and a.nnz > 20 * len(mols)
    assert (a != b).nnz == 0
    np.testing.assert_array_equal(a.indptr, b.indptr)
