"""The wheel, and fedmol installed from it outside the repository.

pyproject.toml ships the repository's top-level folders under the one import name ``fedmol``
(``[tool.setuptools.package-dir]``), so installing fedmol must never put a generic ``datasets``,
``models``, ``server`` or ``client`` into site-packages, where one would overwrite another library of that
name (Hugging Face ``datasets``).

The wheel is built once per module, from a copy of the working tree (so no test writes ``build/`` or
``*.egg-info`` into the shared checkout), offline, with the setuptools of this environment. It is
installed with ``pip install --no-deps --target T`` into a folder that already holds a stand-in package
named ``datasets``. The checks that use it run from a working directory outside the repository with
``PYTHONPATH=T``. From the repository root, ``import datasets`` would still find the ``datasets/`` folder,
so a stale ``import datasets`` passes there. Here it does not. ``PYTHONPATH`` entries come before
site-packages, and setuptools appends the editable install's import hook to ``sys.meta_path``
after the path finder, so ``import fedmol`` finds T's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STAND_IN = 'MARKER = "stand-in datasets, not fedmol"\n'
# Not part of the source: local outputs and caches that the copy for the build leaves out.
_ROOT_SKIP = {".git", ".venv", "build", "dist", "runs", "mlruns", "mlflow.db", "fedmol-demo", "fedmol-server",
              ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _skip_in_copy(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder).resolve() == ROOT:
        skip |= _ROOT_SKIP & set(names)
    return skip


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("source") / "fedmol"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_skip_in_copy)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300, env=_clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = sorted(out.glob("fedmol-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """T: a stand-in ``datasets`` package first, then fedmol installed next to it from the wheel."""
    target = tmp_path_factory.mktemp("site-packages")
    (target / "datasets").mkdir()
    (target / "datasets" / "__init__.py").write_text(STAND_IN)
    proc = subprocess.run([PY, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300, env=_clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return target


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A working directory outside the repository (the temporary folder must not lie inside it)."""
    assert ROOT not in tmp_path.resolve().parents
    return tmp_path


