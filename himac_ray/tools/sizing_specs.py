"""GPU sizing, the inputs: GPU and model specs, prompt lengths and the assumptions, each with
its source. Used by `sizing_workload`, `sizing_model` (the cost model) and `sizing` (reports and
CLI). No Ray, no torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

GB = 1e9


# ---------------------------------------------------------------------------------------------
# Hardware figures
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPUSpec:
    """One GPU type: datasheet peaks plus achievable link bandwidths (bytes/s, FLOP/s)."""

    name: str
    bf16_flops: float
    """dense BF16 tensor-core peak"""
    hbm_bw: float
    """HBM bandwidth"""
    memory_gb: float
    nvlink_bw: float
    """achievable NCCL bus bandwidth inside one node (NVLink/NVSwitch)"""
    ib_bw: float
    """achievable NCCL bandwidth between nodes, one NIC per GPU"""
    pcie_bw: float
    """achievable device<->host copy bandwidth for pageable tensors (`.cpu()`, `.cuda()`)"""
    source: str


GPUS = {
    "A100-80GB": GPUSpec(
        "A100-80GB", bf16_flops=312e12, hbm_bw=2.039e12, memory_gb=80, nvlink_bw=225e9, ib_bw=21e9, pcie_bw=12e9,
        source=(
            "NVIDIA A100 datasheet (SXM4 80GB: 312 TFLOPS BF16 dense, 2,039 GB/s HBM2e, NVLink 600 GB/s "
            "total = 300 GB/s per direction); DGX A100: one 200 Gb/s HDR InfiniBand NIC per GPU. NCCL "
            "bandwidths = 75% of NVLink per direction and 85% of the NIC (assumption); PCIe 4.0 x16 "
            "pageable copies ~12 GB/s (assumption)"
        ),
    ),
    "H100-80GB": GPUSpec(
        "H100-80GB", bf16_flops=989e12, hbm_bw=3.35e12, memory_gb=80, nvlink_bw=340e9, ib_bw=42e9, pcie_bw=20e9,
        source=(
            "NVIDIA H100 datasheet (SXM5 80GB: 989 TFLOPS BF16 dense, 3.35 TB/s HBM3, NVLink 900 GB/s "
            "total = 450 GB/s per direction); DGX H100: one 400 Gb/s NDR InfiniBand NIC per GPU. NCCL "
            "bandwidths = 75% of NVLink per direction and 85% of the NIC (assumption); PCIe 5.0 x16 "
            "pageable copies ~20 GB/s (assumption)"
        ),
    ),
}
DEFAULT_GPU = "H100-80GB"


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers the estimate needs (decoder-only transformer)."""

    name: str
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    source: str = ""

    @property
    def matmul_params(self) -> float:
        """Weights that take part in matmuls per token (the embedding lookup does not; a tied
        embedding still serves as the LM head)."""
        return self.params - (0 if self.tied else self.vocab * self.hidden)

    def weight_bytes(self, dtype_bytes: int = 2) -> float:
        return self.params * dtype_bytes

    def kv_bytes_per_token_per_gpu(self, tp: int, dtype_bytes: int = 2) -> float:
        """KV bytes one GPU of a TP group holds per token (KV heads are replicated when tp > kv_heads)."""
        return 2 * self.layers * math.ceil(self.kv_heads / tp) * self.head_dim * dtype_bytes

    def fwd_flops_per_token(self, context: float) -> float:
        """2N for the matmuls + causal attention (QK^T and AV over `context` tokens)."""
        return 2 * self.matmul_params + 4 * self.layers * context * self.heads * self.head_dim


_QWEN_SRC = "Qwen2.5 model cards / config.json (parameters, layers, heads, KV heads, hidden size)"
MODELS = {
    "qwen2.5-0.5b": ModelSpec("Qwen2.5-0.5B", 0.49e9, 24, 896, 14, 2, 64, 151936, True, _QWEN_SRC),
    "qwen2.5-1.5b": ModelSpec("Qwen2.5-1.5B", 1.54e9, 28, 1536, 12, 2, 128, 151936, True, _QWEN_SRC),
    "qwen2.5-3b": ModelSpec("Qwen2.5-3B", 3.09e9, 36, 2048, 16, 2, 128, 151936, True, _QWEN_SRC),
    "qwen2.5-7b": ModelSpec("Qwen2.5-7B", 7.61e9, 28, 3584, 28, 4, 128, 152064, False, _QWEN_SRC),
    "qwen2.5-14b": ModelSpec("Qwen2.5-14B", 14.7e9, 48, 5120, 40, 8, 128, 152064, False, _QWEN_SRC),
    "qwen2.5-32b": ModelSpec("Qwen2.5-32B", 32.5e9, 64, 5120, 40, 8, 128, 152064, False, _QWEN_SRC),
    "smollm2-135m": ModelSpec("SmolLM2-135M", 0.135e9, 30, 576, 9, 3, 64, 49152, True,
                              "SmolLM2-135M-Instruct config.json (the embedded model)"),
}
_MODEL_RE = re.compile(r"(qwen2[.-]?5)(?:-vl)?-(\d+(?:\.\d+)?)b", re.IGNORECASE)


