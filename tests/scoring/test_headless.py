"""A shared model without heads (every task of the federation private): it says so and points to the
site's own model, when loaded with mlflow.pyfunc, on predict, and in `fedmol score` / `fedmol serve`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmol.cli import main
from fedmol.datasets.keys import generate_key_file, key_fingerprint, load_key
from fedmol.errors import InputError
from fedmol.models.network import MultiTaskNet
from fedmol.models.registry import save_shared_model
from fedmol.models.spec import build_spec
from fedmol.scoring.scorer import NO_HEADS_MESSAGE, Scorer

POINTER = "models:/fedmol-site-"


@pytest.fixture()
def headless(tmp_path):
    key_path = generate_key_file(tmp_path / "consortium.key")
    spec = build_spec(256, [], [], hidden=(16,), dropout=0.1, allow_no_heads=True)
    arrays = {k: v.detach().numpy() for k, v in MultiTaskNet(spec, seed=0).shared_state_dict().items()}
    meta = {"federation_id": "fedX", "prep_settings": {"standardize": {}, "featurize": {"radius": 2, "n_bits": 256}},
            "key_fingerprint": key_fingerprint(load_key(key_path))}
    return save_shared_model(tmp_path / "model", spec, arrays, meta=meta), key_path


def test_the_scorer_refuses_a_model_without_heads_and_points_to_the_site_model(headless):
    model_dir, key_path = headless
    with pytest.raises(InputError, match="no prediction heads") as err:
        Scorer(model_dir, load_key(key_path))
    assert "every task of its federation is private" in str(err.value) and POINTER in str(err.value)
    assert Scorer(model_dir, load_key(key_path), allow_no_heads=True).headless


@pytest.mark.parametrize("command", ["score", "serve"])
def test_score_and_serve_exit_with_one_clear_line(headless, tmp_path, capsys, monkeypatch, command):
    model_dir, key_path = headless
    monkeypatch.setenv("FEDMOL_SERVE_TOKENS", "a-token-long-enough-for-the-service-0123456789")
    src = tmp_path / "in.csv"
    pd.DataFrame({"smiles": ["CCO"]}).to_csv(src, index=False)
    args = (["score", str(src), "--out", str(tmp_path / "o.csv")] if command == "score" else ["serve"])
    code = main([*args, "--model", str(model_dir), "--key-file", str(key_path)])
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no prediction heads" in lines[0] and POINTER in lines[0]
    assert not (tmp_path / "o.csv").exists()


def test_pyfunc_warns_on_load_and_predict_fails_with_the_pointer(headless, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fedmol.models.registry import ensure_experiment, register_model_folder

    model_dir, key_path = headless
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowClient(uri).create_run(ensure_experiment(uri, "shared", tmp_path / "artifacts"))
    model_uri = register_model_folder(uri, run.info.run_id, model_dir, "fedmol-shared", artifact_name="shared_model")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with pytest.warns(UserWarning, match="no prediction heads"):
            model = mlflow.pyfunc.load_model(model_uri, model_config={"key_file": str(key_path)})
    finally:
        mlflow.set_tracking_uri(before)
    with pytest.raises(MlflowException) as err:
        model.predict(pd.DataFrame({"smiles": ["CCO", "c1ccccc1O"]}))
    assert NO_HEADS_MESSAGE in str(err.value) and POINTER in str(err.value)


def test_a_model_with_heads_loads_without_a_warning(tmp_path, recwarn):
    from fedmol.scoring.pyfunc import FedmolPyfunc

    key_path = generate_key_file(tmp_path / "consortium.key")
    spec = build_spec(256, [("active", "classification")], [], hidden=(16,), dropout=0.1)
    arrays = {k: v.detach().numpy() for k, v in MultiTaskNet(spec, seed=0).shared_state_dict().items()}
    meta = {"prep_settings": {"standardize": {}, "featurize": {"radius": 2, "n_bits": 256}},
            "key_fingerprint": key_fingerprint(load_key(key_path))}
    model_dir = save_shared_model(tmp_path / "model", spec, arrays, meta=meta)

    class Context:
        artifacts = {"model": str(model_dir)}
        model_config = {"key_file": str(key_path), "mc_samples": 0}

    pyfunc = FedmolPyfunc()
    pyfunc.load_context(Context())
    assert not [w for w in recwarn if "prediction heads" in str(w.message)]
    out = pyfunc.predict(Context(), pd.DataFrame({"smiles": ["CCO"]}))
    assert np.isfinite(out["active"]).all()
