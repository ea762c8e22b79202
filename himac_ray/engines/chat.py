"""Rendering chat prompts to token ids with a model's chat template (shared by all backends)."""

from __future__ import annotations

from typing import Sequence

from himac_ray.generation import Chat, text_of


def render_chat(tokenizer, chat: Chat) -> list[int]:
    """Token ids of `chat` rendered with the tokenizer's chat template plus the assistant prefix.

    Image content parts ({"type": "image", ...}) are reduced to their text parts here; the
    multimodal path renders them through the model's processor instead.
    """
    messages = [{"role": m["role"], "content": text_of(m["content"])} for m in chat]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def render_chats(tokenizer, chats: Sequence[Chat]) -> list[list[int]]:
    return [render_chat(tokenizer, chat) for chat in chats]


def marker_token(tokenizer, after: str, marker: str) -> int:
    """The token id that decides whether `marker` follows `after`: the first token where the
    tokenizations of `after` and `after + marker` differ (BPE may merge the two, e.g. SmolLM2 splits
    `</action><sub_done>` as `</`, `action`, `><`, ... against `</`, `action`, `>`)."""
    alone = tokenizer.encode(after, add_special_tokens=False)
    joined = tokenizer.encode(after + marker, add_special_tokens=False)
    i = next((i for i, (a, b) in enumerate(zip(alone, joined)) if a != b), len(alone))
    if i >= len(joined):
        raise ValueError(f"{marker!r} adds no token after {after!r}")
    return joined[i]


def token_bias_ids(tokenizer, token_bias) -> dict[int, float]:
    """`SamplingParams.token_bias` as {token id: log-odds} for this tokenizer."""
    out: dict[int, float] = {}
    for after, marker, log_odds in token_bias:
        tid = marker_token(tokenizer, after, marker)
        out[tid] = out.get(tid, 0.0) + float(log_odds)
    return out
