"""The Flower ServerApp: read the run config and run the federation (`fedmol.server.federation`)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedmol.server.federation import run_federation
    from fedmol.server.grid import FastPollGrid

    logging.getLogger("fedmol").setLevel(logging.INFO)
    run_federation(FastPollGrid(grid), context)
