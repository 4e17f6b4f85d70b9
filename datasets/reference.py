"""The reference hash: proof that two sites prepare structures identically.

A fixed set of 64 diverse SMILES (drugs, acyclic molecules, charged species, salts, stereo,
tautomers, a macrocycle, an inorganic, an unparsable and an over-sized entry) is standardised,
featurised and folded with the site's settings and key. The sha256 over the permuted features,
the folds, the reject reasons and the canonical settings changes with any structure setting or
the key, and is identical at every site that uses the same ones. Input-format settings (column
names, thresholds, quorums) are site-specific and do not enter the hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

__all__ = ["REFERENCE_SMILES", "reference_hash"]

REFERENCE_SMILES: tuple[str, ...] = (
    # drugs and drug-like
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O",  # (S)-ibuprofen
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",  # caffeine
    "CC(=O)Nc1ccc(O)cc1",  # paracetamol
    "CN1CCC[C@H]1c1cccnc1",  # nicotine
    "O=C(O)c1ccccc1O",  # salicylic acid
    "CC(C)NCC(O)COc1cccc2ccccc12",  # propranolol
    "Clc1ccc(cc1)C(c1ccccc1)N1CCN(CC1)CCOCC(=O)O",  # cetirizine
    "COc1ccc2[nH]cc(CCN(C)C)c2c1",  # 5-MeO-DMT
    "CC1(C)S[C@@H]2[C@H](NC(=O)Cc3ccccc3)C(=O)N2[C@H]1C(=O)O",  # penicillin G
    "C[C@]12CC[C@H]3[C@@H](CCc4cc(O)ccc34)[C@@H]1CC[C@@H]2O",  # estradiol
    "O=C1CN=C(c2ccccc2)c2cc(Cl)ccc2N1",  # nordazepam
    "Fc1ccc(cc1)C(=O)CCCN1CCC(O)(CC1)c1ccc(Cl)cc1",  # haloperidol
    "CS(=O)(=O)Nc1ccc(cc1)[N+](=O)[O-]",  # nitro group, charge-separated
    "c1ccc2c(c1)ccc1ccccc12",  # phenanthrene
    "c1ccc(cc1)-c1ccccn1",  # 2-phenylpyridine
    "O=C(Nc1ccccc1)c1ccccc1",  # benzanilide
    "N#Cc1ccc(cc1)C(=O)N1CCOCC1",
    "Cc1nnc2n1-c1ccc(Cl)cc1C(=N2)c1ccccc1",  # alprazolam-like
    "COC(=O)[C@H]1[C@@H](OC(=O)c2ccccc2)C[C@@H]2CC[C@H]1N2C",  # cocaine
    # simple rings (single-ring fold rule)
    "c1ccccc1", "Cc1ccccc1", "Oc1ccccc1", "C1CCCCC1", "c1ccncc1", "C1CCOC1", "O=C1CCCCC1",
    # acyclic
    "CCO", "CCCCCCCCCCCCCCCC(=O)O", "NCCCC[C@H](N)C(=O)O", "CC(C)=O", "OCC(O)CO", "CCN(CC)CC",
    "C=CC(=O)OC", "ClC(Cl)Cl", "CC#N",
    # charged, zwitterions, salts, solvents
    "C[N+](C)(C)CCOC(C)=O",  # acetylcholine cation
    "[O-]C(=O)c1ccccc1.[Na+]",  # sodium benzoate
    "Cl.CN(C)CCCN1c2ccccc2CCc2ccccc21",  # imipramine hydrochloride
    "NCC(=O)O", "[NH3+]CC([O-])=O",  # glycine, neutral and zwitterion
    "OC(=O)C(O)=O.c1ccc2[nH]ccc2c1",  # indole oxalate
    "CCCC[N+](CCCC)(CCCC)CCCC.[Br-]",
    "O.O.Cc1ccc(cc1)S(=O)(=O)O",
    # stereo
    "C/C=C/C(=O)O", "C/C=C\\C(=O)O", "C[C@H](O)CC", "C[C@@H](O)CC", "O[C@H]1CCCC[C@@H]1O",
    # tautomers
    "Oc1ccccn1", "O=c1cccc[nH]1", "CC(=O)CC(C)=O", "CC(O)=CC(C)=O", "Oc1nc(O)c2[nH]cnc2n1",
    "N=C(N)c1ccccc1", "CC1=NNC(=O)C1",
    # bigger, macrocycle, isotopes, inorganic, metal
    "CC[C@H](C)[C@H](NC(=O)[C@@H](N)Cc1ccc(O)cc1)C(=O)N[C@@H](Cc1c[nH]c2ccccc12)C(=O)O",
    "C1CCCCCCCCCCCCCCCCCC1",
    "[2H]C([2H])([2H])Oc1ccccc1",
    "O=S(=O)(O)O",
    "[Cu+2].[O-]C(=O)C.[O-]C(=O)C",
    "c1ccc2c(c1)[nH]c1ccccc12",  # carbazole
    # rejects: unparsable, empty, too large
    "C1CC(",
    "",
    "C" * 120,
)


def reference_hash(settings: Any, key: bytes) -> str:
    """sha256 hex over the reference set prepared with ``settings`` (a PrepareSettings or anything
    with ``standardize``, ``featurize`` and ``folds``) and ``key``."""
    from fedmol.datasets.structures import StructureSettings, process_structures

    structure = StructureSettings(settings.standardize, settings.featurize, settings.folds)
    block = process_structures(list(REFERENCE_SMILES), structure, key, workers=1)
    h = hashlib.sha256()
    canonical = {"standardize": structure.standardize.to_dict(), "featurize": structure.featurize.to_dict(),
                 "folds": structure.folds.to_dict()}
    h.update(json.dumps(canonical, sort_keys=True).encode())
    X = block.X.tocsr()
    X.sort_indices()
    for arr in (X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data.astype(np.float32),
                block.folds.astype(np.int16)):
        h.update(arr.tobytes())
    h.update("\n".join(block.reasons.tolist()).encode())
    return h.hexdigest()
