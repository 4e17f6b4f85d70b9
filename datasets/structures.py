"""The per-molecule hot path, run in worker processes over chunks of SMILES strings.

SMILES → standardised molecule → canonical SMILES (identity for duplicates), permuted sparse
fingerprint row, scaffold fold. Workers receive SMILES strings and return compact numpy arrays;
they get the bit permutation and the derived fold sub-key, never the consortium key itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from rdkit import Chem

from fedmol.datasets.featurize import Featurizer, FeaturizeSettings, SparseRows, bit_permutation
from fedmol.datasets.folds import FoldAssigner, FoldSettings
from fedmol.datasets.keys import derive
from fedmol.datasets.standardize import MoleculeReject, Standardizer, StandardizeSettings

__all__ = ["BASIS_CODES", "StructureBlock", "StructureSettings", "process_structures"]

BASIS_CODES = {"scaffold": 0, "acyclic": 1, "single_ring": 2}
_IN_PROCESS_BELOW = 400  # structures; a process pool costs more than it saves below this


@dataclass(frozen=True)
class StructureSettings:
    """The per-molecule settings: everything that decides features and folds."""

    standardize: StandardizeSettings = StandardizeSettings()
    featurize: FeaturizeSettings = FeaturizeSettings()
    folds: FoldSettings = FoldSettings()


@dataclass
class StructureBlock:
    """Results for n input SMILES, in input order.

    reasons (n,) object: "" if the structure made it, else the reject reason;
    canonical (n,) object: canonical SMILES of the standardised structure ("" for rejects);
    folds (n,) int16 (-1 for rejects); basis (n,) int8 (BASIS_CODES; -1 for rejects);
    X: CSR (n_ok, n_features) float32, one row per accepted structure in input order.
    """

    reasons: np.ndarray
    canonical: np.ndarray
    folds: np.ndarray
    basis: np.ndarray
    X: sp.csr_matrix

    @property
    def ok(self) -> np.ndarray:
        return self.reasons == ""


# One chunk's result: reject reasons, canonical SMILES, folds, basis codes, feature rows.
ChunkResult = tuple[list[str], list[str], np.ndarray, np.ndarray, SparseRows]


class _Worker:
    def __init__(self, settings: StructureSettings, permutation: np.ndarray, fold_subkey: bytes) -> None:
        self.settings = settings
        self.standardizer = Standardizer(settings.standardize)
        self.featurizer = Featurizer(settings.featurize, permutation)
        self.folds = FoldAssigner(b"", settings.folds, subkey=fold_subkey)

    def run(self, smiles: Sequence[str]) -> ChunkResult:
        n = len(smiles)
        reasons = [""] * n
        canonical = [""] * n
        folds = np.full(n, -1, dtype=np.int16)
        basis = np.full(n, -1, dtype=np.int8)
        std, feat, fold_of = self.standardizer, self.featurizer, self.folds.fold_of
        to_smiles = Chem.MolToSmiles
        # With stereo dropped, the canonical SMILES is the stereo-free identity folds hash
        # (isotopes stay in it), which saves a second canonicalisation per molecule.
        reuse = self.settings.standardize.stereo == "drop"
        for i, smi in enumerate(smiles):
            try:
                mol = std.from_smiles(smi)
                canonical[i] = can = to_smiles(mol)
                fold, kind = fold_of(mol, can if reuse else None)
                feat.add(mol)
            except MoleculeReject as exc:
                reasons[i] = exc.reason
                continue
            folds[i] = fold
            basis[i] = BASIS_CODES[kind]
        return reasons, canonical, folds, basis, feat.finish()


_WORKER: _Worker | None = None


def _init_worker(settings: StructureSettings, permutation: np.ndarray, fold_subkey: bytes) -> None:
    global _WORKER
    _WORKER = _Worker(settings, permutation, fold_subkey)


def _run_chunk(smiles: list[str]) -> ChunkResult:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(smiles)


def process_structures(smiles: Sequence[str], settings: StructureSettings, key: bytes, *,
                       workers: int | None = None, chunk_size: int | None = None,
                       on_chunk: Callable[[int, int], None] | None = None) -> StructureBlock:
    """Standardise, featurise and fold n SMILES, over a process pool of ``workers`` (default: all
    cores; 1 = in this process). ``on_chunk(done_structures, total)`` is called after each chunk.
    """
    n = len(smiles)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    perm = bit_permutation(bytes(key), settings.featurize.n_bits)
    fold_subkey = derive(key, "folds")
    if chunk_size is None:
        chunk_size = int(min(2000, max(100, n // (workers * 8) or 1)))
    chunks = [list(smiles[i:i + chunk_size]) for i in range(0, n, chunk_size)] or [[]]
    results: list = [None] * len(chunks)
    done = 0
    if workers == 1 or n < _IN_PROCESS_BELOW:
        worker = _Worker(settings, perm, fold_subkey)
        for c, chunk in enumerate(chunks):
            results[c] = worker.run(chunk)
            done += len(chunk)
            if on_chunk:
                on_chunk(done, n)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), initializer=_init_worker,
                                 initargs=(settings, perm, fold_subkey)) as pool:
            futures = {pool.submit(_run_chunk, chunk): c for c, chunk in enumerate(chunks)}
            for fut in as_completed(futures):
                c = futures[fut]
                results[c] = fut.result()
                done += len(chunks[c])
                if on_chunk:
                    on_chunk(done, n)
    reasons = np.array([r for res in results for r in res[0]], dtype=object)
    canonical = np.array([s for res in results for s in res[1]], dtype=object)
    folds = np.concatenate([res[2] for res in results])
    basis = np.concatenate([res[3] for res in results])
    X = _stack([res[4] for res in results], settings.featurize.n_features)
    return StructureBlock(reasons.reshape(-1), canonical.reshape(-1), folds, basis, X)


def _stack(blocks: list[SparseRows], n_features: int) -> sp.csr_matrix:
    mats = [b.to_csr(n_features) for b in blocks]
    if len(mats) == 1:
        return mats[0]
    return sp.vstack(mats, format="csr").astype(np.float32)
