import numpy as np
import pytest
import torch

from fedmol.errors import ConfigError
from fedmol.models.data import TaskData, iter_batches
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import build_spec
from fedmol.models.training import TrainConfig, evaluate, fit_target_scaling, predict, resolve_device, train_epochs
from tests.models.conftest import TASKS, make_fingerprints, make_labels


def _data(n=300, seed=0, hidden=(64,), dropout=0.0):
    X = make_fingerprints(n, seed=seed)
    Y, censor = make_labels(X, seed=seed + 1)
    spec = build_spec(X.shape[1], [TASKS[0]], TASKS[1:], hidden=hidden, dropout=dropout)
    return spec, X, Y, censor


def test_task_data_aligns_columns_and_fills_missing_tasks():
    spec = build_spec(64, [("shared_only", "classification"), ("a", "classification")], [("r", "regression")])
    X = make_fingerprints(4, n_bits=64, on_bits=5)
    Y = np.array([[1, 2.5], [0, np.nan], [np.nan, 3.0], [1, 4.0]], dtype=np.float32)
    censor = np.array([[0, 1], [0, 0], [0, -1], [0, 0]], dtype=np.int8)
    data = TaskData.from_arrays(spec, X, Y, censor, ["a", "r"])
    cls = data.heads["consortium_classification"]
    assert np.isnan(cls.values[:, 0]).all()  # the site lacks this consortium task
    np.testing.assert_array_equal(cls.values[:, 1], Y[:, 0])
    np.testing.assert_array_equal(data.heads["private_regression"].censor[:, 0], censor[:, 1])
    assert data.n_labels() == 6


