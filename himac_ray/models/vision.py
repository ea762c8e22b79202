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
  and `<fake_token_around_image>`. One token per tile, not per 2x2 tiles (`scale_factor`=2):
  SFT teaches the VLM to read box coordinates far sooner that way (benchmarks/RESULTS.md).
- Image processor: `Idefics3ImageProcessor` (the PIL backend here) with
  `do_image_splitting=False`, every image resized to `image_size` x `image_size` with
  nearest-neighbour resampling (exact for Sokoban's integer `scale`s of 16-px tiles).
- Tokenizer: the text model's, plus the special tokens `<fake_token_around_image>`, `<image>`,
  `<end_of_utterance>` and `<global-img>` (new embedding rows: the mean of the old ones). The
  chat template is the text model's ChatML template, extended so message content may be a list
  of parts (`{"type": "text", "text"}` / `{"type": "image"}` -> `<image>`); text-only chats
  render exactly as with the text model.

Visual chats are rendered for the engines by `himac_ray.engines.vision_chat`; the VLM's SFT loop
is `himac_ray.sft.vision`. No Ray here.
"""

from __future__ import annotations

from pathlib import Path

from himac_ray.models.store import ModelUnavailableError, cache_dir, is_prepared, save_model_atomic
from himac_ray.models.text import build_tiny_llama, prepare_embedded_model

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


def load_vlm(path: str | Path, *, dtype: str = "float32"):
    """`(model, processor)` of a VLM folder (transformers, eval mode, CPU)."""
    import torch
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model = Idefics3ForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    return model, processor
