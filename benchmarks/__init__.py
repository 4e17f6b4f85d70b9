"""fedmol's benchmarks: run each as a module from the repository root.

    .venv/bin/python -m benchmarks.NAME [--quick] [--out DIR]

Benchmarks (results in benchmarks/results/, ``*_quick.*`` for a ``--quick`` smoke run):

* `featurize`: featurisation speed against raw RDKit, one and two processes.
* `train_speed`: the sparse input layer against a dense ``nn.Linear``, samples per second.
* `baselines`: local-only and pooled models on a public set split into scaffold sites.
* `federation_gain`: local-only vs federated vs pooled with the defaults, on Tox21, chembl_5thresh and SIDER.
* `privacy_cost`: what float16 transport, SecAgg+ and central DP cost on Tox21.
* `scale`: time per round and memory of the simulated federation with many sites.
* `rounds`: the deployment engine's round overhead and bytes per site per round.
* `score`: `fedmol score` and `fedmol serve` throughput against raw RDKit.

Shared, not run: `common` (paths, logging, a simulated federation), `sets` (the public benchmark
key, the sets, their preparation and site splits), `gain_report` (federation_gain's result files).
tests/benchmarks/test_quick.py runs every ``--quick``.
"""
