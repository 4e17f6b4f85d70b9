import pytest

from fedmol.errors import ConfigError
from fedmol.models.spec import HeadSpec, ModelSpec, build_spec


def test_build_spec_groups_tasks_into_named_heads():
    spec = build_spec(
        2048,
        consortium_tasks=[("c2", "classification"), ("c1", "classification"), ("logd", "regression")],
        private_tasks=[("p1", "classification"), ("c1", "classification")],
        hidden=(64, 32),
        dropout=0.1,
    )
    names = [h.name for h in spec.heads]
    assert names == ["consortium_classification", "consortium_regression", "private_classification"]
    assert spec.head("consortium_classification").tasks == ("c2", "c1")  # consortium order kept
    assert spec.head("private_classification").tasks == ("p1",)  # c1 is already shared
    assert spec.head("consortium_regression").shared and not spec.head("private_classification").shared
    assert spec.hidden == (64, 32)


def test_spec_json_round_trip():
    spec = build_spec(1024, [("a", "classification")], [("b", "regression")], hidden=[16], dropout=0.3,
                      input_transform="log1p")
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec


def test_spec_rejects_bad_values():
    with pytest.raises(ConfigError):
        HeadSpec("h", "ranking", ("a",), True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        build_spec(10, [], [])
    with pytest.raises(ConfigError):
        ModelSpec(10, heads=(HeadSpec("x", "classification", ("a",), True),
                             HeadSpec("y", "regression", ("a",), False)))
