"""Per-compound DP-SGD (fedmol.models.dp): clipping against Opacus's dense per-sample gradients,
the noise scale, Poisson sampling, and that DP training still learns."""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from fedmol.errors import ConfigError
from fedmol.models.data import LabelBatch, SparseBatch, TaskData
from fedmol.models.dp import GhostClipper, iter_poisson_batches, poisson_rows, steps_per_epoch
from fedmol.models.network import MultiTaskNet
from fedmol.models.spec import build_spec
from fedmol.models.training import TrainConfig, compute_loss, evaluate, train_epochs
from tests.models.conftest import TASKS, make_fingerprints, make_labels

N_BITS = 64
TASK_NAMES = [t for t, _ in TASKS]


def _count_data(n: int = 12, seed: int = 0) -> TaskData:
    """Rows with counts 1..5 per bit (non-binary weights after log1p), 3 tasks, some labels missing."""
    rng = np.random.default_rng(seed)
    X = make_fingerprints(n, n_bits=N_BITS, on_bits=6, seed=seed)
    X.data = rng.integers(1, 6, size=X.data.shape).astype(np.float32)
    Y, censor = make_labels(X, seed=seed + 1, missing=0.2)
    spec = build_spec(N_BITS, [TASKS[0]], TASKS[1:], hidden=(8, 6), dropout=0.0, input_transform="log1p")
    return TaskData.from_arrays(spec, X, Y, censor, TASK_NAMES)


class _DenseTwin(nn.Module):
    """The same function as a MultiTaskNet, with an nn.Linear input layer (for Opacus)."""

    def __init__(self, net: MultiTaskNet) -> None:
        super().__init__()
        bag = net.trunk.input.bag.weight
        self.input = nn.Linear(bag.shape[0], bag.shape[1])
        self.layers = copy.deepcopy(net.trunk.layers)  # ReLU, Dropout(0), Linear, ...
        self.heads = nn.ModuleDict({k: nn.Linear(h.linear.in_features, h.linear.out_features)
                                    for k, h in net.heads.items()})
        with torch.no_grad():
            self.input.weight.copy_(bag.T)
            self.input.bias.copy_(net.trunk.input.bias)
            for k, h in net.heads.items():
                self.heads[k].weight.copy_(h.linear.weight)
                self.heads[k].bias.copy_(h.linear.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.layers(self.input(x))
        return {k: head(h) for k, head in self.heads.items()}


def _opacus_clipped_sum(net: MultiTaskNet, dense_x: torch.Tensor, labels: dict[str, LabelBatch],
                        weights: dict[str, torch.Tensor], clip: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Opacus's per-sample gradients of each compound's loss, clipped by hand and summed, in the
    MultiTaskNet's parameter order and shapes; and the per-sample norms."""
    from opacus import GradSampleModule


    twin = _DenseTwin(net)
    gsm = GradSampleModule(twin, loss_reduction="sum")
    outputs = gsm(dense_x)
    loss = compute_loss(net, outputs, labels, weights, regression_weight=0.5).total
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the input needs no grad
        loss.backward()
    per_sample = {id(p): p.grad_sample for p in twin.parameters()}
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_sample.values()))
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    summed = {pid: torch.einsum("b,b...->...", factor, g) for pid, g in per_sample.items()}
    # By the net's parameter names, in its shapes.
    out = {"trunk.input.bag.weight": summed[id(twin.input.weight)].T, "trunk.input.bias": summed[id(twin.input.bias)]}
    for name, m in twin.layers.named_children():
        if isinstance(m, nn.Linear):
            out[f"trunk.layers.{name}.weight"] = summed[id(m.weight)]
            out[f"trunk.layers.{name}.bias"] = summed[id(m.bias)]
    for k, m in twin.heads.items():
        out[f"heads.{k}.linear.weight"] = summed[id(m.weight)]
        out[f"heads.{k}.linear.bias"] = summed[id(m.bias)]
    return out, norms


def _batch_with_duplicate(data: TaskData) -> tuple[SparseBatch, torch.Tensor]:
    """The data's rows as a SparseBatch, row 0 holding one bit twice; and the dense equivalent."""
    X = data.X.tocoo()
    rows = np.concatenate([X.row, [0]])
    cols = np.concatenate([X.col, [X.col[X.row == 0][0]]])
    vals = np.concatenate([X.data, [0.7]]).astype(np.float32)
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    offsets = np.searchsorted(rows, np.arange(data.n))
    batch = SparseBatch(torch.from_numpy(cols.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64)),
                        torch.from_numpy(vals))
    dense = sp.coo_matrix((vals, (rows, cols)), shape=data.X.shape).toarray()  # sums the duplicate
    return batch, torch.from_numpy(dense.astype(np.float32))


