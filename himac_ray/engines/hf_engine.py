"""Hugging Face transformers backend: the reference implementation and the naive baseline.

Generates one sample at a time with `model.generate` (batch 1), the loop most agent code starts
from; logprobs are the raw (temperature-1) log-softmax of the model's logits, like vLLM's
default `raw_logprobs` mode.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from himac_ray.engines.chat import render_chats, token_bias_ids
from himac_ray.generation import Chat, Sample, SamplingParams


def generate_kwargs(tokenizer, params: SamplingParams) -> dict:
    """`transformers` `generate` options for `params` (raw logits kept for the logprobs; the
    `token_bias` as a sequence bias of one token, so the recorded logprobs stay unbiased)."""
    eos = tokenizer.eos_token_id
    kwargs = dict(max_new_tokens=params.max_tokens, do_sample=params.temperature > 0, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    if params.temperature > 0:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    if params.token_bias:
        kwargs.update(sequence_bias={(t,): b for t, b in token_bias_ids(tokenizer, params.token_bias).items()})
    return kwargs


class HFGenerator:
    """A `Generator` over a transformers causal LM (CPU by default)."""

    def __init__(self, model_path: str | Path, *, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        self.model.eval()
        self.device = device
        self.stats = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "busy_seconds": 0.0}

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[Sample]]:
        torch = self.torch
        results = []
        start = time.perf_counter()
        for p_index, ids in enumerate(render_chats(self.tokenizer, prompts)):
            input_ids = torch.tensor([ids], device=self.device)
            samples = []
            for i in range(params.n):
                if params.seed is not None:
                    torch.manual_seed(params.seed + 1000003 * p_index + i)
                samples.append(self._sample_one(input_ids, params))
            results.append(samples)
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += len(ids)
        self.stats["busy_seconds"] += time.perf_counter() - start
        return results

    def _sample_one(self, input_ids, params: SamplingParams) -> Sample:
        torch = self.torch
        kwargs = generate_kwargs(self.tokenizer, params)
        with torch.no_grad():
            out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        token_ids = out.sequences[0, input_ids.shape[1]:].tolist()
        logits = torch.stack(out.logits, dim=1)[0].float()  # (T, V), raw logits
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(token_ids)[:, None])[:, 0]
        ended = bool(token_ids) and token_ids[-1] == self.tokenizer.eos_token_id
        finish = "length" if len(token_ids) >= params.max_tokens and not ended else "stop"
        text = self.tokenizer.decode(token_ids[:-1] if ended else token_ids)
        self.stats["generated_tokens"] += len(token_ids)
        return Sample(text, token_ids, logprobs.tolist(), input_ids[0].tolist(), finish)

    def score(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """Raw logprobs of `response_ids` after `prompt_ids` under this model (teacher forcing)."""
        torch = self.torch
        ids = torch.tensor([prompt_ids + response_ids], device=self.device)
        with torch.no_grad():
            logits = self.model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids):, None])[:, 0].tolist()
