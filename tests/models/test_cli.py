import numpy as np
import pytest

from fedmol.cli import app, main
from fedmol.models.io import load_calibration, load_model
from fedmol.models.training import predict


@pytest.fixture(autouse=True)
def _multi_command_app():
    """Typer runs a lone command as the whole program (no subcommand name): while `train` is the
    only registered command, `fedmol train ...` would fail. A root callback keeps the group form,
    as it will be once the other areas register their commands (fedmol.cli could add one)."""
    if app.registered_callback is None:
        app.callback()(lambda: None)
        yield
        app.registered_callback = None
    else:
        yield


def test_fedmol_train_writes_a_loadable_model(tmp_path, synthetic_store, capsys):
    store_dir = synthetic_store.save(tmp_path / "store")
    out = tmp_path / "model"
    code = main(["train", str(store_dir), "--out", str(out), "--epochs", "3", "--hidden", "32",
                 "--device", "cpu", "--min-pos", "5", "--min-neg", "5", "--seed", "1"])
    assert code == 0
    model, meta = load_model(out)
    assert meta["folds"] == {"test": 0, "valid": 1} and len(meta["history"]) == 3
    assert set(model.spec.task_names) == {"act_a", "act_b", "pic50"}
    preds = predict(model, synthetic_store.X[:5])
    assert preds["act_a"].shape == (5,) and np.isfinite(preds["pic50"]).all()
    cal = load_calibration(out)
    assert cal is not None and "act_a" in cal.classifiers and "pic50" in cal.regressors
    printed = capsys.readouterr().out
    assert "act_a" in printed and "ROC-AUC" in printed


def test_fedmol_train_bad_store_path_fails(tmp_path):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) != 0


def test_fedmol_train_same_test_and_valid_fold_fails(tmp_path, synthetic_store):
    store_dir = synthetic_store.save(tmp_path / "store")
    assert main(["train", str(store_dir), "--out", str(tmp_path / "m"), "--valid-fold", "0"]) == 2