def test_clipped_sum_matches_opacus_dense_per_sample_gradients():
    data = _count_data()
    assert len(np.unique(data.X.data)) > 3  # non-binary per-bit weights
    net = MultiTaskNet(data.spec, seed=3)
    batch, dense_x = _batch_with_duplicate(data)
    labels = {name: h.batch(np.arange(data.n)) for name, h in data.heads.items()}
    weights = {"consortium_classification": torch.tensor([2.0])}

    # Norms without clipping first, to pick a C that clips some rows but not others.
    _, ref_norms = _opacus_clipped_sum(net, dense_x, labels, weights, clip=1e9)
    clip = float(ref_norms.median())
    expected, _ = _opacus_clipped_sum(net, dense_x, labels, weights, clip)

    clipper = GhostClipper(net)
    with clipper.capture():
        outputs = net(batch)
    loss = compute_loss(net, outputs, labels, weights, regression_weight=0.5).total
    norms = clipper.clipped_backward(loss, outputs, clip)

    torch.testing.assert_close(norms, ref_norms, rtol=1e-5, atol=1e-6)
    assert 0 < int((norms > clip).sum()) < data.n
    got = {name: p.grad for name, p in net.named_parameters()}
    assert got.keys() == expected.keys()
    for name, g in got.items():
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_one_dp_step_in_training_is_the_clipped_sum_over_the_batch():
    """q = 1 (batch_size = n): every compound is in the single step; SGD lr 1 moves by -sum/n."""
    data = _count_data(n=10, seed=4)
    net = MultiTaskNet(data.spec, seed=5)
    batch = SparseBatch.from_csr(data.X)
    labels = {name: h.batch(np.arange(data.n)) for name, h in data.heads.items()}
    clipper = GhostClipper(net)
    with clipper.capture():
        outputs = net(batch)
    clipper.clipped_backward(compute_loss(net, outputs, labels).total, outputs, 0.05)
    expected = [p.detach() - p.grad / data.n for p in net.parameters()]
    net.zero_grad()
    config = TrainConfig(epochs=1, batch_size=data.n, lr=1.0, optimizer="sgd", momentum=0.0, device="cpu",
                         dp_max_grad_norm=0.05)
    result = train_epochs(net, data, config)
    assert result.dp_steps == 1 and result.dp_sample_rate == 1.0
    for p, e in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7)


def test_noise_std_per_coordinate_is_sigma_c_over_batch_size():
    """No label present: no data gradient, so one SGD step (lr 1) moves by the noise / batch_size."""
    X = make_fingerprints(50, n_bits=1024, on_bits=10)
    Y = np.full((50, 3), np.nan, dtype=np.float32)
    spec = build_spec(1024, [TASKS[0]], TASKS[1:], hidden=(64,), dropout=0.0)
    data = TaskData.from_arrays(spec, X, Y, None, TASK_NAMES)
    net = MultiTaskNet(spec, seed=0)
    before = net.trunk.input.bag.weight.detach().clone()
    sigma, clip, batch = 1.3, 0.7, 25
    config = TrainConfig(epochs=1, batch_size=batch, lr=1.0, optimizer="sgd", momentum=0.0, device="cpu",
                         dp_max_grad_norm=clip, dp_noise_multiplier=sigma, dp_seed=0)
    result = train_epochs(net, data, config)
    assert result.dp_steps == 2 and result.dp_sample_rate == 0.5
    # Two steps of independent noise: the sum has std sqrt(2) sigma C / batch per coordinate.
    moved = (net.trunk.input.bag.weight.detach() - before) / np.sqrt(2)
    expected = sigma * clip / batch
    assert abs(float(moved.std()) / expected - 1) < 0.02  # 65,536 coordinates: ~0.3% sampling error
    assert abs(float(moved.mean())) < 0.02 * expected


def test_poisson_sampling_rate_and_reproducibility():
    n, q = 500, 0.1
    sizes = [rows.size for rows in poisson_rows(n, q, 2000, seed=[7, 0])]
    assert abs(np.mean(sizes) - q * n) < 1.0  # std of the mean: 0.15
    assert min(sizes) < q * n < max(sizes)  # sizes vary: not a fixed batch
    a = [r.tolist() for r in poisson_rows(n, q, 5, seed=[7, 1])]
    assert a == [r.tolist() for r in poisson_rows(n, q, 5, seed=[7, 1])]
    assert a != [r.tolist() for r in poisson_rows(n, q, 5, seed=[7, 2])]
    assert all(r == sorted(set(r)) for r in a)

    data = _count_data(n=30)
    batches = list(iter_poisson_batches(data, 4, seed=0))
    assert len(batches) == steps_per_epoch(30, 4) == 8
    tiny = list(iter_poisson_batches(data, 1, seed=3))  # q = 1/30: empty batches happen
    assert any(b is None for b in tiny)


