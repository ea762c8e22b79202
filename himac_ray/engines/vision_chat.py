"""Rendering visual chats for the local VLM: a chat's images, its prompt text with one `<image>`
per image part, and the processor inputs (pixels + expanded image tokens) the HF generator, the
learner and the SFT loop feed the model. No Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from himac_ray.models.vision import CHAT_TEMPLATE


def chat_images(chat) -> list:
    """The images of a chat's content parts, in order (as uint8 HxWx3 numpy arrays or PIL images)."""
    images = []
    for message in chat:
        content = message["content"]
        if not isinstance(content, str):
            images.extend(part["image"] for part in content if part.get("type") == "image")
    return images


def render_vlm_chat(tokenizer_or_processor, chat, *, add_generation_prompt: bool = True) -> str:
    """The chat rendered with the VLM's chat template; each image part becomes one `<image>`.

    Image data is stripped before rendering (the template only needs the part's type).
    """
    messages = []
    for message in chat:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                {"type": "image"} if part.get("type") == "image" else {"type": "text", "text": part.get("text", "")}
                for part in content
                if part.get("type") in ("image", "text")
            ]
        messages.append({"role": message["role"], "content": content})
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    return tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=CHAT_TEMPLATE
    )


def to_pil(image):
    """A PIL RGB image from a uint8 HxWx3 array (or a PIL image)."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def processor_inputs(processor, text: str | list[int], images: Sequence[Any]) -> dict:
    """Model inputs (`input_ids`, `attention_mask`, `pixel_values`, `pixel_attention_mask`; torch, batch 1).

    `text` is a rendered prompt (one `<image>` per image, expanded here) or token ids that
    already hold the expanded image tokens (e.g. `Sample.prompt_token_ids` from vLLM).
    """
    import torch

    pil = [to_pil(im) for im in images]
    if isinstance(text, str):
        enc = processor(
            text=[text], images=[pil] if pil else None, add_special_tokens=False, return_tensors="pt"
        )
        return dict(enc)
    ids = torch.tensor([list(text)], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if pil:
        img = processor.image_processor(images=[pil], return_tensors="pt")
        out["pixel_values"] = img["pixel_values"]
        out["pixel_attention_mask"] = img["pixel_attention_mask"]
    return out
