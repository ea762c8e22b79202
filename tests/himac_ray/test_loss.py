"""Clipped PG loss: gradient sign, clipping, masking, KL, aggregation; logprob alignment."""

import math

import pytest
import torch

from himac_ray import metrics as M
from himac_ray.batch import pad_batch
from himac_ray.data import Record
from himac_ray.loss import (
    compute_policy_loss,
    token_entropy,
    token_logprobs,
)


def _leaf(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sgd_step_moves_sampled_token_logprob_with_advantage_sign(sign):
    torch.manual_seed(0)
    V = 5
    logits = torch.nn.Parameter(torch.randn(1, 3, V))
    input_ids = torch.tensor([[1, 3, 4]])
    mask = torch.tensor([[0.0, 1.0, 0.0]])  # train token input_ids[0, 2] = 4, predicted at t=1
    old = token_logprobs(logits, input_ids).detach()
    loss, _ = compute_policy_loss(logprobs=token_logprobs(logits, input_ids), old_logprobs=old,
                                  advantages=torch.tensor([sign]), response_mask=mask)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    after = token_logprobs(logits, input_ids).detach()
    assert sign * (after[0, 1] - old[0, 1]) > 0


def test_clipping_zero_grad_and_clipfrac():
    # four tokens: ratio 2 with A>0 (clipped), ratio 0.5 with A<0 (clipped),
    # ratio 1.1 with A>0 (inside the band), ratio 0.5 with A>0 (below band, not clipped)
    old = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    lp = _leaf([[math.log(2.0), math.log(1.1)], [math.log(0.5), math.log(0.5)]])
    adv_per_token = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    # one advantage per sequence: split the four tokens across four single-token rows
    lp4 = lp.reshape(4, 1)
    loss, m = compute_policy_loss(
        logprobs=lp4, old_logprobs=old.reshape(4, 1), advantages=adv_per_token.reshape(4),
        response_mask=torch.ones(4, 1), kl_coef=0.0,
    )
    loss.backward()
    g = lp.grad.reshape(4)
    assert g[0] == 0 and g[2] == 0  # clipped tokens give no gradient
    assert g[1] < 0 and g[3] < 0  # unclipped positive-advantage tokens push logprob up
    assert m[M.CLIPFRAC] == pytest.approx(0.5)
    # pg loss per token: -1.2, -1.1, 0.8 (= max(0.5, 0.8)), -0.5 -> mean -0.5
    assert m[M.PG_LOSS] == pytest.approx((-1.2 - 1.1 + 0.8 - 0.5) / 4)


def test_asymmetric_clip_high():
    lp = _leaf([[math.log(1.25)]])
    _, m = compute_policy_loss(logprobs=lp, old_logprobs=torch.zeros(1, 1),
                               advantages=torch.ones(1), response_mask=torch.ones(1, 1),
                               clip_coef=0.2, clip_coef_high=0.28)
    assert m[M.CLIPFRAC] == 0.0
    _, m = compute_policy_loss(logprobs=lp, old_logprobs=torch.zeros(1, 1),
                               advantages=torch.ones(1), response_mask=torch.ones(1, 1))
    assert m[M.CLIPFRAC] == 1.0


def test_masked_tokens_get_exactly_zero_gradient():
    lp = _leaf([[-1.0, -2.0, 50.0], [-0.5, -0.1, -0.3]])
    old = torch.tensor([[-1.2, -1.5, -float("inf")], [-0.4, float("nan"), -0.2]])
    ref = torch.tensor([[-1.1, -2.5, float("nan")], [-0.6, -90.0, -0.1]])
    ent = _leaf([[0.3, 0.2, float("inf")], [0.1, 0.5, 0.2]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    loss, metrics = compute_policy_loss(
        logprobs=lp, old_logprobs=old, advantages=torch.tensor([0.7, -1.3]), response_mask=mask,
        ref_logprobs=ref, kl_coef=0.1, entropy=ent, entropy_coef=0.01,
    )
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
    assert lp.grad[0, 2] == 0 and lp.grad[1, 1] == 0
    assert ent.grad[0, 2] == 0 and ent.grad[1, 1] == 0
    assert (lp.grad[mask > 0] != 0).all()


def test_no_trained_tokens_gives_zero_loss_and_grad():
    lp = _leaf([[-1.0, -2.0]])
    loss, m = compute_policy_loss(logprobs=lp, old_logprobs=torch.zeros(1, 2),
                                  advantages=torch.ones(1), response_mask=torch.zeros(1, 2),
                                  ref_logprobs=torch.zeros(1, 2))
    loss.backward()
    assert loss.item() == 0 and (lp.grad == 0).all() and set(m.values()) == {0.0}


def test_kl_zero_when_ref_equals_current_and_k3_value():
    lp = _leaf([[-1.0, -0.3]])
    args = dict(old_logprobs=lp.detach(), advantages=torch.zeros(1),
                response_mask=torch.ones(1, 2))
    loss, m = compute_policy_loss(logprobs=lp, ref_logprobs=lp.detach().clone(), **args)
    loss.backward()
    assert m[M.KL] == 0.0 and m[M.APPROX_KL] == 0.0 and loss.item() == 0.0
    assert (lp.grad == 0).all()  # zero advantage and KL at its minimum
    # ref = current + log(0.5): k3 = 0.5 - log(0.5) - 1 on both tokens
    ref = lp.detach() + math.log(0.5)
    loss, m = compute_policy_loss(logprobs=lp, ref_logprobs=ref, kl_coef=0.01, **args)
    k3 = 0.5 - math.log(0.5) - 1
    assert m[M.KL] == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.01 * k3)


def test_aggregations_hand_values():
    # sequence 0 has one trained token, sequence 1 three; ratio 1 so pg = -A per token
    lp = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 0, 0, 0], [1.0, 1.0, 1.0, 0]])
    adv = torch.tensor([4.0, -2.0])
    args = dict(logprobs=lp, old_logprobs=lp, advantages=adv, response_mask=mask)
    loss, _ = compute_policy_loss(**args, aggregation="token-mean")
    assert loss.item() == pytest.approx((-4 + 3 * 2) / 4)
    loss, _ = compute_policy_loss(**args, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-4 + 2) / 2)
    # a sequence with no trained token does not dilute the mean over sequences
    loss, _ = compute_policy_loss(logprobs=torch.zeros(3, 4), old_logprobs=torch.zeros(3, 4),
                                  advantages=torch.tensor([4.0, -2.0, 9.0]),
                                  response_mask=torch.cat([mask, torch.zeros(1, 4)]),
                                  aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="aggregation"):
        compute_policy_loss(**args, aggregation="sum")


