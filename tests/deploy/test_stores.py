"""`fedmol simulate` and `fedmol consortium run` take the model's input size from the stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmol.config import FederationConfig
from fedmol.datasets.store import SiteStore, store_n_features
from fedmol.deploy.stores import n_bits_of, with_store_n_bits
from fedmol.errors import InputError, StoreError
from tests.server.synthetic import write_sites


def test_the_feature_count_is_read_from_the_saved_matrix_alone(tmp_path: Path) -> None:
    (path,) = write_sites(tmp_path, 1, n=40, n_bits=384)
    assert store_n_features(path) == SiteStore.load(path).n_features == 384
    (path / "features.npz").write_bytes(b"not a matrix")
    with pytest.raises(StoreError, match="cannot read the features"):
        store_n_features(path)


def test_n_bits_comes_from_the_stores_unless_set(tmp_path: Path) -> None:
    paths = write_sites(tmp_path, 2, n=40, n_bits=256)
    cfg = FederationConfig().with_overrides(with_store_n_bits(["num-server-rounds=3"], paths))
    assert (cfg.n_bits, cfg.num_server_rounds) == (256, 3)
    # an explicit --set wins (the sites then refuse a model that does not fit their store)
    assert with_store_n_bits(["n-bits=1024"], paths) == ["n-bits=1024"]


def test_stores_of_different_sizes_are_named(tmp_path: Path) -> None:
    a = write_sites(tmp_path / "a", 1, n=40, n_bits=256)
    b = write_sites(tmp_path / "b", 1, n=40, n_bits=512)
    with pytest.raises(InputError, match=r"different fingerprint sizes \(site-0: 256, site-0: 512\)"):
        n_bits_of([*a, *b])
