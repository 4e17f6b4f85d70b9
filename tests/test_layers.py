"""Layering and types, checked on a staging copy of the sources laid out as installed.

Why a copy: pyproject.toml ships the repository's top-level folders under the one import name
``fedmol`` (``[tool.setuptools.package-dir]``: ``fedmol.datasets = datasets/``, ...). The editable
install serves that mapping through an import hook, but grimp (import-linter's graph builder) and
mypy find a package's subpackages by walking the folder of ``fedmol`` on disk, where ``datasets/``
and the others are not, so they would silently check the core alone.

How: `stage` copies every mapped folder's ``*.py`` files into ``<tmp>/fedmol/...`` exactly as a
wheel installs them, reading the package-dir table from pyproject.toml, so a new area cannot be
left out. The copies are real files (grimp does not follow symlinked folders). Each tool then runs
in a subprocess whose working directory is the staging folder and whose ``PYTHONPATH`` starts
with it: ``sys.path`` is searched before the editable hook (setuptools appends its finder to
``sys.meta_path``), so ``import fedmol`` finds the staged copy. The contracts themselves are in
pyproject.toml (``[tool.importlinter]``), the type-check settings in ``[tool.mypy]``.

By hand: ``.venv/bin/python -m tests.test_layers`` stages into a temporary folder and runs
``lint-imports`` and ``mypy`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
BIN = Path(sys.executable).parent


def package_dirs() -> dict[str, Path]:
    """Import name -> source folder, from pyproject's ``[tool.setuptools.package-dir]``."""
    table = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in table.items()}


def stage(dest: Path) -> Path:
    """Copy the sources into ``dest`` as installed (``dest/fedmol/datasets/...``); returns ``dest``.

    Each package's own folder is copied without the folders of other mapped packages, so a mapped
    folder that happened to sit inside another would not be staged twice.
    """
    dirs = package_dirs()
    sources = set(dirs.values())
    for name, src in sorted(dirs.items()):
        target = dest.joinpath(*name.split("."))

        def ignore(folder: str, names: list[str], src: Path = src) -> set[str]:
            here = Path(folder)
            return {n for n in names
                    if n == "__pycache__" or (here / n).is_symlink()
                    or ((here / n).is_dir() and here / n in sources and here / n != src)
                    or ((here / n).is_file() and not n.endswith(".py"))}

        shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
    return dest


def run_tool(args: list[str], staging: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a tool with the staged copy first on sys.path and as the working directory."""
    env = {**os.environ, "PYTHONPATH": str(staging), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(args, cwd=staging, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage(tmp_path_factory.mktemp("staging"))


def test_staging_copy_holds_every_package_as_installed(staging: Path) -> None:
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]
    assert sorted(packages) == sorted(package_dirs())
    for name in packages:
        assert (staging.joinpath(*name.split(".")) / "__init__.py").is_file(), name
    # The tools see the staged copy, not the repository's fedmol/ folder through the editable hook.
    out = run_tool([sys.executable, "-c", "import fedmol.datasets.store as m; print(m.__file__)"], staging)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(staging)


def test_import_contracts(staging: Path) -> None:
    """The layers of pyproject's [tool.importlinter] hold (no area imports one above it or a sibling)."""
    out = run_tool([str(BIN / "lint-imports"), "--no-cache", str(PYPROJECT)], staging)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def import_graph(staging: Path) -> dict[str, list[str]]:
    """Module -> modules of fedmol it imports (function-local and TYPE_CHECKING imports included)."""
    code = ("import grimp, json; g = grimp.build_graph('fedmol'); "
            "print(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}))")
    out = run_tool([sys.executable, "-c", code], staging)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path = [root]
        stack = [iter(graph[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph.get(nxt, [])))
    return None


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]


def test_no_import_cycles(staging: Path) -> None:
    """Modules inside one package may import each other, without cycles (none across packages either)."""
    graph = import_graph(staging)
    assert {"fedmol.datasets.store", "fedmol.models.training", "fedmol.scoring.scorer"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_types(staging: Path) -> None:
    """mypy over every package, with pyproject's [tool.mypy] settings."""
    cache = ROOT / ".mypy_cache"  # third-party stubs and modules are cached across runs
    out = run_tool([sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(cache),
                    "-p", "fedmol"], staging)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        where = stage(Path(tmp))
        lint = run_tool([str(BIN / "lint-imports"), "--no-cache", str(PYPROJECT)], where)
        print(lint.stdout, lint.stderr)
        types = run_tool([sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT), "--cache-dir",
                          str(ROOT / ".mypy_cache"), "-p", "fedmol"], where)
        print(types.stdout, types.stderr)
        sys.exit(lint.returncode or types.returncode)
