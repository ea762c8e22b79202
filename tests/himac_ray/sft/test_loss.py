"""The shared SFT loss: shifted next-token cross-entropy on the trained positions only."""

import math

import torch

from himac_ray.sft.loss import IGNORE_INDEX, response_loss_sum


def test_only_positions_predicting_a_label_count_and_the_head_sees_only_them():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3, requires_grad=True)  # (B, T, H)
    head = torch.nn.Linear(3, 5, bias=False)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 4],
                           [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]])  # position t predicted at t - 1
    seen = []
    loss_sum, count = response_loss_sum(hidden, labels, lambda h: seen.append(h.shape) or head(h))
    assert count == 3 and seen == [torch.Size([3, 3])]
    want = 0.0
    for b, t in ((0, 2), (0, 3), (1, 1)):
        logprobs = torch.log_softmax(head(hidden[b, t - 1]), -1)
        want -= logprobs[labels[b, t]].item()
    assert math.isclose(loss_sum.item(), want, rel_tol=1e-6)


def test_token_mean_is_the_mean_negative_logprob():
    """The vision trainer's earlier formula (log_softmax, gather, mean): the same value and gradient
    up to float32 rounding (the sum runs in another order)."""
    torch.manual_seed(1)
    hidden = torch.randn(3, 17, 8, requires_grad=True)
    head = torch.nn.Linear(8, 40, bias=False)
    labels = torch.randint(0, 40, (3, 17))
    labels[:, :5] = IGNORE_INDEX
    loss_sum, count = response_loss_sum(hidden, labels, head)
    new = loss_sum / count
    (g_new,) = torch.autograd.grad(new, hidden)
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    old = -torch.log_softmax(head(hidden[:, :-1][keep]).float(), -1).gather(-1, targets[keep][:, None]).mean()
    (g_old,) = torch.autograd.grad(old, hidden)
    assert math.isclose(new.item(), old.item(), rel_tol=1e-6)
    assert torch.allclose(g_new, g_old, rtol=1e-5, atol=1e-8)
