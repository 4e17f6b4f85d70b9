import math

import torch

from fedmol.models.losses import censored_mse, masked_bce


def test_masked_bce_ignores_missing_labels():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    part = masked_bce(logits, labels, mask)
    garbage = labels.clone()
    garbage[0, 1] = 123.0  # whatever sits under a missing label must not matter
    assert torch.equal(masked_bce(logits, garbage, mask).total, part.total)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(2.0)) + math.log(2.0))
    assert part.count.item() == 3
    assert abs(part.total.item() - expected) < 1e-5
    assert abs(part.mean().item() - expected / 3) < 1e-6


def test_masked_bce_task_weights():
    logits = torch.zeros(3, 2)
    labels = torch.ones(3, 2)
    mask = torch.ones(3, 2, dtype=torch.bool)
    part = masked_bce(logits, labels, mask, torch.tensor([1.0, 0.0]))
    assert abs(part.total.item() - 3 * math.log(2.0)) < 1e-5


def test_censored_mse_hand_made_cases():
    target = torch.tensor([[5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    pred = torch.tensor([[6.0, 4.0, 6.0, 4.0, 6.0, 4.0]])
    censor = torch.tensor([[0, 0, 1, 1, -1, -1]], dtype=torch.int8)
    mask = torch.ones_like(target, dtype=torch.bool)
    per = [censored_mse(pred[:, i : i + 1], target[:, i : i + 1], mask[:, i : i + 1],
                        censor[:, i : i + 1]).total.item() for i in range(6)]
    # exact: both sides; '>' 5: only a prediction below 5 costs; '<' 5: only one above 5 costs
    assert per == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    masked = censored_mse(pred, target, torch.zeros_like(mask), censor)
    assert masked.total.item() == 0.0 and masked.count.item() == 0.0


def test_censored_mse_gradient_zero_on_satisfied_side():
    pred = torch.tensor([[7.0]], requires_grad=True)
    censored_mse(pred, torch.tensor([[5.0]]), torch.tensor([[True]]), torch.tensor([[1]])).total.backward()
    assert pred.grad.item() == 0.0
