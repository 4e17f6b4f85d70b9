import tomllib
from pathlib import Path

import pytest

from fedmol.config import FederationConfig
from fedmol.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_every_key_with_its_default():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == FederationConfig().to_run_config()


def test_run_config_round_trip_and_coercion():
    cfg = FederationConfig.from_run_config({"num-server-rounds": "7", "register-model": "false", "lr": 1})
    assert (cfg.num_server_rounds, cfg.register_model, cfg.lr) == (7, False, 1.0)
    assert FederationConfig.from_run_config(cfg.to_run_config()) == cfg


def test_unknown_key_is_an_error_that_lists_the_known_keys():
    with pytest.raises(ConfigError, match="unknown run-config key.*num-server-round'.*known keys"):
        FederationConfig.from_run_config({"num-server-round": 3})


@pytest.mark.parametrize("changes, match", [
    ({"strategy": "fedsgd"}, "strategy"),
    ({"hidden": "400,x"}, "hidden"),
    ({"consortium-tasks": "NR-AR:binary"}, "consortium-tasks"),
    ({"test-fold": 1, "valid-fold": 1}, "differ"),
    ({"num-server-rounds": 2.5}, "num-server-rounds"),
])
def test_bad_values_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        FederationConfig.from_run_config(changes)


def test_consortium_tasks_keep_their_order():
    cfg = FederationConfig(consortium_tasks="b:regression, a:classification")
    assert cfg.consortium_task_list == [("b", "regression"), ("a", "classification")]


def test_a_consortium_without_shared_tasks_shares_only_the_trunk():
    from fedmol.server.federation import initial_shared_arrays

    arrays, spec = initial_shared_arrays(FederationConfig(n_bits=256, hidden="8,4", consortium_tasks=""))
    assert spec.heads == ()
    assert arrays and all(k.startswith("trunk.") for k in arrays)
    assert arrays["trunk.input.bag.weight"].shape == (256, 8)


def test_set_overrides_are_validated_like_the_run_config():
    cfg = FederationConfig().with_overrides(["num-server-rounds=10", 'strategy="fedprox"'])
    assert (cfg.num_server_rounds, cfg.strategy) == (10, "fedprox")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        FederationConfig().with_overrides(["num-server-rounds"])
    with pytest.raises(ConfigError, match="unknown run-config key"):
        FederationConfig().with_overrides(["rounds=3"])


@pytest.mark.parametrize("key, literal", [("strategy", "Strategy"), ("dp", "DPMode"), ("optimizer", "Optimizer"),
                                          ("transport-dtype", "TransportDtype"),
                                          ("input-transform", "InputTransform")])
def test_closed_choices_come_from_their_literal_type(key, literal):
    from typing import get_args

    import fedmol.config

    choices = get_args(getattr(fedmol.config, literal))
    budget = {"dp-epsilon": 8.0} if key == "dp" else {}  # every DP mode needs its budget
    for value in choices:
        assert getattr(FederationConfig.from_run_config({key: value, **budget}), key.replace("-", "_")) == value
    with pytest.raises(ConfigError, match=rf"{key} 'nope' is not one of \({choices[0]!r}"):
        FederationConfig.from_run_config({key: "nope"})


@pytest.mark.parametrize("device, ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True),
                                        ("tpu", False), ("cuda:", False)])
def test_device_is_checked_when_the_config_is_read(device, ok):
    if ok:
        assert FederationConfig.from_run_config({"device": device}).device == device
    else:
        with pytest.raises(ConfigError, match="device .* auto, cpu, cuda or cuda:N"):
            FederationConfig.from_run_config({"device": device})


def test_site_dp_has_its_own_recipe_that_applies_only_under_site_dp_sgd():
    plain = FederationConfig()
    assert plain.hidden_sizes == (400,) and not plain.site_dp
    dp = FederationConfig.from_run_config({"dp": "site-dp-sgd", "dp-epsilon": 8})
    assert dp.site_dp and dp.hidden_sizes == (32,)  # the shared model the server and every site build
    assert dp.dp_batch(1070) == 1070 and dp.replace(dp_batch_size=256).dp_batch(1070) == 256  # 0: full batch
    assert dp.replace(dp_hidden="128,32").hidden_sizes == (128, 32)
    central = FederationConfig.from_run_config({"dp": "server-fixed", "dp-epsilon": 8})
    assert central.hidden_sizes == (400,)  # central DP keeps the model and training of the defaults
    # The most rounds: dp-num-server-rounds under site DP (the noise plan's), else num-server-rounds.
    assert (plain.max_rounds, dp.max_rounds, central.max_rounds) == (40, 20, 40)
    assert dp.replace(num_server_rounds=7).max_rounds == 20 and dp.replace(dp_num_server_rounds=7).max_rounds == 7


@pytest.mark.parametrize("changes, match", [
    ({"dp-hidden": "64,x"}, "dp-hidden"),
    ({"dp-hidden": "0"}, "dp-hidden"),
    ({"dp-num-server-rounds": 0}, "dp-num-server-rounds"),
    ({"dp-batch-size": -1}, "dp-batch-size"),
    ({"dp-local-epochs": 0}, "dp-local-epochs"),
    ({"dp-lr": 0.0}, "dp-lr"),
    ({"dp-lr-decay": 1.5}, "dp-lr-decay"),
    ({"hidden": "x", "dp": "site-dp-sgd", "dp-epsilon": 8}, "hidden='x'"),
])
def test_bad_site_dp_recipe_values_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        FederationConfig.from_run_config(changes)
