"""The local vision-language model for visual Sokoban: an Idefics3 (SmolVLM-style) model.

Nothing here downloads weights. `build_local_vlm` puts a small random (seeded) SigLIP-style
vision encoder and a pixel-shuffle connector in front of a local language model (the embedded
SmolLM2-135M-Instruct, or the tiny random Llama for tests) and saves the result, with its
processor and chat template, as an `Idefics3ForConditionalGeneration` folder that vLLM (CPU, no
torchvision needed) and transformers both load. `resolve_vlm("vlm-embedded" | "vlm-tiny[:SEED]")`
maps config names to such folders.

Design (the numbers are the defaults; Sokoban's 6x6 rooms render at 96x96 pixels):

- Vision encoder: `image_size`=96, `patch_size`=16 (one patch per 16-px Sokoban tile), 2 layers,
  width 128, 2 heads (head size 64, which vLLM's CPU kernels support). Connector: pixel shuffle
  with `scale_factor`=1 (none) then a linear map to the text width, so an image is
  (96/16)^2 = 36 `<image>` tokens, one per tile, between `<fake_token_around_image><global-img>`
  and `<fake_token_around_image>`. (With `scale_factor`=2, 9 tokens of 2x2 tiles each, 600
  CPU-seconds of SFT did not teach the tiny-text VLM to read box coordinates; with one token
  per tile the same budget did: benchmarks/RESULTS.md.)
- Image processor: `Idefics3ImageProcessor` (the PIL backend here) with
  `do_image_splitting=False`, every image resized to `image_size` x `image_size` with
  nearest-neighbour resampling (exact for Sokoban's integer `scale`s of 16-px tiles).
- Tokenizer: the text model's, plus the special tokens `<fake_token_around_image>`, `<image>`,
  `<end_of_utterance>` and `<global-img>` (new embedding rows: the mean of the old ones). The
  chat template is the text model's ChatML template, extended so message content may be a list
  of parts (`{"type": "text", "text"}` / `{"type": "image"}` -> `<image>`); text-only chats
  render exactly as with the text model.

`train_vlm_sft` is a single-process PyTorch SFT loop (loss on the assistant tokens only) and
`action_accuracy` measures how often greedy answers name the expert's action; together they
show the randomly initialised vision path learns to read the board. No Ray here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from himac_ray.models import (
    ModelUnavailableError,
    build_tiny_llama,
    cache_dir,
    is_prepared,
    prepare_embedded_model,
    save_model_atomic,
)

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE_TOKEN = "<end_of_utterance>"
VLM_SPECIAL_TOKENS = (FAKE_IMAGE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE_TOKEN, GLOBAL_IMAGE_TOKEN)
TEXT_MODELS = ("embedded", "tiny")
VLM_NAMES = ("vlm-embedded", "vlm-tiny")
DEFAULT_SCALE_FACTOR = 1

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML (the SmolLM2 template) with list-of-parts content; an image part renders as `<image>`"""


# --------------------------------------------------------------------------------------------
# Building and resolving the model
# --------------------------------------------------------------------------------------------
def default_vlm_path(
    text_model: str = "embedded",
    seed: int = 0,
    image_size: int = 96,
    text_init_range: float | None = None,
    scale_factor: int = DEFAULT_SCALE_FACTOR,
) -> Path:
    """Where `build_local_vlm` puts a model by default:
    `<cache>/vlm-<text_model>-seed<seed>-img<size>-sf<scale_factor>[-init<std>]`."""
    suffix = f"-sf{scale_factor}" + (f"-init{text_init_range:g}" if text_init_range is not None else "")
    return cache_dir() / f"vlm-{text_model}-seed{seed}-img{image_size}{suffix}"


