import numpy as np
import pytest
import torch

from fedmol.config import FederationConfig
from fedmol.errors import StoreError
from fedmol.models.site_model import (
    PRIVATE_HEADS,
    federation_dir,
    save_private_heads,
    site_model,
    site_name,
    site_spec,
    split_rows,
)
from tests.server.synthetic import synthetic_store

CFG = FederationConfig(n_bits=128, hidden="8", consortium_tasks="c1:classification", seed=3)


@pytest.fixture
def store():
    return synthetic_store(60, 128, [("c1", "classification"), ("p", "regression")], seed=0, site_name="acme")


def test_spec_has_the_consortium_heads_and_the_sites_private_ones(store):
    spec = site_spec(store, CFG, "acme")
    assert [(h.name, h.tasks, h.shared) for h in spec.heads] == [
        ("consortium_classification", ("c1",), True), ("private_regression", ("p",), False)]
    with pytest.raises(StoreError, match="site acme: the store has 128-bit features.*n-bits=256"):
        site_spec(store, CFG.replace(n_bits=256), "acme")


def test_private_heads_are_fresh_then_read_back_from_the_store(store, tmp_path):
    shared = {k: v.numpy() for k, v in _shared(store).items()}
    model, fresh = site_model(store, tmp_path, CFG, shared, "f/1", site="acme")
    assert fresh
    with torch.no_grad():
        model.heads["private_regression"].linear.weight.add_(1.0)
    saved = save_private_heads(model, tmp_path, "f/1")
    assert (federation_dir(tmp_path, "f/1") / PRIVATE_HEADS).is_file()
    assert federation_dir(tmp_path, "f/1") == tmp_path / "federations" / "f_1"
    again, fresh = site_model(store, tmp_path, CFG, shared, "f/1", site="acme")
    assert not fresh
    assert all(torch.equal(again.private_state_dict()[k], v) for k, v in saved.items())
    # Built without drawing initial values: every parameter and buffer is the one loaded.
    assert set(again.state_dict()) == set(shared) | set(saved)
    assert all(torch.equal(again.state_dict()[k], torch.as_tensor(v)) for k, v in shared.items())


def test_new_private_heads_are_drawn_from_the_seed(store, tmp_path):
    from fedmol.models.network import MultiTaskNet

    shared = {k: v.numpy() for k, v in _shared(store).items()}
    model, fresh = site_model(store, tmp_path, CFG, shared, "f/2", site="acme")
    seeded = MultiTaskNet(site_spec(store, CFG, "acme"), seed=CFG.seed)
    assert fresh and all(torch.equal(model.private_state_dict()[k], v) for k, v in seeded.private_state_dict().items())


def test_rows_and_name(store, tmp_path):
    rows = {s: split_rows(store, CFG, s) for s in ("train", "valid", "test")}
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(store.n_compounds))
    assert set(store.folds[rows["test"]]) <= {CFG.test_fold} and set(store.folds[rows["valid"]]) <= {CFG.valid_fold}
    assert site_name(store, tmp_path / "x") == "acme"
    store.settings["site_name"] = ""
    assert site_name(store, tmp_path / "x") == "x"


def _shared(store):
    from fedmol.models.network import MultiTaskNet

    return MultiTaskNet(site_spec(store, CFG, "acme"), seed=0).shared_state_dict()
