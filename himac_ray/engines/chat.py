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

