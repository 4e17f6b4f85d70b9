"""The site data pipeline: input files → standardised, featurised, folded site stores.

Modules: ``keys`` (consortium key), ``readers`` (CSV/TSV/SDF/.smi), ``labels`` (qualifiers,
thresholds), ``standardize``, ``featurize``, ``folds``, ``tasks`` (catalogue and quorums),
``structures`` (the per-molecule hot path over a process pool), ``prepare`` (one file → one
store), ``reference`` (reference hash), ``store`` (the store format; loading needs no RDKit),
``partition`` (simulated sites), ``embedded`` (demo data), ``cli``.

Nothing is imported here, so ``from fedmol.datasets.store import SiteStore`` stays free of RDKit.
"""
