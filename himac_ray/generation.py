"""The `Generator` interface shared by every text-generation backend.

A generator takes a batch of chat prompts (lists of `{"role", "content"}` messages) and sampling
parameters and returns, per prompt, `n` samples with their text, token ids and per-token
logprobs. Backends: `himac_ray.engines.vllm_engine.VLLMGenerator` (fast path),
`himac_ray.engines.hf_engine.HFGenerator` (reference / naive baseline), and `ScriptedGenerator`
below (a Python policy, for tests and expert demonstrations). No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
Chat = Sequence[Message]


@dataclass(frozen=True)
class SamplingParams:
    """What to sample; mirrors the common subset of vLLM's and HF's sampling options."""

    n: int = 1
    """samples per prompt"""
    temperature: float = 1.0
    """0 means greedy"""
    top_p: float = 1.0
    """nucleus sampling mass"""
    max_tokens: int = 256
    """new tokens per sample at most"""
    stop: tuple[str, ...] = ()
    """strings that end a sample (kept in the text, as vLLM's `include_stop_str_in_output`)"""
    seed: int | None = None
    """seed for this call; backends derive per-sample seeds from it deterministically"""
    token_bias: tuple[tuple[str, str, float], ...] = ()
    """(after, marker, log_odds) triples: the token that starts `marker` when it directly follows
    `after` (as the tokenizer splits `after + marker`; see `engines.chat.marker_token`) gets `log_odds`
    added to its logit wherever it is sampled. Greedy executors use it to say `<sub_done>` above a
    probability threshold (`rollout.sub_done_threshold`)"""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "token_bias", tuple(tuple(b) for b in self.token_bias))


@dataclass
class Sample:
    """One generated response."""

    text: str
    token_ids: list[int]
    """response token ids (what the learner trains on)"""
    logprobs: list[float]
    """sampling logprob of each response token, same length as `token_ids`"""
    prompt_token_ids: list[int] = field(default_factory=list)
    """the rendered prompt's token ids (chat template applied)"""
    finish_reason: str = "stop"
    """"stop" (EOS or a stop string) or "length" (hit max_tokens)"""
    weights_version: int = 0
    """version of the weights that generated it (a vLLM engine's `weights_version`; 0 elsewhere)"""


def text_of(content) -> str:
    """The text of a message's content: a string, or the text parts of a list of content parts.

    Visual prompts use a list of parts: {"type": "text", "text": ...} and {"type": "image",
    "image": HxWx3 uint8 array}.
    """
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class Generator(Protocol):
    """Anything that turns chat prompts into samples."""

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[Sample]]:
        """Returns `len(prompts)` lists of `params.n` samples each, in prompt order."""
        ...


class ScriptedGenerator:
    """A `Generator` driven by a Python function `policy(chat, sample_index) -> str`.

    Token ids are the UTF-8 bytes of the prompt / response (or a tokenizer's ids when one is
    given) and logprobs are 0.0, so scripted rollouts produce well-formed training records.
    """

    def __init__(self, policy: Callable[[Chat, int], str], tokenizer=None):
        self.policy = policy
        self.tokenizer = tokenizer

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(text.encode("utf-8"))

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[Sample]]:
        out = []
        for chat in prompts:
            prompt_ids = self._encode("".join(text_of(m["content"]) for m in chat))
            samples = []
            for i in range(params.n):
                text = self.policy(chat, i)
                ids = self._encode(text)
                samples.append(Sample(text, ids, [0.0] * len(ids), prompt_ids, "stop"))
            out.append(samples)
        return out
