from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from fedmol.datasets.featurize import FeaturizeSettings, bit_permutation, featurize_smiles
from fedmol.datasets.folds import FoldAssigner, FoldSettings, assign_fold, scaffold_smiles
from fedmol.datasets.prepare import PrepareSettings, prepare_file
from fedmol.datasets.readers import TableSpec
from fedmol.datasets.reference import reference_hash
from fedmol.datasets.standardize import StandardizeSettings

# molecules sharing two-ring scaffolds, with different substituents
SERIES = {
    "c1ccc(-c2ccncc2)cc1": ["Cc1ccc(-c2ccncc2)cc1", "Oc1ccc(-c2ccncc2)cc1", "Clc1ccc(-c2ccncc2)cc1",
                            "NC(=O)c1ccc(-c2ccncc2)cc1"],
    "c1ccc2[nH]ccc2c1": ["Cc1ccc2[nH]ccc2c1", "OCCc1c[nH]c2ccccc12", "COc1ccc2[nH]ccc2c1"],
    "O=C(Nc1ccccc1)c1ccccc1": ["Cc1ccc(NC(=O)c2ccccc2)cc1", "O=C(Nc1ccc(F)cc1)c1ccccc1"],
}


def _write(path: Path, smiles: list[str]) -> Path:
    path.write_text("smiles,y\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(smiles)))
    return path


def test_same_scaffold_same_fold_across_files(tmp_path: Path, key: bytes) -> None:
    members = [s for group in SERIES.values() for s in group]
    # two sites: different files, different molecules, overlapping scaffolds
    file_a = _write(tmp_path / "a.csv", members[::2] + ["CCO", "CCCC"])
    file_b = _write(tmp_path / "b.csv", members[1::2] + ["CCN"])
    settings = PrepareSettings()
    folds = {}
    for f in (file_a, file_b):
        res = prepare_file(f, key, None, settings, workers=1, progress=False)
        for smi, fold in zip(res.store.compounds["smiles"], res.store.folds, strict=True):
            mol = Chem.MolFromSmiles(smi)
            if mol.GetRingInfo().NumRings() >= 2:
                folds.setdefault(scaffold_smiles(mol), set()).add(int(fold))
    assert set(folds) >= set(SERIES)
    assert all(len(f) == 1 for f in folds.values()), folds
    # and the fold is what assign_fold says for the scaffold itself
    for scaffold, fold in folds.items():
        assert assign_fold(scaffold, key) == next(iter(fold))


def test_other_key_gives_other_folds_and_permutation(key: bytes, other_key: bytes) -> None:
    smiles = [f"c1ccc(cc1){'C' * i}c1ccncc1" for i in range(40)]
    folds_a = [assign_fold(s, key) for s in smiles]
    folds_b = [assign_fold(s, other_key) for s in smiles]
    assert folds_a != folds_b
    assert sorted(set(folds_a)) == [0, 1, 2, 3, 4]
    perm_a, perm_b = bit_permutation(key, 32768), bit_permutation(other_key, 32768)
    assert np.array_equal(np.sort(perm_a), np.arange(32768))
    assert (perm_a != perm_b).mean() > 0.99


def test_acyclic_and_single_ring_molecules_spread_over_folds(key: bytes) -> None:
    acyclic = ["C" * n for n in range(1, 16)] + [f"{'C' * n}O" for n in range(1, 16)]
    single = [f"c1ccccc1{'C' * n}" for n in range(1, 31)]
    assigner = FoldAssigner(key, FoldSettings())
    for group, kind in ((acyclic, "acyclic"), (single, "single_ring")):
        results = [assigner.fold_of(Chem.MolFromSmiles(s)) for s in group]
        assert {b for _, b in results} == {kind}
        assert len({f for f, _ in results}) >= 4  # not all in one fold
    # without the single-ring rule all benzenes share the benzene scaffold's fold
    plain = FoldAssigner(key, FoldSettings(split_single_ring=False))
    assert len({plain.fold_of(Chem.MolFromSmiles(s))[0] for s in single}) == 1


def test_permuted_features_are_a_column_permutation(key: bytes) -> None:
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"]
    plain = featurize_smiles(smiles, FeaturizeSettings(counts=True))
    permuted = featurize_smiles(smiles, FeaturizeSettings(counts=True), key=key)
    perm = bit_permutation(key, 32768)
    expected = np.zeros(plain.shape, dtype=np.float32)
    expected[:, perm] = plain.toarray()
    assert np.array_equal(permuted.toarray(), expected)
    assert permuted.dtype == np.float32 and permuted.has_sorted_indices
    binary = featurize_smiles(smiles, FeaturizeSettings(), key=key)
    assert set(np.unique(binary.data)) == {1.0}
    assert (binary.toarray() > 0).tolist() == (permuted.toarray() > 0).tolist()
    assert permuted.data.max() > 1  # counts


def test_descriptors_add_columns(key: bytes) -> None:
    X = featurize_smiles(["CCO", "c1ccccc1"], FeaturizeSettings(n_bits=1024, descriptors=True), key=key)
    assert X.shape == (2, 1024 + 12)
    assert np.all(np.isfinite(X.data)) and X[:, 1024:].nnz > 0


BASE = PrepareSettings()
VARIANTS = {
    "radius": replace(BASE, featurize=replace(BASE.featurize, radius=2)),
    "n_bits": replace(BASE, featurize=replace(BASE.featurize, n_bits=16384)),
    "counts": replace(BASE, featurize=replace(BASE.featurize, counts=True)),
    "chirality": replace(BASE, featurize=replace(BASE.featurize, use_chirality=True)),
    "descriptors": replace(BASE, featurize=replace(BASE.featurize, descriptors=True)),
    "n_folds": replace(BASE, folds=FoldSettings(n_folds=4)),
    "single_ring": replace(BASE, folds=FoldSettings(split_single_ring=False)),
    "standardize": replace(BASE, standardize=StandardizeSettings(enabled=False)),
    "stereo": replace(BASE, standardize=StandardizeSettings(stereo="keep")),
    "tautomers": replace(BASE, standardize=StandardizeSettings(canonical_tautomer=False)),
    "max_tautomers": replace(BASE, standardize=StandardizeSettings(max_tautomers=99)),
    "heavy_atoms": replace(BASE, standardize=StandardizeSettings(max_heavy_atoms=60)),
    "neutralize": replace(BASE, standardize=StandardizeSettings(neutralize=False)),
    "parent": replace(BASE, standardize=StandardizeSettings(parent_fragment=False)),
    "cleanup": replace(BASE, standardize=StandardizeSettings(cleanup=False)),
}


def test_reference_hash_changes_with_every_setting_and_the_key(key: bytes, other_key: bytes) -> None:
    base = reference_hash(BASE, key)
    assert base == reference_hash(PrepareSettings(), key)  # deterministic
    # input-format settings are site-specific and do not enter the hash
    assert base == reference_hash(replace(BASE, table=TableSpec(smiles_col="SMILES")), key)
    assert reference_hash(BASE, other_key) != base
    hashes = {name: reference_hash(s, key) for name, s in VARIANTS.items()}
    same = [name for name, h in hashes.items() if h == base]
    assert not same, f"reference hash unchanged by {same}"
    assert len(set(hashes.values())) == len(hashes)


@pytest.mark.parametrize("smiles", ["[Na+].[O-]C(=O)c1ccccc1", "OC(=O)c1ccccc1.Cl"])
def test_standardisation_takes_the_neutral_parent(smiles: str) -> None:
    from fedmol.datasets.standardize import standardize_smiles

    assert standardize_smiles(smiles) == "O=C(O)c1ccccc1"


@pytest.mark.parametrize("n_bits", [32768, 2048, 1000])
@pytest.mark.parametrize("counts", [False, True])
def test_features_match_rdkit_folded_fingerprints(n_bits: int, counts: bool) -> None:
    from rdkit.Chem import rdFingerprintGenerator

    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CCCCCCCCCCCCCCCC(=O)O",
              "Clc1ccc(cc1)C(c1ccccc1)N1CCN(CC1)CCOCC(=O)O"]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=n_bits)
    expected = np.zeros((len(smiles), n_bits), dtype=np.float32)
    for i, s in enumerate(smiles):
        for bit, count in gen.GetCountFingerprint(Chem.MolFromSmiles(s)).GetNonzeroElements().items():
            expected[i, bit] = count if counts else 1.0
    X = featurize_smiles(smiles, FeaturizeSettings(n_bits=n_bits, counts=counts))
    assert np.array_equal(X.toarray(), expected)
