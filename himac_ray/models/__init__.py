"""Local models, by name: `resolve_model` maps a config's `model.path` to a folder on disk.

`store` (cache directory, atomic folder publish), `text` (the embedded SmolLM2 and the tiny random
Llama) and `vision` (the local VLM) build them; nothing here downloads weights. The names below are
re-exported so callers import `himac_ray.models` only. No Ray.
"""

from __future__ import annotations

from pathlib import Path

from himac_ray.models.store import ModelUnavailableError, cache_dir, is_prepared, save_model_atomic
from himac_ray.models.text import EMBEDDED_MODEL_NAME, build_tiny_llama, find_embedded_gguf, prepare_embedded_model
from himac_ray.models.vision import is_vision_model, is_vlm_name, resolve_vlm

__all__ = [
    "EMBEDDED_MODEL_NAME", "ModelUnavailableError", "build_tiny_llama", "cache_dir", "find_embedded_gguf",
    "is_prepared", "is_vision_model", "prepare_embedded_model", "resolve_model", "save_model_atomic",
    "trainable_parameters",
]


def resolve_model(name_or_path: str) -> Path:
    """Map a config's `model.path` to a local folder.

    `embedded` -> the converted SmolLM2-135M-Instruct; `tiny` / `tiny:SEED` -> the tiny random
    Llama; `vlm-embedded` / `vlm-tiny[:SEED]` -> the local vision-language models
    (`models.vision.resolve_vlm`); anything else must be an existing local folder (no hub downloads).
    """
    if is_vlm_name(name_or_path):
        return resolve_vlm(name_or_path)
    if name_or_path == "embedded":
        return prepare_embedded_model()
    if name_or_path == "tiny" or name_or_path.startswith("tiny:"):
        seed = int(name_or_path.split(":", 1)[1]) if ":" in name_or_path else 0
        return build_tiny_llama(seed=seed)
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise ModelUnavailableError(
            f"model {name_or_path!r} is neither 'embedded', 'tiny[:SEED]' nor a local folder with config.json; "
            "himac-ray never downloads weights: put the model folder on disk and pass its path"
        )
    return path


def trainable_parameters(model, train_layers: int | None) -> list:
    """The parameters to train. With `train_layers` = N, freeze everything but the decoder's top N
    blocks (all of them when it has fewer) and its final norm (embeddings, a tied head and any vision
    tower stay fixed): backward then stops N blocks down, which makes a step several times cheaper on CPU."""
    if train_layers is None:
        return [p for p in model.parameters() if p.requires_grad]
    decoder = model.get_decoder()
    blocks = getattr(decoder, "layers", None)
    if blocks is None or train_layers < 0:
        raise ValueError(f"train_layers={train_layers} needs a decoder with `.layers` blocks and N >= 0")
    model.requires_grad_(False)
    for block in list(blocks)[max(0, len(blocks) - train_layers) :]:
        block.requires_grad_(True)
    if getattr(decoder, "norm", None) is not None:
        decoder.norm.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]
