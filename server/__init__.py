"""The coordination server, and nothing else: the Flower ServerApp and what it runs each round.

Modules (import them directly; nothing is imported here):

- `fedmol.server.server_app`: the Flower ServerApp (reads the run config, runs the federation)
- `fedmol.server.federation`: one federation from start (or resume) to the registered model
- `fedmol.server.strategies`: Flower's strategies selected by one run-config key (FedAvg, FedProx,
  FedAdam/FedYogi, FedMedian, trimmed mean; central DP)
- `fedmol.server.rounds`: `HookedStrategy`, per-round behaviour written once (update validation, hooks)
- `fedmol.server.secagg`: SecAgg+ rounds (the server learns only the weighted sum of the updates)
- `fedmol.server.grid`: a Grid that waits for replies with a short poll
- `fedmol.server.tracking`: round hooks for MLflow tracking and checkpoints
- `fedmol.server.checkpoint`: checkpoints after every round, and resume
- `fedmol.server.registry`: the shared model as a folder, an MLflow pyfunc and a registry version

Scoring lives in `fedmol.scoring`, credentials, the launcher and the demo in `fedmol.deploy`.
"""
