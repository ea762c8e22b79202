"""Padding trajectory records into the learner's tensors (`pad_batch`). Pure torch, no Ray.

Token alignment of `pad_batch` ("predictor alignment"): a causal LM's logits at position t
predict the token at position t+1. Every per-token (B, T) tensor that the loss consumes
(`old_logprobs`, `response_mask`, and the learner's `loss.token_logprobs(logits, input_ids)`)
is indexed by the PREDICTING position: column t describes token `input_ids[:, t+1]`. The last
column (T-1) predicts nothing and is always 0 in both `response_mask` and `old_logprobs`.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa
import torch

from himac_ray.data import Record
from himac_ray.names import LEVELS

LEVEL_IDS = {"plan": 0, "act": 1}
"""integer id of each level in `pad_batch(...)["level_ids"]`"""


def _columns(records_or_table: pa.Table | Sequence[Record]) -> dict[str, list]:
    names = ("level", "prompt_ids", "response_ids", "logprobs", "advantage")
    if isinstance(records_or_table, pa.Table):
        return {n: records_or_table.column(n).to_pylist() for n in names}
    return {n: [getattr(r, n) for r in records_or_table] for n in names}


def pad_batch(
    records_or_table: pa.Table | Sequence[Record],
    *,
    pad_token_id: int,
    levels: Sequence[str] = LEVELS,
    max_len: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response sequences into learner tensors (predictor alignment).

    Row b holds `prompt_ids + response_ids` of record b, left-aligned, then `pad_token_id`.
    Response token j of record b sits at position p = P_b + j (P_b = kept prompt length), and
    its sampling logprob / mask entry sits at column p - 1, the position whose logits predict it.
    Every record keeps its row; records whose level is not in `levels` get an all-zero
    `response_mask` (filter them out beforehand to save compute).

    Truncation: with `max_len` set, a sequence longer than `max_len` loses prompt tokens from
    the LEFT (the oldest context) until it fits. Response tokens are never dropped; a response
    of `max_len` tokens or more raises ValueError (at least one prompt token must remain to
    predict the first response token). T is the longest (truncated) row, so T <= max_len.

    Args:
        records_or_table: B records, or an Arrow table with `RECORD_SCHEMA` columns.
        pad_token_id: id written into padding positions of `input_ids`.
        levels: levels whose response tokens are trained (`response_mask` = 1).
        max_len: longest sequence kept, or None for no limit.

    Returns:
        dict with
            input_ids:      (B, T) int64, prompt + response, right-padded.
            attention_mask: (B, T) int64, 1 on real (prompt or response) tokens.
            response_mask:  (B, T) float32, [b, t] = 1 iff input_ids[b, t+1] is a response token
                            of a record whose level is in `levels`.
            old_logprobs:   (B, T) float32, [b, t] = sampling logprob of input_ids[b, t+1] where
                            that is a response token (any level), else 0.
            advantages:     (B,) float32, `Record.advantage`.
            level_ids:      (B,) int64, `LEVEL_IDS[level]` (plan 0, act 1).
    """
    cols = _columns(records_or_table)
    n = len(cols["level"])
    if n == 0:
        raise ValueError("pad_batch needs at least one record")
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown levels {sorted(unknown)}; expected a subset of {LEVELS}")

    rows = []
    for prompt, response in zip(cols["prompt_ids"], cols["response_ids"]):
        if max_len is not None and len(prompt) + len(response) > max_len:
            if len(response) >= max_len:
                raise ValueError(
                    f"response of {len(response)} tokens does not fit max_len={max_len} "
                    "with at least one prompt token"
                )
            # left-truncate: keep the most recent max_len - len(response) prompt tokens
            prompt = prompt[len(prompt) + len(response) - max_len :]
        rows.append((prompt, response))
    T = max(len(p) + len(r) for p, r in rows)

    input_ids = torch.full((n, T), pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((n, T), dtype=torch.int64)
    response_mask = torch.zeros((n, T), dtype=torch.float32)
    old_logprobs = torch.zeros((n, T), dtype=torch.float32)
    for b, (prompt, response) in enumerate(rows):
        P, R = len(prompt), len(response)
        input_ids[b, : P + R] = torch.tensor(list(prompt) + list(response), dtype=torch.int64)
        attention_mask[b, : P + R] = 1
        if R == 0:
            continue
        # response token j is at position P + j and is predicted by position P + j - 1;
        # with an empty prompt the first response token has no predictor and is skipped
        start = max(P - 1, 0)
        skip = start - (P - 1)
        old_logprobs[b, start : P + R - 1] = torch.tensor(
            cols["logprobs"][b][skip:], dtype=torch.float32
        )
        if cols["level"][b] in levels:
            response_mask[b, start : P + R - 1] = 1.0

    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "old_logprobs": old_logprobs,
        "advantages": torch.tensor(cols["advantage"], dtype=torch.float32),
        "level_ids": torch.tensor([LEVEL_IDS[lv] for lv in cols["level"]], dtype=torch.int64),
    }