class SizingError(ValueError):
    """The sizing model cannot be applied (unknown model, no GPUs, ...); the message says why."""


def model_spec(name_or_path: str) -> ModelSpec:
    """The `ModelSpec` for a config's `model.path`.

    Known names (`Qwen/Qwen2.5-7B-Instruct`, `/models/Qwen2.5-1.5B-Instruct`, `embedded`) map to
    `MODELS`; otherwise a local folder's `config.json` (Llama/Qwen2 keys) is read.
    """
    text = str(name_or_path)
    if text == "embedded":
        return MODELS["smollm2-135m"]
    key = text.lower().replace("_", "-")
    m = _MODEL_RE.search(key)
    if m:
        size = m.group(2)
        spec = MODELS.get(f"qwen2.5-{size}b")
        if spec is not None:
            return spec
    if "smollm2-135m" in key:
        return MODELS["smollm2-135m"]
    cfg_path = Path(text).expanduser() / "config.json"
    if cfg_path.exists():
        return spec_from_hf_config(json.loads(cfg_path.read_text()), name=Path(text).name)
    raise SizingError(
        f"unknown model {text!r}: use a name containing one of {sorted(MODELS)} or a local folder with "
        "config.json (or pass --model qwen2.5-7b)"
    )


def spec_from_hf_config(c: dict, *, name: str = "model") -> ModelSpec:
    """A `ModelSpec` from a Hugging Face Llama/Qwen2-style config.json (parameters counted from shapes)."""
    h, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads", heads))
    hd = int(c.get("head_dim") or h // heads)
    inter, vocab = int(c["intermediate_size"]), int(c["vocab_size"])
    tied = bool(c.get("tie_word_embeddings", False))
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter + 2 * h
    params = layers * per_layer + vocab * h * (1 if tied else 2) + h
    return ModelSpec(name, float(params), layers, h, heads, kv, hd, vocab, tied, "local config.json")


# ---------------------------------------------------------------------------------------------
# Prompt lengths
# ---------------------------------------------------------------------------------------------
PROMPT_TOKENS = {
    # env kind: (planner prompt, executor prompt, flat prompt) mean tokens incl. the chat template
    "sokoban": (457, 641, 505),
    "sokoban_visual": (457, 641, 505),
    "alfworld": (405, 679, 582),
    "webshop": (329, 1019, 910),
    "generic": (457, 1019, 910),
}
PROMPT_TOKENS_SOURCE = (
    "measured with `measure_prompt_tokens` on the built-in envs (6 seeds, expert trajectories, K=4, "
    "history 2) with the SmolLM2 tokenizer (49k vocabulary; Qwen2.5's 152k vocabulary gives somewhat "
    "fewer tokens, so these are on the safe side). Re-measure with your tokenizer: "
    "`himac-ray plan --config F --measure-prompts`"
)


def measure_prompt_tokens(
    env_id: str, tokenizer, *, env_kwargs: dict | None = None, episodes: int = 6, max_subgoals: int = 4,
    history_length: int = 2,
) -> tuple[int, int, int]:
    """Mean (planner, executor, flat) prompt tokens along expert trajectories of a built-in env.

    `tokenizer` is a Hugging Face tokenizer with a chat template. Takes about a second.
    """
    import gymnasium as gym

    import himac_ray.envs  # noqa: F401  (registers the envs)
    from himac_ray import prompts

    def count(messages) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer.encode(text, add_special_tokens=False))

    plan, act, flat = [], [], []
    for seed in range(episodes):
        env = gym.make(env_id, **(env_kwargs or {}))
        obs, info = env.reset(seed=seed)
        obs_text = obs if isinstance(obs, str) else str(obs.get("text", ""))
        task = info["task"]
        subgoals = list(env.unwrapped.expert_subgoals())[:max_subgoals] or [task]
        plan.append(count(prompts.planner_prompt(env_id, task=task, observation=obs_text, max_subgoals=max_subgoals)))
        history: list[tuple[str, str]] = []
        for i, action in enumerate(env.unwrapped.expert_actions()):
            k = min(i * len(subgoals) // max(env.unwrapped.max_steps, 1), len(subgoals) - 1)
            act.append(count(prompts.executor_prompt(
                env_id, task=task, subgoals=subgoals, subgoal_index=k, history=history, observation=obs_text,
                admissible_actions=info["admissible_actions"], steps_in_subgoal=len(history),
                history_length=history_length,
            )))
            flat.append(count(prompts.flat_prompt(
                env_id, task=task, history=history, observation=obs_text,
                admissible_actions=info["admissible_actions"], steps_taken=i, history_length=history_length,
            )))
            obs, _, terminated, truncated, info = env.step(action)
            history.append((obs_text, action))
            obs_text = obs if isinstance(obs, str) else str(obs.get("text", ""))
            if terminated or truncated:
                break
        env.close()
    mean = lambda xs: round(sum(xs) / max(len(xs), 1))  # noqa: E731
    return mean(plan), mean(act), mean(flat)


# ---------------------------------------------------------------------------------------------
# Assumptions and published figures
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assumptions:
    """Efficiencies and workload shape; change them with `--assume key=value`."""

    decode_bw_eff: float = 0.75
    """fraction of HBM bandwidth a decode step achieves (calibrated: 74-77% measured at batch 1, FIGURES)"""
    decode_mfu: float = 0.5
    """fraction of peak FLOP/s of a compute-bound decode step (assumption)"""
    prefill_mfu: float = 0.5
    """fraction of peak FLOP/s during prefill (assumption)"""
    train_mfu: float = 0.3
    """learner model-FLOPs utilisation, recompute not counted (assumption; verl logs it as perf/mfu/actor)"""
    prefix_hit: float = 0.25
    """fraction of prompt tokens served from vLLM's prefix cache (system message + task; assumption)"""
    response_fill: float = 0.4
    """mean response length / response cap (assumption; watch himac_response_length and adjust)"""
    mean_steps_fraction: float = 1.0
    """mean episode length / max_steps; 1.0 = every episode runs to the cap (worst case, early training)"""
    round_overhead_s: float = 0.05
    """per decision round: Ray calls, tokenisation, env steps, prompt building (assumption)"""
    tp_step_overhead_s: float = 2.5e-5
    """per layer per decode step with tensor parallelism (two all-reduces; assumption)"""
    sync_bucket_overhead_s: float = 0.005
    """per weight-sync bucket: RPC + vLLM load_weights call (assumption)"""
    objstore_bw: float = 1.2e9
    """Ray object-store transfer between two nodes, bytes/s (TCP; Ray issues #1325, #42632)"""
    shm_bw: float = 4e9
    """safetensors write/read through /dev/shm, bytes/s (assumption)"""
    memory_headroom_gb: float = 3.0
    """CUDA context, allocator fragmentation, NCCL buffers per process (assumption)"""
    sync_method: str = "auto"
    """auto = the fastest path the layout allows (CUDA IPC colocated, NCCL otherwise); or force one
    of SYNC_PATHS, e.g. shm (what actors/coordinator.py does today: one node only)"""
    grad_checkpointing: bool = False
    """learner recomputes activations (himac_ray/learner.py does not today): less memory, +1/3 compute"""
    executor_reuses_blueprints: bool = False
    """executor iterations reuse the last planner iteration's z* instead of a fresh macro pass"""
    gpus_per_node: int = 8
    """GPUs per node: layouts beyond one node sync and reduce over InfiniBand"""


FIGURES = [
    # (figure, value, source) -- shown in docs/scaling.md and by `--figures`
    ("A100-80GB SXM: BF16 dense peak / HBM bandwidth", "312 TFLOPS / 2.04 TB/s", "NVIDIA A100 datasheet"),
    ("H100-80GB SXM: BF16 dense peak / HBM bandwidth", "989 TFLOPS / 3.35 TB/s", "NVIDIA H100 datasheet"),
    ("NVLink per GPU, A100 / H100", "600 / 900 GB/s (both directions)", "NVIDIA A100 / H100 datasheets"),
    ("InfiniBand per GPU, DGX A100 / DGX H100", "200 / 400 Gb/s", "NVIDIA DGX A100 / DGX H100 datasheets"),
    ("vLLM decode, Llama-3.1-8B BF16, 1x H100-80GB, batch 1", "TPOT 6.48 ms (154 tok/s) = 74% of the HBM roofline",
     "InferenceBench concurrency-sweep recipe, vLLM 0.21 (yobitelcomm.github.io/bench)"),
    ("same, batch 16", "1,384 tok/s, TPOT 10.9 ms", "same source"),
    ("vLLM decode, Llama-3.1-8B BF16, 1x A100-40GB, batch 1", "75 tok/s = 77% of the HBM roofline",
     "johnmusgrave.com, 'vLLM throughput-latency sweep on NVIDIA A100' (vLLM 0.23)"),
    ("vLLM throughput, Llama-3.1-8B, 1x H100, saturated", "~12,500 output tok/s",
     "collected third-party benchmarks (morphllm.com/vllm-benchmarks)"),
    ("Ray object store, one large object between two nodes", "~50% of an 11 Gb/s link",
     "ray-project/ray#1325"),
    ("Ray object store, 10 nodes x 10 GbE -> head", "200-300 MB/s per node before fixes, 45 Gb/s total after",
     "ray-project/ray#42632"),
    ("share of RLHF wall time in generation", "~80%", "OpenRLHF README"),
    ("OpenRLHF GPU split advice (PPO)", "vLLM : actor : critic = 1 : 1 : 1", "OpenRLHF/OpenRLHF#562 (maintainer)"),
    ("verl-agent ALFWorld GiGPO example", "Qwen2.5-1.5B, 2 GPUs, colocated, vLLM TP 2, gpu_memory_utilization 0.6",
     "verl-agent examples/gigpo_trainer/run_alfworld.sh"),
]


