"""Every benchmark's ``--quick`` smoke run, so that a benchmark cannot rot unseen.

Each runs as a user runs it, ``python -m benchmarks.NAME --quick --out TMP`` from the repository
root, on a tiny slice of its public data set (../shared/data, as the benchmarks expect it), and
must exit 0 and write its result files (``*_quick.*``, never over benchmarks/results). Those
that start Flower, an HTTP service or an MLflow store are marked slow; they share one ``--work``
folder, so Tox21's quick slice is prepared once per featurisation (federation_gain and privacy_cost:
`fedmol prepare`'s default; scale: its own).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import DATA_DIR, ROOT

# name -> (result files it writes with --quick, extra arguments, slow)
BENCHMARKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "train_speed": (("train_speed_quick.json",), (), False),
    "featurize": (("featurize_quick.json",), (), False),
    "baselines": (("baselines_tox21_quick.json", "baselines_tox21_quick.md", "baselines_tox21_quick_details.json"),
                  (), False),
    "score": (("score_quick.json",), (), True),  # `fedmol score` children and a `fedmol serve`
    # two of its three sets (shared tasks, scaffold sites, ROC-AUC; private regression tasks, R²), in the
    # time the two-set run took before; SIDER's data facts: tests/benchmarks/test_federation_gain.py
    "federation_gain": (("federation_gain_quick.json", "federation_gain_quick.md", "federation_gain_quick.png"),
                        ("--work", "{work}", "--only", "tox21", "--only", "chembl_5thresh"), True),
    # on the chembl_5thresh sites federation_gain's quick run left in {work} (it runs that when they are not there)
    "seed_noise": (("seed_noise_quick.json", "seed_noise_quick.md"), ("--work", "{work}"), True),
    "privacy_cost": (("privacy_cost_quick.json", "privacy_cost_quick.md", "privacy_cost_quick.png"),
                     ("--work", "{work}"), True),
    "scale": (("scale_quick.json", "scale_quick.md"), ("--work", "{work}"), True),
    "rounds": (("rounds_quick.json", "rounds_quick.md"), (), True),
    "recipes": (("recipes_quick.json", "recipes_quick.md"), ("--work", "{work}"), False),
    "dp_recipe": (("dp_recipe_quick.json", "dp_recipe_quick.md"), ("--work", "{work}"), False),
    "train_defaults": (("train_defaults_quick.json", "train_defaults_quick.md"), ("--work", "{work}/train"), False),
}
LIBRARY = {"__init__", "common", "sets", "gain_report"}  # imported by the benchmarks, not run
ELSEWHERE = {"gpu": "needs a CUDA device (it refuses to run without one)"}


def _runnable() -> set[str]:
    """Modules of benchmarks/ with a ``__main__`` block."""
    names = set()
    for path in (ROOT / "benchmarks").glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body):
            names.add(path.stem)
    return names


def test_every_benchmark_has_a_quick_run_here() -> None:
    missing = _runnable() - set(BENCHMARKS) - set(ELSEWHERE) - LIBRARY
    assert not missing, f"benchmarks without a --quick test in tests/benchmarks/test_quick.py: {sorted(missing)}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-work")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if BENCHMARKS[n][2] else [])
                                  for n in BENCHMARKS])
def test_quick_run(name: str, tmp_path: Path, work: Path) -> None:
    if not DATA_DIR.is_dir():
        pytest.skip(f"the benchmarks' public data sets are not at {DATA_DIR} (set $FEDMOL_BENCH_DATA)")
    files, extra, _ = BENCHMARKS[name]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out),
           *(a.format(work=work) for a in extra)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    for file in files:
        assert file in written, f"{name} --quick wrote {written}, not {file}"
        if file.endswith(".json"):
            assert json.loads((out / file).read_text()), f"{file} is empty"
