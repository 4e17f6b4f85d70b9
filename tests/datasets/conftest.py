"""Shared fixtures for the datasets tests: keys, the reference data folder, small stores."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture
def key() -> bytes:
    return KEY_A


@pytest.fixture
def other_key() -> bytes:
    return KEY_B


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "consortium.key"
    path.write_text("# test key\n" + KEY_A.hex() + "\n")
    return path


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"reference data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def solubility_store(tmp_path_factory: pytest.TempPathFactory):
    """The embedded solubility set prepared without standardisation (fast), in memory."""
    from fedmol.datasets.embedded import solubility
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec
    from fedmol.datasets.standardize import StandardizeSettings

    df = solubility()
    df["soluble"] = (df["logS"] > -3).astype(float)
    settings = PrepareSettings(table=TableSpec(id_col="id", task_cols=("logS", "soluble")),
                               standardize=StandardizeSettings(enabled=False))
    return prepare_frame(df, KEY_A, None, settings, workers=1).store
