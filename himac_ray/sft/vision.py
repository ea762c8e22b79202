"""Supervised fine-tuning of the local VLM on expert demonstrations (single process, plain
PyTorch): `train_vlm_sft` (loss on the assistant tokens only: `sft.loss`, as the text trainer) and
`action_choice_accuracy` (teacher-forced choice of the expert's action). No Ray.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from himac_ray.engines.vision_chat import chat_images, processor_inputs, render_vlm_chat
from himac_ray.models.store import save_model_atomic
from himac_ray.models.vision import FAKE_IMAGE_TOKEN, load_vlm
from himac_ray.sft.loss import IGNORE_INDEX, response_loss_sum

ACTION_WORDS = ("up", "down", "left", "right")
_DECISION_MARKER = "The best next action toward the current subgoal is "
"""the expert's think text names the action right after this (see `sft.expert_think`)"""


def encode_example(processor, example: dict, *, max_len: int = 2048) -> dict:
    """Tokenize one chat example `{"messages": [..., {"role": "assistant", "content": target}]}`.

    Returns `input_ids` (prompt with expanded image tokens + target + `<|im_end|>`), `labels`
    (IGNORE_INDEX on the prompt), `pixel_values` / `pixel_attention_mask` (or None without images) and
    `prompt_len`. Prompts longer than `max_len` minus the target are cut from the left, as the
    learner does; cutting into the image tokens raises ValueError.
    """
    import torch

    chat = example["messages"][:-1]
    target = example["messages"][-1]["content"]
    inputs = processor_inputs(processor, render_vlm_chat(processor, chat), chat_images(chat))
    prompt = inputs["input_ids"][0].tolist()
    tok = processor.tokenizer
    answer = tok.encode(target + tok.eos_token, add_special_tokens=False)
    keep = max_len - len(answer)
    if len(prompt) > keep:
        image_id = tok.convert_tokens_to_ids(FAKE_IMAGE_TOKEN)
        cut = len(prompt) - keep
        if image_id in prompt[:cut]:
            raise ValueError(f"example of {len(prompt) + len(answer)} tokens cannot be cut to max_len={max_len} without losing its image")
        prompt = prompt[cut:]
    ids = prompt + answer
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor([IGNORE_INDEX] * len(prompt) + answer, dtype=torch.long),
        "pixel_values": inputs.get("pixel_values"),
        "pixel_attention_mask": inputs.get("pixel_attention_mask"),
        "prompt_len": len(prompt),
        "target": target,
    }


def _collate(items: Sequence[dict], pad_id: int) -> dict:
    import torch

    n = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for row, it in enumerate(items):
        k = len(it["input_ids"])
        ids[row, :k] = it["input_ids"]
        labels[row, :k] = it["labels"]
        mask[row, :k] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with_images = [it for it in items if it["pixel_values"] is not None]
    if with_images:
        if len(with_images) != len(items):
            raise ValueError("a batch mixes examples with and without images")
        batch["pixel_values"] = torch.cat([it["pixel_values"] for it in items], 0)
        batch["pixel_attention_mask"] = torch.cat([it["pixel_attention_mask"] for it in items], 0)
    return batch


def _batch_loss(model, batch: dict):
    """Token-mean cross-entropy of the assistant tokens (the `labels` != IGNORE_INDEX)."""
    out = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch.get("pixel_values"),
        pixel_attention_mask=batch.get("pixel_attention_mask"),
    )
    loss_sum, count = response_loss_sum(out.last_hidden_state, batch["labels"], model.lm_head)
    return loss_sum / count