def test_dp_training_learns_separable_data_and_reports_its_steps():
    """sigma = 1, C = 1 on 1,600 compounds: the test ROC-AUC clearly beats chance (measured 0.81).
    SGD with momentum, as DP-SGD wants: Adam scales the noise-only coordinates up to the lr."""
    X = make_fingerprints(2000, seed=11)
    Y = (np.asarray(X[:, :100].sum(axis=1)).ravel() >= 2).astype(np.float32)[:, None]  # 2+ of 100 'active' bits
    spec = build_spec(X.shape[1], [("act", "classification")], [], hidden=(16,), dropout=0.1)
    train = TaskData.from_arrays(spec, X, Y, None, ["act"], rows=np.arange(1600))
    test = TaskData.from_arrays(spec, X, Y, None, ["act"], rows=np.arange(1600, 2000))
    net = MultiTaskNet(spec, seed=0)
    config = TrainConfig(epochs=20, batch_size=200, optimizer="sgd", lr=0.3, momentum=0.9, device="cpu", seed=1,
                         dp_max_grad_norm=1.0, dp_noise_multiplier=1.0, dp_seed=1)
    result = train_epochs(net, train, config)
    auc = evaluate(net, test).per_task["act"]["roc_auc"]
    assert auc > 0.7, auc
    assert result.dp_steps == 20 * 8 and result.dp_sample_rate == pytest.approx(0.125)
    assert result.history[-1].train_loss < result.history[0].train_loss - 0.1

    # Reproducible from dp_seed, sampling and noise included (a test's or a benchmark's choice) ...
    short = TrainConfig(epochs=2, batch_size=200, device="cpu", seed=1, dp_max_grad_norm=1.0, dp_noise_multiplier=1.0,
                        dp_seed=5)
    twins = [MultiTaskNet(spec, seed=0) for _ in range(2)]
    for twin in twins:
        train_epochs(twin, train, short)
    for p, q in zip(*(t.parameters() for t in twins), strict=True):
        assert torch.equal(p, q)
    # ... but never from the run config's seed, which the server knows: by default (a site) two runs
    # with the same seed draw different batches and noise, so nobody can regenerate and subtract it.
    fresh = TrainConfig(epochs=1, batch_size=200, device="cpu", seed=1, dp_max_grad_norm=1.0, dp_noise_multiplier=1.0)
    assert fresh.dp_seed is None
    runs = [MultiTaskNet(spec, seed=0) for _ in range(2)]
    for run in runs:
        train_epochs(run, train, fresh)
    assert not torch.equal(runs[0].trunk.input.bag.weight, runs[1].trunk.input.bag.weight)


def test_without_dp_the_result_reports_no_dp():
    data = _count_data(n=20)
    result = train_epochs(MultiTaskNet(data.spec, seed=0), data, TrainConfig(epochs=1, device="cpu"))
    assert result.dp_steps == 0 and result.dp_sample_rate == 0.0


def test_fedprox_term_is_added_after_clipping_and_frozen_parameters_are_skipped():
    data = _count_data(n=10, seed=6)
    net = MultiTaskNet(data.spec, seed=7)
    net.trunk.input.bag.weight.requires_grad_(False)
    frozen = net.trunk.input.bag.weight.detach().clone()
    reference = {k: torch.zeros_like(v) for k, v in net.state_dict().items() if k.startswith("heads.")}
    head_w = net.heads["consortium_classification"].linear.weight
    before = head_w.detach().clone()
    config = TrainConfig(epochs=1, batch_size=10, lr=1.0, optimizer="sgd", momentum=0.0, device="cpu",
                         dp_max_grad_norm=1e-9, proximal_mu=0.5)
    train_epochs(net, data, config, prox_reference=reference)
    assert torch.equal(net.trunk.input.bag.weight, frozen)
    # Data gradients clipped to ~0: the step is the proximal pull towards the reference (0) alone.
    torch.testing.assert_close(head_w.detach(), before * 0.5, rtol=1e-5, atol=1e-8)


def test_unsupported_layers_and_settings_are_refused():
    data = _count_data(n=10)
    net = MultiTaskNet(data.spec, seed=0)
    net.extra = nn.LayerNorm(6)  # a trainable module whose norm rule we do not have
    with pytest.raises(ConfigError, match="LayerNorm"):
        GhostClipper(net)
    net.extra.requires_grad_(False)  # frozen: skipped
    GhostClipper(net)
    with pytest.raises(ConfigError, match="grad_clip"):
        TrainConfig(dp_max_grad_norm=1.0, grad_clip=5.0)
    with pytest.raises(ConfigError, match="dp_max_grad_norm"):
        TrainConfig(dp_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="> 0"):
        TrainConfig(dp_max_grad_norm=0.0)
    with pytest.raises(ConfigError, match=">= 0"):
        TrainConfig(dp_max_grad_norm=1.0, dp_noise_multiplier=-0.1)


def test_dp_turns_mixed_precision_off_on_cuda(caplog):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: mixed precision is CUDA-only (run on the device machine)")
    data = _count_data(n=20)
    net = MultiTaskNet(data.spec, seed=0)
    with caplog.at_level(logging.WARNING):
        train_epochs(net, data, TrainConfig(epochs=1, batch_size=5, device="cuda", amp="on",
                                            dp_max_grad_norm=1.0, dp_noise_multiplier=1.0))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.parameters())
