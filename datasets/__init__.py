"""The site data pipeline: input files → standardised, featurised, folded site stores.

Modules (import them directly as ``fedmol.datasets.NAME``; nothing is imported here):

- `fedmol.datasets.keys`: the consortium key (generate, load, fingerprint)
- `fedmol.datasets.readers`: CSV/TSV/SDF/.smi input, streamed: the one reader of `prepare` and `score`
- `fedmol.datasets.labels`: qualifiers and thresholds
- `fedmol.datasets.standardize`: `Standardizer`, `parse_smiles`, `MoleculeReject`
- `fedmol.datasets.featurize`: `Featurizer`, the key-derived bit permutation
- `fedmol.datasets.folds`: scaffold folds
- `fedmol.datasets.tasks`: the task catalogue (`TaskInfo`) and quorums
- `fedmol.datasets.options`: the closed choices of preparation as types (`Layout`, `StereoMode`)
- `fedmol.datasets.structures`: the per-molecule hot path over a process pool
- `fedmol.datasets.prepare`: one file → one store (``fedmol prepare``)
- `fedmol.datasets.reference`: the consortium's reference hash
- `fedmol.datasets.store`: `SiteStore`, the store format (loading needs no RDKit)
- `fedmol.datasets.partition`: simulated sites
- `fedmol.datasets.embedded`: demo data that ships with the package
- `fedmol.datasets.cli`: ``fedmol keygen``, ``fedmol prepare``

So ``from fedmol.datasets.store import SiteStore`` stays free of RDKit.
"""