def train_vlm_sft(
    model_path: str | Path,
    examples: Sequence[dict],
    *,
    out_path: str | Path | None = None,
    epochs: float = 1.0,
    lr: float = 3e-4,
    vision_lr: float | None = None,
    batch_size: int = 8,
    max_len: int = 2048,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    warmup_steps: int = 10,
    train_text_model: bool = True,
    freeze_embeddings: bool = False,
    bf16_autocast: bool = False,
    seed: int = 0,
    max_seconds: float | None = None,
    max_cpu_seconds: float | None = None,
    num_threads: int | None = None,
    log_every: int = 10,
    log_fn: Callable[[str], None] | None = print,
    callback: Callable[[int, Any], None] | None = None,
    callback_every: int = 0,
) -> dict:
    """Supervised fine-tuning of a local VLM on chat examples (e.g. `sft.expert_demonstrations`).

    Single process, AdamW, constant learning rate after `warmup_steps` of linear warm-up, loss on the
    assistant tokens only (`sft.loss`), examples shuffled each epoch (seeded).

    Args:
        model_path: VLM folder (`build_local_vlm` / `resolve_vlm`).
        examples: `{"messages": [system, user, assistant]}` dicts; image parts hold arrays.
        out_path: where to save the tuned model with its processor (atomically); None = don't.
        epochs: passes over `examples` (fractions allowed).
        lr: AdamW learning rate; `vision_lr` (None = `lr`) for the vision encoder and connector,
            which start from random weights.
        train_text_model: False freezes the language model (only the vision encoder and
            connector learn; gradients still flow through the language model).
        freeze_embeddings: keep the (tied) token embeddings fixed: saves their gradient and
            optimizer work (the tiny model's 49k x 128 table dominates its cost).
        bf16_autocast: run forward/backward under CPU bfloat16 autocast (weights stay float32).
        max_seconds: stop early after this much wall time (checked between steps).
        max_cpu_seconds: stop early after this much CPU time of this process (training only:
            the callback's time is not counted), for budgets on a shared machine.
        num_threads: torch intra-op threads for the loop (None = leave as is). On a loaded
            machine 1 thread can be many times faster than 2.
        callback: `callback(step, model)` every `callback_every` optimizer steps (model in
            train mode; switch to eval and back inside if needed), e.g. held-out evaluation.

    Returns:
        `{"model", "processor", "path", "steps", "examples_seen", "seconds", "first_loss",
        "last_loss", "losses"}` (`losses` per step; `first_loss` / `last_loss` average the
        first / last 10 steps).
    """
    import torch

    if num_threads:
        torch.set_num_threads(int(num_threads))
    model, processor = load_vlm(model_path)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    encoded = [encode_example(processor, ex, max_len=max_len) for ex in examples]
    for name, param in model.named_parameters():
        text_part = name.startswith("model.text_model") or name.startswith("lm_head")
        param.requires_grad = (train_text_model or not text_part) and not (freeze_embeddings and "embed_tokens" in name)
    params = [p for p in model.parameters() if p.requires_grad]
    vision = [p for n, p in model.named_parameters() if p.requires_grad and (n.startswith("model.vision_model") or n.startswith("model.connector"))]
    ids = {id(p) for p in vision}
    groups = [{"params": [p for p in params if id(p) not in ids], "lr": lr}, {"params": vision, "lr": vision_lr or lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)
    total_steps = max(1, math.ceil(len(encoded) * epochs / batch_size))
    warmup = max(1, int(warmup_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    pad_id = processor.tokenizer.pad_token_id
    order: list[int] = []
    losses: list[float] = []
    seen = 0
    start = time.perf_counter()
    cpu = 0.0
    model.train()
    for step in range(total_steps):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        if max_cpu_seconds is not None and cpu > max_cpu_seconds:
            break
        cpu_start = time.process_time()
        while len(order) < batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order.extend(fresh)
        chunk, order = order[:batch_size], order[batch_size:]
        batch = _collate([encoded[i] for i in chunk], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
            loss = _batch_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        seen += len(chunk)
        cpu += time.process_time() - cpu_start
        if log_fn and (step % log_every == 0 or step == total_steps - 1):
            log_fn(f"[vlm-sft] step {step + 1}/{total_steps} loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f}s)")
        if callback is not None and callback_every and (step + 1) % callback_every == 0:
            callback(step + 1, model)
            model.train()
    model.eval()
    path = None
    if out_path is not None:
        path = save_model_atomic(model, processor, out_path)
    return {
        "model": model,
        "processor": processor,
        "path": path,
        "steps": len(losses),
        "examples_seen": seen,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu,
        "first_loss": sum(losses[:10]) / max(1, len(losses[:10])),
        "last_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "losses": losses,
    }


def expert_action(example: dict) -> str:
    """The action the expert took in an "act" example (from its `<action>` tag)."""
    from himac_ray.parsers import parse_action

    action, _, _ = parse_action(example["messages"][-1]["content"], ACTION_WORDS, env_id="sokoban")
    return action


def action_choice_accuracy(
    model, processor, examples: Sequence[dict], *, image_fn: Callable[[int, Any], Any] | None = None
) -> dict:
    """Teacher-forced accuracy at choosing the expert's action among up / down / left / right.

    For each "act" example the target is fed up to the point where the expert's reasoning names
    the action (`"The best next action toward the current subgoal is "`, or `<action>` when that phrase is
    absent) and the model's most likely of the four action words there is compared to the
    expert's. `image_fn(i, image) -> image` can replace the images (e.g. with another room's, a
    control showing the answer depends on the picture).

    Returns `{"accuracy", "n", "predictions": [...], "counts": {action: n predicted}}`.
    """
    import torch

    tok = processor.tokenizer
    correct = 0
    predictions = []
    acts = [ex for ex in examples if ex.get("level", "act") == "act"]
    for i, ex in enumerate(acts):
        chat = ex["messages"][:-1]
        if image_fn is not None:
            chat = replace_images(chat, lambda im, i=i: image_fn(i, im))
        target = ex["messages"][-1]["content"]
        cut = target.find(_DECISION_MARKER)
        prefix = target[: cut + len(_DECISION_MARKER)] if cut >= 0 else target[: target.find("<action>") + len("<action>")]
        prompt = render_vlm_chat(processor, chat) + prefix.rstrip(" ")
        inputs = processor_inputs(processor, prompt, chat_images(chat))
        with torch.no_grad():
            hidden = model.model(**inputs).last_hidden_state[0, -1]
            logits = model.lm_head(hidden).float()
        lead = " " if prefix.endswith(" ") else ""  # BPE: the word carries the space before it
        ids = [tok.encode(lead + w, add_special_tokens=False)[0] for w in ACTION_WORDS]
        pred = ACTION_WORDS[int(torch.argmax(logits[ids]))]
        predictions.append(pred)
        correct += pred == expert_action(ex)
    counts = {a: predictions.count(a) for a in ACTION_WORDS}
    return {"accuracy": correct / max(1, len(acts)), "n": len(acts), "predictions": predictions, "counts": counts}


def replace_images(chat, fn):
    out = []
    for message in chat:
        content = message["content"]
        if not isinstance(content, str):
            content = [dict(part, image=fn(part["image"])) if part.get("type") == "image" else part for part in content]
        out.append({**message, "content": content})
    return out
