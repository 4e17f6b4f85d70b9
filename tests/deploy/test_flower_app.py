"""The Flower app: the FAB carries configuration only, and the installed app agrees with the repository's."""

import tomllib
import zipfile
from pathlib import Path

from fedmol.deploy.launcher import COMPONENTS, write_flower_app

ROOT = Path(__file__).resolve().parents[2]


def _flwr_app(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]


def test_the_written_app_is_the_repository_app(tmp_path):
    written = _flwr_app(write_flower_app(tmp_path / "app") / "pyproject.toml")
    repo = _flwr_app(ROOT / "pyproject.toml")
    assert written == repo
    assert repo["components"] == COMPONENTS


def test_the_fab_carries_no_code(tmp_path):
    """Were fedmol's code in the FAB, Flower would put it first on sys.path and hide the installed package."""
    from flwr.cli.build import build_fab_from_disk

    for app in (ROOT, write_flower_app(tmp_path / "app")):
        (tmp_path / "app.fab").write_bytes(build_fab_from_disk(app))
        with zipfile.ZipFile(tmp_path / "app.fab") as fab:
            names = [n for n in fab.namelist() if not n.startswith(".info/")]
        assert names == ["pyproject.toml"], names
