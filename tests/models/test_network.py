import warnings

import numpy as np
import pytest
import torch

from fedmol.errors import ConfigError
from fedmol.models.data import SparseBatch, transform_features
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import build_spec
from tests.models.conftest import make_fingerprints


def _spec():
    return build_spec(256, [("c", "classification"), ("r", "regression")],
                      [("p", "classification"), ("q", "regression")], hidden=(32, 16))


def test_state_dict_keys_and_shared_private_split():
    model = MultiTaskNet(_spec(), seed=0)
    keys = set(model.state_dict())
    assert all(k.startswith(("trunk.", "heads.")) for k in keys)
    shared, private = model.shared_state_dict(), model.private_state_dict()
    assert set(shared) | set(private) == keys and not set(shared) & set(private)
    assert not any(k.startswith("heads.private_") for k in shared)
    assert all(k.startswith("heads.private_") for k in private)
    assert "heads.consortium_regression.target_mean" in shared


def test_load_shared_and_private_parts():
    a, b = MultiTaskNet(_spec(), seed=0), MultiTaskNet(_spec(), seed=1)
    b.load_shared_state_dict({k: v.numpy() for k, v in a.shared_state_dict().items()})
    for k, v in a.shared_state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.private_state_dict()["heads.private_classification.linear.weight"],
                           b.private_state_dict()["heads.private_classification.linear.weight"])
    b.load_private_state_dict(a.private_state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    with pytest.raises(ConfigError):
        b.load_shared_state_dict(a.private_state_dict())


def test_read_only_arrays_load_quietly_and_stay_as_they_were():
    """The server's kept model is read-only numpy (`fedmol.records.from_array_record`): loading it
    copies the values in, without torch's warning about non-writable arrays, and never writes back."""
    a, b = MultiTaskNet(_spec(), seed=0), MultiTaskNet(_spec(), seed=1)
    state = {k: v.numpy().copy() for k, v in a.shared_state_dict().items()}
    for v in state.values():
        v.flags.writeable = False
    before = {k: v.copy() for k, v in state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        b.load_shared_state_dict(state)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    for k, v in state.items():
        assert np.array_equal(v, before[k])


def test_seeded_init_is_reproducible():
    a, b = MultiTaskNet(_spec(), seed=3), MultiTaskNet(_spec(), seed=3)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_sparse_input_layer_equals_dense_matmul():
    model = MultiTaskNet(_spec(), seed=0)
    X = transform_features(make_fingerprints(7, n_bits=256, on_bits=9, seed=4), "binary")
    out = model.trunk.input(SparseBatch.from_csr(X))
    dense = torch.from_numpy(X.toarray()) @ model.trunk.input.bag.weight + model.trunk.input.bias
    assert torch.allclose(out, dense, atol=1e-5)


def test_forward_shapes_and_target_scaling():
    model = MultiTaskNet(_spec(), seed=0).eval()
    X = transform_features(make_fingerprints(5, n_bits=256, seed=0), "binary")
    out = model(SparseBatch.from_csr(X))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "consortium_classification": (5, 1), "consortium_regression": (5, 1),
        "private_classification": (5, 1), "private_regression": (5, 1)}
    model.set_target_scaling("private_regression", np.array([5.0]), np.array([2.0]))
    raw = out["private_regression"]
    assert torch.allclose(model.heads["private_regression"].to_units(raw), raw * 2 + 5)
    with pytest.raises(ConfigError):
        model.set_target_scaling("private_classification", np.zeros(1), np.ones(1))