def test_batches_are_seeded():
    spec, X, Y, censor = _data(100)
    data = TaskData.from_arrays(spec, X, Y, censor, [t for t, _ in TASKS])
    first = [b.offsets.shape[0] for b, _ in iter_batches(data, 32, shuffle=True, seed=1)]
    assert first == [32, 32, 32, 4]
    a = [lab["consortium_classification"].values for _, lab in iter_batches(data, 32, shuffle=True, seed=1)]
    b = [lab["consortium_classification"].values for _, lab in iter_batches(data, 32, shuffle=True, seed=1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_overfits_a_tiny_set():
    spec, X, Y, censor = _data(64, hidden=(128,))
    data = TaskData.from_arrays(spec, X, Y, np.zeros_like(censor), [t for t, _ in TASKS])
    model = MultiTaskNet(spec, seed=0)
    fit_target_scaling(model, data)
    result = train_epochs(model, data, TrainConfig(epochs=150, batch_size=64, lr=3e-3, lr_step_epoch=1000,
                                                   device="cpu"))
    assert result.history[0].train_loss > 0.4
    assert result.final_loss < 0.02
    preds = predict(model, X)
    present = ~np.isnan(Y[:, 0])
    assert ((preds["act_a"][present] > 0.5) == (Y[present, 0] == 1)).all()


def test_cpu_training_is_reproducible_with_a_seed():
    spec, X, Y, censor = _data(200, dropout=0.2)
    data = TaskData.from_arrays(spec, X, Y, censor, [t for t, _ in TASKS])
    states = []
    for _ in range(2):
        model = MultiTaskNet(spec, seed=5)
        train_epochs(model, data, TrainConfig(epochs=2, batch_size=32, seed=11, device="cpu"))
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_early_stopping_restores_the_best_epoch_and_optimizer_is_returned():
    spec, X, Y, censor = _data(300, hidden=(256,))
    names = [t for t, _ in TASKS]
    train = TaskData.from_arrays(spec, X, Y, censor, names, np.arange(100))  # small: overfits fast
    valid = TaskData.from_arrays(spec, X, Y, censor, names, np.arange(100, 300))
    model = MultiTaskNet(spec, seed=0)
    fit_target_scaling(model, train)
    config = TrainConfig(epochs=40, batch_size=32, lr=1e-2, patience=3, device="cpu")
    result = train_epochs(model, train, config, valid=valid)
    assert result.stopped_early and len(result.history) < 40
    best = min(result.history, key=lambda r: r.valid_loss)
    assert result.best_epoch == best.epoch
    assert abs(evaluate(model, valid).loss - best.valid_loss) < 1e-5
    assert isinstance(result.optimizer, torch.optim.Adam) and result.optimizer.state


def test_score_monitor_picks_the_best_score_and_falls_back_to_the_loss_when_nothing_qualifies():
    from fedmol.models.metrics import MetricThresholds

    spec, X, Y, censor = _data(300, hidden=(256,))
    names = [t for t, _ in TASKS]
    train = TaskData.from_arrays(spec, X, Y, censor, names, np.arange(100))
    valid = TaskData.from_arrays(spec, X, Y, censor, names, np.arange(100, 300))
    config = TrainConfig(epochs=12, batch_size=32, lr=1e-2, patience=3, monitor="score", device="cpu")
    model = MultiTaskNet(spec, seed=0)
    fit_target_scaling(model, train)
    result = train_epochs(model, train, config, valid=valid, thresholds=MetricThresholds.at_least(5))
    best = max(result.history, key=lambda r: r.valid_score)
    assert result.best_epoch == best.epoch
    # No validation task reaches 10,000 labels: the score is None every epoch, the loss decides.
    model = MultiTaskNet(spec, seed=0)
    fit_target_scaling(model, train)
    result = train_epochs(model, train, config, valid=valid, thresholds=MetricThresholds.at_least(10_000))
    assert all(r.valid_score is None for r in result.history)
    assert result.best_epoch == min(result.history, key=lambda r: r.valid_loss).epoch


def test_step_decay_and_continued_optimizer():
    config = TrainConfig(lr=1e-3, lr_step_epoch=10, lr_gamma=0.3)
    assert config.lr_at(9) == pytest.approx(1e-3) and config.lr_at(10) == pytest.approx(3e-4)
    spec, X, Y, censor = _data(64)
    data = TaskData.from_arrays(spec, X, Y, censor, [t for t, _ in TASKS])
    model = MultiTaskNet(spec, seed=0)
    sgd = TrainConfig(epochs=1, optimizer="sgd", lr=0.1, lr_step_epoch=2, lr_gamma=0.5, device="cpu")
    first = train_epochs(model, data, sgd)
    second = train_epochs(model, data, sgd, optimizer=first.optimizer, start_epoch=2)
    assert second.optimizer is first.optimizer
    assert second.history[0].lr == pytest.approx(0.05)


def test_proximal_term_keeps_weights_near_the_reference():
    spec, X, Y, censor = _data(200)
    data = TaskData.from_arrays(spec, X, Y, censor, [t for t, _ in TASKS])
    drift = {}
    for mu in (0.0, 10.0):
        model = MultiTaskNet(spec, seed=0)
        ref = {k: v.detach().clone() for k, v in model.named_parameters()}
        train_epochs(model, data, TrainConfig(epochs=3, lr=1e-2, proximal_mu=mu, device="cpu"),
                     prox_reference=ref)
        drift[mu] = sum(float((p.detach() - ref[k]).pow(2).sum()) for k, p in model.named_parameters())
    assert drift[10.0] < drift[0.0]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


def test_predict_with_mc_dropout_gives_uncertainty():
    spec, X, Y, censor = _data(50, dropout=0.3)
    model = MultiTaskNet(spec, seed=0)
    a = predict(model, X, mc_samples=8, seed=1)
    b = predict(model, X, mc_samples=8, seed=1)
    assert a.std is not None and (a.std["act_a"] > 0).all()
    np.testing.assert_array_equal(a["pic50"], b["pic50"])
    assert predict(model, X).std is None


def test_the_finite_check_names_nan_and_infinite_weights_only():
    from fedmol.errors import TrainingDiverged
    from fedmol.models.training import _check_finite

    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(3e38)  # finite values whose sum overflows
    _check_finite(model, 0, 0.1)
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            model.bias[1] = bad
        with pytest.raises(TrainingDiverged, match="1 weight tensors hold NaN or infinite"):
            _check_finite(model, 0, 0.1)


def test_divergence_stops_with_a_clear_error():
    from fedmol.errors import TrainingDiverged

    spec, X, Y, censor = _data(200)
    data = TaskData.from_arrays(spec, X, Y, censor, [t for t, _ in TASKS], np.arange(200))
    model = MultiTaskNet(spec, seed=0)
    config = TrainConfig(epochs=5, batch_size=32, lr=1e12, optimizer="sgd", momentum=0.9, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"training diverged in epoch 1: .* learning rate 1e\+12"):
        train_epochs(model, data, config, valid=data)
    sane = MultiTaskNet(spec, seed=0)  # the same data and model train fine at a sane rate
    result = train_epochs(sane, data, TrainConfig(epochs=2, batch_size=32, lr=0.05, optimizer="sgd", device="cpu"))
    assert len(result.history) == 2 and all(torch.isfinite(p).all() for p in sane.parameters())


def test_regression_weight_scales_only_the_regression_part_of_the_training_objective():
    from fedmol.models.training import compute_loss

    spec, X, Y, censor = _data(64)
    names = [t for t, _ in TASKS]
    data = TaskData.from_arrays(spec, X, Y, censor, names, np.arange(64))
    model = MultiTaskNet(spec, seed=0)
    fit_target_scaling(model, data)
    features, labels = next(iter_batches(data, 64, shuffle=False))
    with torch.no_grad():
        outputs = model(features)
        kinds = {h.name: h.kind for h in spec.heads}
        full = compute_loss(model, outputs, labels)
        weighted = compute_loss(model, outputs, labels, regression_weight=0.1)
        cls = compute_loss(model, {k: v for k, v in outputs.items() if kinds[k] == "classification"}, labels)
    reg = full.total - cls.total
    assert float(reg) > 0 and float(cls.total) > 0
    np.testing.assert_allclose(float(weighted.total), float(cls.total + 0.1 * reg), rtol=1e-5)
    assert float(weighted.count) == float(full.count)
    with pytest.raises(ConfigError):
        TrainConfig(regression_weight=0.0)
