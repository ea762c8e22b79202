"""Clipped policy-gradient loss with a KL penalty, plus per-token logprob / entropy helpers.

Pure torch, no Ray. Every per-token (B, T) tensor uses the predictor alignment of
`himac_ray.batch.pad_batch`: column t describes token `input_ids[:, t+1]` (the logits at
position t predict it) and the last column is never trained. Formulas: docs/algorithm.md.
"""

from __future__ import annotations

import torch

from himac_ray import metrics as M

AGGREGATIONS = ("token-mean", "seq-mean-token-mean")
KL_CLAMP = 10.0
"""per-token k3 values are clamped to at most this (as verl's `low_var_kl`)"""


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where (not x * mask): masked entries give exactly zero gradient even if x is inf/NaN
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _aggregate(x: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """(B, T) per-token values -> scalar, over tokens where mask is True."""
    x = _masked(x, mask)
    if aggregation == "token-mean":
        return x.sum() / mask.sum().clamp(min=1)
    if aggregation == "seq-mean-token-mean":
        n_tok = mask.sum(-1)
        seq_mean = x.sum(-1) / n_tok.clamp(min=1)
        # sequences without trained tokens do not count in the mean over sequences
        return seq_mean.sum() / (n_tok > 0).sum().clamp(min=1)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def compute_policy_loss(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    clip_coef: float = 0.2,
    clip_coef_high: float | None = None,
    kl_coef: float = 0.01,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    aggregation: str = "token-mean",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate + kl_coef * KL(pi || pi_ref) - entropy_coef * entropy.

    Per trained token: ratio = exp(logprobs - old_logprobs),
    pg = max(-A * ratio, -A * clip(ratio, 1 - clip_coef, 1 + clip_coef_high)),
    kl = k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's low-variance, non-negative
    estimator of KL(pi || pi_ref); clamped to <= KL_CLAMP), then `aggregation` over tokens.
    With `is_weights` (truncated importance sampling, `truncated_is_weights`) each token's pg term
    is multiplied by its weight min(pi_old / pi_behaviour, cap): `old_logprobs` is then the learner's
    recomputed old policy and the weight corrects for the sampler's (behaviour) policy.

    Args:
        logprobs: (B, T) current-policy logprobs (with grad), from `token_logprobs`.
        old_logprobs: (B, T) logprobs of the sampling policy (`pad_batch`'s `old_logprobs`).
        advantages: (B,) one advantage per sequence, broadcast over its tokens.
        response_mask: (B, T) 1 on trained tokens; other tokens get exactly zero gradient.
        ref_logprobs: (B, T) reference-policy logprobs, or None for no KL term.
        clip_coef: lower clip range epsilon (ratio >= 1 - clip_coef).
        clip_coef_high: upper clip range (ratio <= 1 + clip_coef_high); None = clip_coef.
        kl_coef: beta, weight of the KL penalty in the loss.
        entropy: (B, T) per-token entropy (from `token_entropy`), or None.
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        aggregation: "token-mean" (mean over all trained tokens in the batch) or
            "seq-mean-token-mean" (mean over tokens per sequence, then over sequences).
        is_weights: (B, T) truncated importance weights (no grad), or None for none.

    Returns:
        loss: scalar tensor.
        metrics: floats under M.PG_LOSS, M.KL (both with `aggregation`), M.ENTROPY,
            M.CLIPFRAC (fraction of trained tokens whose clipped branch was taken, i.e. with
            zero policy gradient) and M.APPROX_KL (k3 estimate of KL(pi_old || pi)); the
            last three are token means. All 0 when no token is trained.
    """
    if clip_coef_high is None:
        clip_coef_high = clip_coef
    mask = response_mask > 0
    zero = torch.zeros_like(logprobs)
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)  # (B, 1)

    # ratio only on trained tokens: padding logprobs may be arbitrary and must not reach exp
    logratio = _masked(logprobs - old_logprobs, mask)
    ratio = torch.exp(logratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef_high)
    pg_tok = torch.maximum(pg_unclipped, pg_clipped)
    if is_weights is not None:
        pg_tok = pg_tok * is_weights.to(pg_tok.dtype).detach()

    kl_tok = zero
    if ref_logprobs is not None:
        # k3: with d = log(pi_ref / pi), KL(pi || pi_ref) ~ e^d - d - 1 >= 0, low variance
        d = _masked(ref_logprobs - logprobs, mask).clamp(-20.0, 20.0)
        kl_tok = (torch.exp(d) - d - 1.0).clamp(max=KL_CLAMP)
    ent_tok = zero if entropy is None else _masked(entropy, mask)

    pg_loss = _aggregate(pg_tok, mask, aggregation)
    kl = _aggregate(kl_tok, mask, aggregation)
    ent = _aggregate(ent_tok, mask, aggregation)
    loss = pg_loss
    if ref_logprobs is not None and kl_coef != 0.0:
        loss = loss + kl_coef * kl
    if entropy is not None and entropy_coef != 0.0:
        loss = loss - entropy_coef * ent

    with torch.no_grad():
        clipped = (pg_clipped > pg_unclipped).to(logprobs.dtype)
        approx_kl = (ratio - 1.0) - logratio  # CleanRL's k3 estimate of KL(old || new)
        metrics = {
            M.PG_LOSS: pg_loss.item(),
            M.KL: kl.item(),
            M.ENTROPY: _aggregate(ent_tok, mask, "token-mean").item(),
            M.CLIPFRAC: _aggregate(clipped, mask, "token-mean").item(),
            M.APPROX_KL: _aggregate(approx_kl, mask, "token-mean").item(),
        }
    return loss, metrics


def truncated_is_weights(
    *, old_logprobs: list[list[float]], behaviour_logprobs: list[list[float]], cap: float,
) -> tuple[list[list[float]], dict[str, float]]:
    """Truncated importance sampling weights (TIS, as verl's `tis_imp_ratio_cap`), per response token.

    w = min(pi_old / pi_behaviour, cap) = min(exp(old - behaviour), cap): pi_behaviour is the
    sampler that generated the token (its sampling logprob: stale weights in async mode, another
    engine's numerics in both modes), pi_old the learner's recomputation with the weights it is about
    to update. Truncation bounds the variance a large ratio would add.

    Args:
        old_logprobs: per record, one float per response token (the learner's recomputation).
        behaviour_logprobs: per record, the sampler's logprobs of the same tokens.
        cap: upper bound of a weight (>= 1).

    Returns:
        weights: per record, one float per response token.
        metrics: M.IS_WEIGHT_MEAN, M.IS_WEIGHT_MAX (of the weights before truncation) and
            M.IS_TRUNCATED (fraction of tokens whose weight exceeded `cap`); all 0 without tokens.
    """
    lengths = [len(lp) for lp in old_logprobs]
    old = torch.tensor([x for lp in old_logprobs for x in lp], dtype=torch.float64)
    behaviour = torch.tensor([x for lp in behaviour_logprobs for x in lp], dtype=torch.float64)
    raw = torch.exp((old - behaviour).clamp(max=20.0))  # exp(20) ~ 5e8: far above any cap, never inf
    truncated = raw.clamp(max=cap)
    metrics = {M.IS_WEIGHT_MEAN: 0.0, M.IS_WEIGHT_MAX: 0.0, M.IS_TRUNCATED: 0.0}
    if raw.numel():
        metrics = {M.IS_WEIGHT_MEAN: raw.mean().item(), M.IS_WEIGHT_MAX: raw.max().item(),
                   M.IS_TRUNCATED: (raw > cap).double().mean().item()}
    return [part.tolist() for part in torch.split(truncated, lengths)], metrics


def token_logprobs(
    logits: torch.Tensor,  # (B, T, V)
    input_ids: torch.Tensor,  # (B, T)
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Logprob of the NEXT token at each position (predictor alignment).

    out[b, t] = log_softmax(logits[b, t] / temperature)[input_ids[b, t+1]].

    Same alignment as `pad_batch`; the last column is 0. Computed as
    gather(logits) - logsumexp(logits) in float32, which equals log_softmax + gather but
    keeps no (B, T, V) log-prob tensor for backward. Pass the sampler's temperature so the result is
    comparable with the sampling logprobs. Target ids outside [0, V) (e.g. a pad id of -1)
    are clamped; such positions are padding and must be masked by the caller.

    Returns:
        (B, T) float32.
    """
    B, T, V = logits.shape
    logits = logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].clamp(0, V - 1).unsqueeze(-1)
    picked = logits.gather(-1, targets).squeeze(-1).float()
    out = picked - torch.logsumexp(logits.float(), dim=-1)
    return torch.cat([out, out.new_zeros(B, 1)], dim=1)


def token_entropy(
    logits: torch.Tensor,  # (B, T, V)
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: H[b, t] of softmax(logits[b, t]).

    Column t is the distribution that predicts token t+1 (same alignment as `token_logprobs`).

    Returns:
        (B, T) float32.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    # clamp so that a -inf logit (p = 0) contributes 0 * finite instead of NaN
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)