def build_local_vlm(
    path: str | Path | None = None,
    *,
    text_model: str = "embedded",
    seed: int = 0,
    image_size: int = 96,
    patch_size: int = 16,
    scale_factor: int = DEFAULT_SCALE_FACTOR,
    vision_hidden_size: int = 128,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_intermediate_size: int = 256,
    text_init_range: float | None = None,
    force: bool = False,
) -> Path:
    """Build (once) an Idefics3 VLM around a local language model; returns its folder.

    Args:
        path: output folder; default `default_vlm_path(text_model, seed, image_size)` in `cache_dir()`.
        text_model: "embedded" (SmolLM2-135M-Instruct, converted once by
            `models.prepare_embedded_model`) or "tiny" (`models.build_tiny_llama(seed=seed)`).
        seed: seeds the random vision encoder and connector (same arguments -> same weights).
        image_size: side every image is resized to (96 = a 6x6 Sokoban room at scale 1).
        patch_size, scale_factor: vision patch side and pixel-shuffle factor; `image_size` must
            be a multiple of `patch_size * scale_factor`. Image tokens per image:
            (image_size / patch_size)^2 / scale_factor^2.
        vision_hidden_size, vision_layers, vision_heads, vision_intermediate_size: vision
            encoder shape.
        text_init_range: only with text_model="tiny": redraw the tiny Llama's weights (seeded)
            with this std instead of its 0.2. The wide 0.2 init keeps greedy outputs varied (good
            for engine tests) but makes attention peaky, which slows learning; 0.02 (the usual
            init) learns to use the image much sooner. The default path gets a `-init<std>` suffix.
        force: rebuild even when the folder is complete.

    The folder is written to a temporary sibling and published atomically (`models.save_model_atomic`).
    """
    if text_model not in TEXT_MODELS:
        raise ValueError(f"text_model must be one of {TEXT_MODELS}, got {text_model!r}")
    if image_size % (patch_size * scale_factor):
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size*scale_factor={patch_size * scale_factor}")
    if text_init_range is not None and text_model != "tiny":
        raise ValueError("text_init_range applies to text_model='tiny' only (the embedded model is pretrained)")
    dest = Path(path) if path is not None else default_vlm_path(text_model, seed, image_size, text_init_range, scale_factor)
    if is_prepared(dest) and not force:
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    text_path = prepare_embedded_model(quiet=True) if text_model == "embedded" else build_tiny_llama(seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(text_path)
    tokenizer.add_special_tokens({"additional_special_tokens": list(VLM_SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    lm = AutoModelForCausalLM.from_pretrained(text_path, dtype=torch.float32)
    if text_init_range is not None:
        lm.config.initializer_range = float(text_init_range)
        torch.manual_seed(seed)
        lm = type(lm)(lm.config).to(torch.float32)
    old_vocab = lm.config.vocab_size
    new_vocab = len(tokenizer)
    text_config = lm.config.to_dict()
    text_config.update(vocab_size=new_vocab)
    for key in ("architectures", "transformers_version", "_name_or_path", "_model_name_or_path"):
        text_config.pop(key, None)
    tie = bool(lm.config.tie_word_embeddings)
    vision_config = Idefics3VisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = Idefics3Config(
        text_config=text_config,
        vision_config=vision_config.to_dict(),
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie,
    )
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.dtype = torch.float32

    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).to(torch.float32)
    # The language model: the local LM's weights, embeddings grown by the new tokens.
    state = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
    embed = state["embed_tokens.weight"]
    extra = embed.mean(0, keepdim=True).expand(new_vocab - old_vocab, -1)
    state["embed_tokens.weight"] = torch.cat([embed, extra], 0)
    missing, unexpected = model.model.text_model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"language-model weights do not fit: missing {missing}, unexpected {unexpected}")
    if tie:
        model.tie_weights()
    else:
        head = lm.lm_head.weight.detach()
        model.lm_head.weight.data = torch.cat([head, head.mean(0, keepdim=True).expand(new_vocab - old_vocab, -1)], 0)
    _scale_connector(model, embed, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    processor = make_processor(tokenizer, image_size=image_size, image_seq_len=image_seq_len(config))
    return save_model_atomic(model, processor, dest)


def _scale_connector(model, text_embeddings, seed: int) -> None:
    """Rescale the random connector so image embeddings have the norm of typical token embeddings."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cfg = model.config.vision_config
    pixels = torch.randn(1, 4, 3, cfg.image_size, cfg.image_size, generator=gen)
    with torch.no_grad():
        feats = model.model.get_image_features(pixels, return_dict=True).pooler_output
        target = text_embeddings.norm(dim=-1).median()
        current = feats.reshape(-1, feats.shape[-1]).norm(dim=-1).median()
        model.model.connector.modality_projection.proj.weight.mul_(float(target / current.clamp_min(1e-8)))


def image_seq_len(config) -> int:
    """`<image>` tokens per image for an Idefics3 config."""
    v = config.vision_config
    return int((v.image_size // v.patch_size) ** 2 // (config.scale_factor**2))


def make_processor(tokenizer, *, image_size: int, image_seq_len: int):
    """An `Idefics3Processor`: no image splitting, every image resized to image_size^2 (nearest)."""
    from transformers import Idefics3Processor
    from transformers.image_utils import PILImageResampling
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        resample=PILImageResampling.NEAREST,
        do_pad=True,
    )
    return Idefics3Processor(image_processor, tokenizer, image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE)


def is_vlm_name(name: str) -> bool:
    """Whether `name` is a local-VLM name `resolve_vlm` understands (`vlm-embedded`, `vlm-tiny[:SEED]`)."""
    base = str(name).split(":", 1)[0]
    return base in VLM_NAMES


def resolve_vlm(name: str) -> Path:
    """Map `vlm-embedded` / `vlm-tiny` (optionally `:SEED`, seeding the vision encoder) to a built folder.

    Raises `ModelUnavailableError` for other names (building needs the embedded model's package).
    """
    base, _, seed = str(name).partition(":")
    if base not in VLM_NAMES:
        raise ModelUnavailableError(f"{name!r} is not a local VLM name; use one of {list(VLM_NAMES)} (optionally ':SEED')")
    try:
        seed_value = int(seed) if seed else 0
    except ValueError:
        raise ModelUnavailableError(f"bad seed in {name!r}; expected e.g. vlm-tiny:3") from None
    return build_local_vlm(text_model=base.removeprefix("vlm-"), seed=seed_value)


def is_vision_model(path: str | Path) -> bool:
    """Whether the model folder holds a vision-language model (a config with a `vision_config`)."""
    import json

    config = Path(path) / "config.json"
    if not config.exists():
        return False
    return "vision_config" in json.loads(config.read_text())


# --------------------------------------------------------------------------------------------
# Rendering visual chats (shared by the vLLM / HF generators and the SFT loop)
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Supervised fine-tuning and action accuracy (single process, plain PyTorch)
# --------------------------------------------------------------------------------------------
ACTION_WORDS = ("up", "down", "left", "right")
_DECISION_MARKER = "The best next action toward the current subgoal is "
"""the expert's think text names the action right after this (see `sft.expert_think`)"""


def load_vlm(path: str | Path, *, dtype: str = "float32"):
    """`(model, processor)` of a VLM folder (transformers, eval mode, CPU)."""
    import torch
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model = Idefics3ForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    return model, processor


def encode_example(processor, example: dict, *, max_len: int = 2048) -> dict:
    """Tokenize one chat example `{"messages": [..., {"role": "assistant", "content": target}]}`.

    Returns `input_ids` (prompt with expanded image tokens + target + `<|im_end|>`), `labels`
    (-100 on the prompt), `pixel_values` / `pixel_attention_mask` (or None without images) and
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
        "labels": torch.tensor([-100] * len(prompt) + answer, dtype=torch.long),
        "pixel_values": inputs.get("pixel_values"),
        "pixel_attention_mask": inputs.get("pixel_attention_mask"),
        "prompt_len": len(prompt),
        "target": target,
    }


def _collate(items: Sequence[dict], pad_id: int) -> dict:
    import torch

    n = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
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


def _shifted_logprobs(model, batch: dict, positions=None):
    """Per-token logprobs of `labels` under the model; logits are computed only where labels != -100."""
    import torch

    out = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch.get("pixel_values"),
        pixel_attention_mask=batch.get("pixel_attention_mask"),
    )
    hidden = out.last_hidden_state[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[keep]).float()
    return torch.log_softmax(logits, -1), targets[keep], keep


def sft_loss(model, batch: dict):
    """Token-mean negative log-likelihood of the assistant tokens (the `labels` != -100)."""
    logprobs, targets, _ = _shifted_logprobs(model, batch)
    return -logprobs.gather(-1, targets[:, None]).mean()


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
    assistant tokens only (`sft_loss`), examples shuffled each epoch (seeded).

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
            loss = sft_loss(model, batch)
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
    from himac_ray.prompts import parse_action

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
            chat = _replace_images(chat, lambda im, i=i: image_fn(i, im))
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


def _replace_images(chat, fn):
    out = []
    for message in chat:
        content = message["content"]
        if not isinstance(content, str):
            content = [dict(part, image=fn(part["image"])) if part.get("type") == "image" else part for part in content]
        out.append({**message, "content": content})
    return out



def coordinate_reading_accuracy(
    model, processor, examples: Sequence[dict], *, image_fn: Callable[[int, Any], Any] | None = None
) -> dict:
    """Teacher-forced accuracy at reading the first `(row R, col C)` of each expert blueprint.

    Planner prompts of visual Sokoban hold no positions in their text, so the first box
    coordinates of the expert's plan can only come from the image: for each "plan" example the
    plan is fed up to each of the two numbers and the model's most likely digit (0-9) there is
    compared to the expert's. `image_fn` as in `action_choice_accuracy` (i counts plan
    examples). Returns `{"accuracy", "n"}` (n = numbers scored).
    """
    import re

    import torch

    tok = processor.tokenizer
    digits = [tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    correct = total = 0
    plans = [ex for ex in examples if ex.get("level") == "plan"]
    for i, ex in enumerate(plans):
        chat = ex["messages"][:-1]
        if image_fn is not None:
            chat = _replace_images(chat, lambda im, i=i: image_fn(i, im))
        target = ex["messages"][-1]["content"]
        m = re.search(r"\(row (\d), col (\d)\)", target)
        if not m:
            continue
        prompt_text = render_vlm_chat(processor, chat)
        for group in (1, 2):
            inputs = processor_inputs(processor, prompt_text + target[: m.start(group)], chat_images(chat))
            with torch.no_grad():
                logits = model.lm_head(model.model(**inputs).last_hidden_state[0, -1]).float()
            pred = int(torch.argmax(logits[digits]))
            correct += pred == int(m.group(group))
            total += 1
    return {"accuracy": correct / max(1, total), "n": total}


# --------------------------------------------------------------------------------------------
# The learning check: SFT on expert demonstrations, held-out accuracy before / after
# --------------------------------------------------------------------------------------------
def _shuffled_images(examples: Sequence[dict], seed: int = 0) -> Callable[[int, Any], Any]:
    """An `image_fn` giving example i the image of another (fixed random) example: the
    no-vision control (same text, someone else's board)."""
    images = [chat_images(ex["messages"][:-1])[0] for ex in examples]
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    return lambda i, image: images[order[i]]


def reading_metrics(model, processor, heldout: Sequence[dict]) -> dict:
    """Held-out teacher-forced metrics, each with a shuffled-image control.

    `act` / `act_shuffled`: `action_choice_accuracy` on the "act" examples with their own / a
    different room's image; `coord` / `coord_shuffled`: `coordinate_reading_accuracy` on the
    "plan" examples. The gap between a metric and its control is what the image contributes.
    """
    acts = [ex for ex in heldout if ex.get("level") == "act"]
    plans = [ex for ex in heldout if ex.get("level") == "plan"]
    model.eval()
    out = {}
    if acts:
        out["act"] = action_choice_accuracy(model, processor, acts)["accuracy"]
        out["act_shuffled"] = action_choice_accuracy(model, processor, acts, image_fn=_shuffled_images(acts))["accuracy"]
        out["act_n"] = len(acts)
    if plans:
        out["coord"] = coordinate_reading_accuracy(model, processor, plans)["accuracy"]
        out["coord_shuffled"] = coordinate_reading_accuracy(model, processor, plans, image_fn=_shuffled_images(plans))["accuracy"]
        out["coord_n"] = 2 * len(plans)
    return out


def sft_reading_experiment(
    *,
    text_model: str = "tiny",
    text_init_range: float | None = 0.02,
    scale_factor: int = DEFAULT_SCALE_FACTOR,
    env_id: str = "himac/SokobanVisual-v0",
    train_seeds: Sequence[int] = range(1000, 1600),
    heldout_seeds: Sequence[int] = range(0, 60),
    levels: Sequence[str] = ("plan", "act"),
    cpu_budget: float = 600.0,
    lr: float = 1e-3,
    vision_lr: float | None = None,
    batch_size: int = 8,
    freeze_embeddings: bool = False,
    seed: int = 0,
    out_path: str | Path | None = None,
    eval_every: int = 0,
    log_fn: Callable[[str], None] | None = print,
) -> dict:
    """Does SFT on the expert's demonstrations teach the VLM to read the board?

    Builds the VLM (`build_local_vlm(text_model=..., text_init_range=...)`), measures
    `reading_metrics` on the demonstrations of `heldout_seeds`, trains with `train_vlm_sft`
    (one torch thread, bf16 autocast) for `cpu_budget` CPU seconds on
    the `levels` examples of `train_seeds`, and measures again. Returns
    `{"before", "after", "curve", "train": {...}, "config": {...}}`.
    """
    import torch

    from himac_ray.sft import expert_demonstrations

    torch.set_num_threads(1)
    path = build_local_vlm(text_model=text_model, seed=seed, text_init_range=text_init_range, scale_factor=scale_factor)
    train = [ex for ex in expert_demonstrations(env_id, train_seeds) if ex["level"] in levels]
    heldout = expert_demonstrations(env_id, heldout_seeds)
    model, processor = load_vlm(path)
    before = reading_metrics(model, processor, heldout)
    if log_fn:
        log_fn(f"[vlm-sft] before: {before}")
    del model
    curve = []

    def evaluate(step, model):
        curve.append({"step": step, **reading_metrics(model, processor, heldout)})
        if log_fn:
            log_fn(f"[vlm-sft] step {step}: {curve[-1]}")

    res = train_vlm_sft(
        path, train, out_path=out_path, epochs=1e6, lr=lr, vision_lr=vision_lr, batch_size=batch_size,
        freeze_embeddings=freeze_embeddings, bf16_autocast=True, seed=seed, max_cpu_seconds=cpu_budget, log_fn=log_fn,
        log_every=100, callback=evaluate if eval_every else None, callback_every=eval_every,
    )
    after = reading_metrics(res["model"], res["processor"], heldout)
    if log_fn:
        log_fn(f"[vlm-sft] after: {after}")
    return {
        "before": before,
        "after": after,
        "curve": curve,
        "train": {k: res[k] for k in ("path", "steps", "examples_seen", "seconds", "cpu_seconds", "first_loss", "last_loss")},
        "config": {
            "model": str(path), "text_model": text_model, "text_init_range": text_init_range,
            "scale_factor": scale_factor, "levels": list(levels),
            "train_examples": len(train), "train_seeds": [min(train_seeds), max(train_seeds)],
            "heldout_seeds": [min(heldout_seeds), max(heldout_seeds)], "cpu_budget": cpu_budget, "lr": lr,
            "vision_lr": vision_lr, "batch_size": batch_size, "freeze_embeddings": freeze_embeddings,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m himac_ray.vlm build|experiment ...` (see --help)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m himac_ray.vlm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the local VLM and print its folder")
    b.add_argument("--text-model", choices=TEXT_MODELS, default="embedded")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true")
    e = sub.add_parser("experiment", help="SFT on expert demonstrations: held-out reading accuracy before/after (JSON)")
    e.add_argument("--text-model", choices=TEXT_MODELS, default="tiny")
    e.add_argument("--text-init-range", type=float, default=0.02)
    e.add_argument("--seed", type=int, default=0, help="seeds the model build and the SFT order")
    e.add_argument("--scale-factor", type=int, default=DEFAULT_SCALE_FACTOR,
                   help="pixel-shuffle factor: 2 = one image token per 2x2 tiles, 1 = one per tile")
    e.add_argument("--train-episodes", type=int, default=600)
    e.add_argument("--heldout-episodes", type=int, default=60)
    e.add_argument("--levels", default="plan,act")
    e.add_argument("--cpu-budget", type=float, default=600.0)
    e.add_argument("--lr", type=float, default=1e-3)
    e.add_argument("--vision-lr", type=float, default=None)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--eval-every", type=int, default=0)
    e.add_argument("--out", default=None, help="save the tuned model here")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        print(build_local_vlm(text_model=args.text_model, seed=args.seed, force=args.force))
        return 0
    result = sft_reading_experiment(
        text_model=args.text_model,
        text_init_range=args.text_init_range if args.text_model == "tiny" else None, scale_factor=args.scale_factor,
        train_seeds=range(1000, 1000 + args.train_episodes), heldout_seeds=range(0, args.heldout_episodes),
        levels=tuple(args.levels.split(",")), cpu_budget=args.cpu_budget, lr=args.lr, vision_lr=args.vision_lr,
        batch_size=args.batch_size, eval_every=args.eval_every, out_path=args.out, seed=args.seed,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
