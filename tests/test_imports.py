"""Flower puts the app root first on sys.path: our top-level `datasets` must not break mlflow or flwr."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mlflow_and_flwr_import_with_the_app_root_first():
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "import datasets.store, mlflow, mlflow.pyfunc, flwr.serverapp, flwr.clientapp; "
        "import server.server_app, client.client_app; "
        "assert datasets.store.__file__.startswith(" + repr(str(ROOT)) + "); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