def test_entropy_bonus_and_token_entropy():
    V = 4
    uniform = torch.zeros(1, 2, V)
    assert torch.allclose(token_entropy(uniform), torch.full((1, 2), math.log(V)))
    peaked = torch.tensor([[[0.0, -float("inf"), -float("inf"), -float("inf")]]])
    assert token_entropy(peaked).item() == 0.0
    lp = torch.zeros(1, 2)
    ent = token_entropy(uniform)
    loss, m = compute_policy_loss(logprobs=lp, old_logprobs=lp, advantages=torch.zeros(1),
                                  response_mask=torch.tensor([[1.0, 0.0]]), entropy=ent,
                                  entropy_coef=0.1)
    assert m[M.ENTROPY] == pytest.approx(math.log(V))
    assert loss.item() == pytest.approx(-0.1 * math.log(V))


def test_token_logprobs_alignment_with_pad_batch():
    torch.manual_seed(0)
    V = 16
    records = [
        Record(group_id="g", traj_id="a", level="plan", env_id="e", seed=0, step=-1,
               subgoal_index=-1, prompt_ids=[1, 2, 3], response_ids=[4, 5], logprobs=[0.0, 0.0]),
        Record(group_id="g", traj_id="a", level="act", env_id="e", seed=0, step=0,
               subgoal_index=0, prompt_ids=[6], response_ids=[7, 8, 9], logprobs=[0.0] * 3),
    ]
    b = pad_batch(records, pad_token_id=-1)  # pad id outside the vocab must not break gather
    logits = torch.randn(2, b["input_ids"].shape[1], V)
    lp = token_logprobs(logits, b["input_ids"])
    ref = torch.log_softmax(logits, dim=-1)
    for row, r in enumerate(records):
        P = len(r.prompt_ids)
        for j, tok in enumerate(r.response_ids):
            t = P + j - 1  # the position whose logits predict response token j
            assert b["response_mask"][row, t] == 1
            assert lp[row, t].item() == pytest.approx(ref[row, t, tok].item(), abs=1e-6)
    assert (lp[:, -1] == 0).all()
    # temperature divides the logits
    lp2 = token_logprobs(logits, b["input_ids"], temperature=2.0)
    assert lp2[1, 0].item() == pytest.approx(torch.log_softmax(logits[1, 0] / 2, -1)[7].item(),
                                             abs=1e-6)
    # sampling logprobs from the same logits -> ratio 1 everywhere: nothing clipped, approx_kl 0
    for row, r in enumerate(records):
        P = len(r.prompt_ids)
        r.logprobs = [ref[row, P + j - 1, tok].item() for j, tok in enumerate(r.response_ids)]
    b = pad_batch(records, pad_token_id=-1)
    _, m = compute_policy_loss(logprobs=lp, old_logprobs=b["old_logprobs"],
                               advantages=torch.ones(2), response_mask=b["response_mask"])
    assert m[M.CLIPFRAC] == 0.0 and abs(m[M.APPROX_KL]) < 1e-6


def test_truncated_is_weights_by_hand():
    from himac_ray.loss import truncated_is_weights

    old = [[math.log(0.5), math.log(0.2)], [math.log(0.9)]]
    behaviour = [[math.log(0.5), math.log(0.1)], [math.log(0.3)]]  # raw weights 1, 2, 3
    weights, m = truncated_is_weights(old_logprobs=old, behaviour_logprobs=behaviour, cap=2.5)
    assert [[round(w, 9) for w in ws] for ws in weights] == [[1.0, 2.0], [2.5]]
    assert m[M.IS_WEIGHT_MEAN] == pytest.approx(2.0) and m[M.IS_WEIGHT_MAX] == pytest.approx(3.0)
    assert m[M.IS_TRUNCATED] == pytest.approx(1 / 3)


def test_is_weights_scale_each_tokens_policy_gradient():
    torch.manual_seed(0)
    B, T = 3, 5
    logprobs = torch.randn(B, T, requires_grad=True)
    kw = dict(old_logprobs=torch.randn(B, T), advantages=torch.tensor([1.0, -0.5, 2.0]),
              response_mask=torch.ones(B, T), clip_coef=0.2, kl_coef=0.0)
    base, _ = compute_policy_loss(logprobs=logprobs, **kw)
    same, _ = compute_policy_loss(logprobs=logprobs, is_weights=torch.ones(B, T), **kw)
    assert same.item() == pytest.approx(base.item(), abs=1e-7)
    w = torch.rand(B, T) * 2
    weighted, _ = compute_policy_loss(logprobs=logprobs, is_weights=w, **kw)
    (g_base,) = torch.autograd.grad(base, logprobs)
    (g_w,) = torch.autograd.grad(weighted, logprobs)
    assert torch.allclose(g_w, g_base * w, atol=1e-6)