def _wheel_files(wheel: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(wheel) as zf:
        return {info.filename: info for info in zf.infolist() if not info.is_dir()}


def test_the_wheel_has_one_top_level_import_name(wheel: Path) -> None:
    files = _wheel_files(wheel)
    dist_info = [n for n in files if n.split("/")[0].endswith(".dist-info")]
    top = {n.split("/")[0].removesuffix(".py") for n in files if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"fedmol"}, sorted(top)
    with zipfile.ZipFile(wheel) as zf:
        top_level = [n for n in dist_info if n.endswith("/top_level.txt")]
        if top_level:  # setuptools writes it; the file list above is what counts
            assert zf.read(top_level[0]).decode().split() == ["fedmol"]
    # no .data/purelib or .data/platlib folder could smuggle in another top-level package either
    assert not [n for n in files if n.split("/")[0].endswith(".data")]


def test_the_wheel_carries_every_module_and_its_package_data_as_real_files(wheel: Path) -> None:
    files = _wheel_files(wheel)
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    dirs = {name: ROOT / folder for name, folder in setuptools_cfg["package-dir"].items()}
    expected: dict[str, Path] = {}
    for name, folder in dirs.items():
        prefix = name.replace(".", "/")
        # every module of every mapped folder, subfolders included: a subpackage left out of `packages`
        # would be missing from the wheel while the editable install still finds it
        for path in folder.rglob("*.py"):
            if "__pycache__" not in path.parts and not any(p.startswith(".") for p in path.relative_to(ROOT).parts):
                expected[f"{prefix}/{path.relative_to(folder).as_posix()}"] = path
        for pattern in setuptools_cfg.get("package-data", {}).get(name, []):
            for path in folder.glob(pattern):
                if path.is_file():
                    expected[f"{prefix}/{path.relative_to(folder).as_posix()}"] = path
    missing = sorted(set(expected) - set(files))
    assert not missing, f"in the source but not in the wheel: {missing}"
    with zipfile.ZipFile(wheel) as zf:
        for arcname, source in expected.items():
            mode = files[arcname].external_attr >> 16
            assert not stat.S_ISLNK(mode), f"{arcname} is a link in the wheel"
            # a symlink in the repository is shipped as the file it points to
            assert zf.read(arcname) == source.resolve().read_bytes(), arcname
    # what the product cannot run without, named (a glob that silently matched nothing would pass above)
    must = ["fedmol/datasets/data/README.md", "fedmol/datasets/data/freesolv.csv.gz",
            "fedmol/datasets/data/solubility.train.sdf.gz", "fedmol/datasets/data/solubility.test.sdf.gz",
            "fedmol/scoring/web/index.html", "fedmol/scoring/pyfunc_entry.py",
            "fedmol/server/server_app.py", "fedmol/client/client_app.py"]
    assert not [m for m in must if m not in files], sorted(files)
    web = {p.name for p in (ROOT / "scoring" / "web").iterdir() if p.is_file()}
    assert {n.rsplit("/", 1)[1] for n in files if n.startswith("fedmol/scoring/web/")} == web


def test_installed_next_to_a_package_named_datasets_both_resolve(installed: Path, outside: Path) -> None:
    assert (installed / "datasets" / "__init__.py").read_text() == STAND_IN  # the install left it alone
    assert [p.name for p in (installed / "datasets").iterdir()] == ["__init__.py"]
    probe = (
        "import json, datasets, fedmol, fedmol.datasets.store\n"
        "from fedmol.datasets.embedded import freesolv\n"
        "print(json.dumps({'datasets': datasets.__file__, 'marker': getattr(datasets, 'MARKER', None),\n"
        "                  'fedmol': fedmol.__file__, 'store': fedmol.datasets.store.__file__,\n"
        "                  'freesolv_rows': len(freesolv())}))\n"
    )
    proc = subprocess.run([PY, "-c", probe], cwd=outside, capture_output=True, text=True, timeout=120,
                          env=_clean_env(PYTHONPATH=str(installed)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["marker"] == STAND_IN.split('"')[1]
    assert Path(seen["datasets"]) == installed / "datasets" / "__init__.py"
    for key in ("fedmol", "store"):
        assert installed in Path(seen[key]).parents, (key, seen[key])
    assert seen["freesolv_rows"] == 642  # the package data reads from the installed copy


# Records, in every Python process that has it on PYTHONPATH, where the federation's components are
# imported from. It asks the other finders in order, exactly as the import system would.
_IMPORT_RECORDER = '''
import json, os, sys

_LOG = os.environ.get("FEDMOL_TEST_IMPORT_LOG")
_WATCH = {"fedmol", "fedmol.server.server_app", "fedmol.client.client_app"}


class _Recorder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in _WATCH:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is cls or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                with open(_LOG, "a") as fh:
                    fh.write(json.dumps({"pid": os.getpid(), "module": name, "origin": spec.origin}) + "\\n")
                return spec
        return None


if _LOG:
    sys.meta_path.insert(0, _Recorder)
'''


@pytest.mark.slow
def test_a_federation_runs_from_the_installed_copy(installed: Path, outside: Path) -> None:
    from tests.server.synthetic import write_sites

    write_sites(outside / "stores", 2, n=120, n_bits=256)
    hook = outside / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_IMPORT_RECORDER)
    log = outside / "imports.jsonl"
    # Flower's processes (SuperLink, simulation, Ray workers) inherit this environment (launcher.flower_env).
    env = _clean_env(PYTHONPATH=os.pathsep.join([str(installed), str(hook)]), FEDMOL_TEST_IMPORT_LOG=str(log))
    out = outside / "server"
    cmd = [PY, "-m", "fedmol.cli", "simulate", "stores", "--out", str(out),
           "--set", "num-server-rounds=1", "--set", "n-bits=256", "--set", "hidden=16", "--set", "num-threads=1",
           "--set", "consortium-tasks=c1:classification,c2:classification", "--set", "model-name=fedmol-packaging"]
    proc = subprocess.run(cmd, cwd=outside, capture_output=True, text=True, timeout=540, env=env)
    (outside / "simulate.log").write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    # flwr's exit code alone does not show that the run succeeded (0 after a crashed simulation runtime,
    # flwr 1.41): the ServerApp's outputs do
    assert (out / "last_federation.json").is_file(), tail
    outputs = json.loads((out / "last_federation.json").read_text())
    assert outputs["model_uri"] == "models:/fedmol-packaging/1", outputs
    records = [json.loads(line) for line in log.read_text().splitlines()]
    origins: dict[str, set[Path]] = {}
    for r in records:
        origins.setdefault(r["module"], set()).add(Path(r["origin"]))
    assert {"fedmol.server.server_app", "fedmol.client.client_app"} <= set(origins), (records, tail)
    outside_t = {m: sorted(map(str, o)) for m, o in origins.items() if any(installed not in p.parents for p in o)}
    assert not outside_t, f"imported from outside the installed copy: {outside_t}"
    # the ClientApps ran in Ray's worker processes (no ServerApp there), and those found the installed copy too
    server_pids = {r["pid"] for r in records if r["module"] == "fedmol.server.server_app"}
    assert {r["pid"] for r in records if r["module"] == "fedmol.client.client_app"} - server_pids, records
