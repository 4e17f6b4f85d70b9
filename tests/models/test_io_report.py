import json

import numpy as np
import pytest

from fedmol.errors import InputError
from fedmol.models.io import load_calibration, load_model, save_model
from fedmol.models.network import MultiTaskNet
from fedmol.models.report import GainTable
from fedmol.models.spec import build_spec
from fedmol.models.training import predict
from fedmol.models.uncertainty import ConformalCalibration, ConformalRegressor
from tests.models.conftest import make_fingerprints


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    spec = build_spec(1024, [("a", "classification")], [("r", "regression")], hidden=(32, 16))
    model = MultiTaskNet(spec, seed=0)
    model.set_target_scaling("private_regression", np.array([4.0]), np.array([1.5]))
    cal = ConformalCalibration(regressors={"r": ConformalRegressor(np.arange(10.0))})
    save_model(tmp_path / "m", model, meta={"note": "test", "n": np.int64(3)}, calibration=cal)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"spec.json", "weights.pt", "meta.json",
                                                             "calibration.json"}
    loaded, meta = load_model(tmp_path / "m")
    X = make_fingerprints(20, seed=3)
    a, b = predict(model, X), predict(loaded, X)
    for task in a:
        np.testing.assert_array_equal(a[task], b[task])
    assert meta == {"note": "test", "n": 3} and loaded.spec == spec
    assert load_calibration(tmp_path / "m").regressors["r"].half_width(0.5) == 5.0
    with pytest.raises(InputError):
        load_model(tmp_path / "nothing")


def test_gain_table_merge_and_markdown(tmp_path):
    base = GainTable("tox21", "roc_auc")
    base.add("local", "site0", {"t1": 0.7, "t2": 0.6})
    base.add("pooled", "site0", {"t1": 0.8, "t2": 0.7})
    fed = GainTable.from_site_metrics("tox21", "federated",
                                      {"site0": {"t1": {"roc_auc": 0.75}, "t2": {"roc_auc": 0.65}}})
    table = base.merge(fed)
    assert table.approaches == ["local", "federated", "pooled"]
    assert table.summary()["federated"]["site0"] == pytest.approx(0.7)
    md = table.markdown()
    assert "| site0 | 2 | 0.650 | 0.700 | 0.750 |" in md
    table.to_json(tmp_path / "t.json")
    assert GainTable.from_json(tmp_path / "t.json").values == table.values
    assert json.loads((tmp_path / "t.json").read_text())["summary"]["pooled"]["mean_over_sites"] == 0.75
    with pytest.raises(InputError):
        base.merge(GainTable("sider", "roc_auc"))
