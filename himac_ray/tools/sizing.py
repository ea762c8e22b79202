"""GPU-cluster sizing model: tokens per iteration, sampler/learner split, weight sync, iteration time.

`himac-ray plan --config F [--gpus N] [--gpu H100-80GB]` prints, for one config, every sensible
way to lay the run out on N GPUs (colocated or split sampler/learner, engine tensor-parallel size),
the estimated rollout / learn / sync / iteration seconds, the GPU memory each side needs, and which
layout is fastest among those that fit. `python -m himac_ray.tools.sizing --paper` prints the table for
the paper's settings (docs/scaling.md embeds it; a test keeps the two equal).

The model is a roofline-style estimate, not a simulator. Every number it uses is in `GPUS`,
`MODELS`, `PROMPT_TOKENS` or `Assumptions`, each with its source (a datasheet, a published
measurement, or "assumption" when nobody publishes one). docs/scaling.md explains the formulas.

What one iteration costs (HiMAC, as `himac_ray.trainer` runs it):

- planner iteration: a macro rollout (one planner round: `num_groups` prompts sampled n=G, then up
  to `max_steps` executor rounds over the G x num_groups episodes, greedy), learn on the plan
  records, sync.
- executor iteration: a micro rollout, which first runs the same macro pass to pick each group's
  best blueprint z*, then G executions of z* per group; learn on the micro act records, sync.
- co-evolution off: one macro rollout, learn on plan + act records. Flat GRPO/GiGPO/RLOO: one flat
  rollout (max_steps rounds), learn on its act records.

Rollout round time on one engine holding b sequences of prompt length P (tokens), response cap C,
mean response length m:
    prefill  = prompts * P * (1 - prefix_hit) * flops_fwd(P) / (tp * peak * prefill_mfu)
    decode   = m * t_step(b) + (C - m) * t_step(1)          (the straggler tail: the batch call
                                                              ends with its longest response)
    t_step(b)= max((W/tp + b * ctx * kv_bytes/tp) / (hbm * decode_bw_eff),
                   b * flops_fwd(ctx) / (tp * peak * decode_mfu)) + tp_overhead
Learner: trained tokens * (6N + attention [+ 2N reference forward]) / (ranks * peak * train_mfu),
bounded below by ZeRO's per-micro-step collectives. Sync: bf16 weights over the layout's path.

Pure Python (no Ray, no torch); `measure_prompt_tokens` imports the envs, prompts and a tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from himac_ray.names import FLAT_ALGORITHMS

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


# ---------------------------------------------------------------------------------------------
# Workload
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What one run asks for, independent of the hardware."""

    env_kind: str
    algorithm: str = "himac"
    num_groups: int = 16
    group_size: int = 8
    max_steps: int = 50
    plan_prompt: int = 405
    act_prompt: int = 679
    flat_prompt: int = 582
    plan_cap: int = 512
    act_cap: int = 512
    max_len: int = 2560
    coevolution: bool = True
    planner_iters: int = 1
    executor_iters: int = 1
    kl: bool = True
    zero_stage: int = 2
    micro_batch: int = 8
    mini_batches: int = 1
    dtype_bytes: int = 2
    two_policies: bool = False
    label: str = ""

    @property
    def episodes(self) -> int:
        return self.num_groups * self.group_size


def _env_max_steps(env_id: str, kwargs: dict) -> int:
    if "max_steps" in kwargs:
        return int(kwargs["max_steps"])
    from himac_ray.envs import ENV_IDS

    try:
        module, cls = ENV_IDS[env_id].split(":")
        default = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters["max_steps"].default
        return int(default)
    except Exception:  # noqa: BLE001
        return 50


def workload_from_config(cfg, *, prompt_tokens: tuple[int, int, int] | None = None, label: str = "") -> Workload:
    """The `Workload` of a `TrainConfig` (prompt lengths from `PROMPT_TOKENS` unless given)."""
    from himac_ray.prompts import env_kind

    kind = env_kind(cfg.env.id)
    plan_p, act_p, flat_p = prompt_tokens or PROMPT_TOKENS.get(kind, PROMPT_TOKENS["generic"])
    return Workload(
        env_kind=kind, algorithm=cfg.algorithm.name, num_groups=cfg.algorithm.num_groups,
        group_size=cfg.algorithm.group_size, max_steps=_env_max_steps(cfg.env.id, dict(cfg.env.kwargs)),
        plan_prompt=plan_p, act_prompt=act_p, flat_prompt=flat_p, plan_cap=cfg.rollout.plan_max_tokens,
        act_cap=cfg.rollout.action_max_tokens, max_len=cfg.learner.max_len, coevolution=cfg.coevolution.enabled,
        planner_iters=cfg.coevolution.planner_iters, executor_iters=cfg.coevolution.executor_iters,
        kl=cfg.algorithm.kl_coef > 0, zero_stage=cfg.learner.zero_stage, micro_batch=cfg.learner.micro_batch_size,
        mini_batches=cfg.learner.mini_batches, dtype_bytes=4 if cfg.model.dtype == "float32" else 2,
        two_policies=cfg.model.planner_path is not None, label=label,
    )


@dataclass(frozen=True)
class Round:
    """One batched generate call: `prompts` distinct prompts, `seqs` sequences decoded."""

    prompts: float
    seqs: float
    prompt_len: int
    cap: int


@dataclass
class Phase:
    """One kind of iteration: its generate rounds and what the learner trains."""

    name: str
    weight: float
    rounds: list[Round] = field(default_factory=list)
    plan_records: float = 0.0
    act_records: float = 0.0
    trained_plan: float = 0.0
    trained_act: float = 0.0


def phases(w: Workload, a: Assumptions) -> list[Phase]:
    """The iteration kinds of a run and how often each occurs (weights sum to 1)."""
    eps = w.episodes
    live = eps * a.mean_steps_fraction
    act_records = live * w.max_steps

    def macro() -> tuple[list[Round], float, float]:
        rounds = [Round(w.num_groups, eps, w.plan_prompt, w.plan_cap)]
        rounds += [Round(live, live, w.act_prompt, w.act_cap)] * w.max_steps
        return rounds, eps, act_records

    if w.algorithm in FLAT_ALGORITHMS:
        p = Phase("flat", 1.0, [Round(live, live, w.flat_prompt, w.act_cap)] * w.max_steps)
        p.act_records = p.trained_act = act_records
        return [p]
    if not w.coevolution:
        rounds, pr, ar = macro()
        p = Phase("both", 1.0, rounds, pr, ar, trained_plan=pr, trained_act=ar)
        return [p]
    total = max(w.planner_iters + w.executor_iters, 1)
    rounds, pr, ar = macro()
    planner = Phase("planner", w.planner_iters / total, rounds, pr, ar, trained_plan=pr)
    micro = [Round(live, live, w.act_prompt, w.act_cap)] * w.max_steps
    if a.executor_reuses_blueprints:
        executor = Phase("executor", w.executor_iters / total, micro, 0, act_records, trained_act=act_records)
    else:
        executor = Phase("executor", w.executor_iters / total, rounds + micro, pr, ar + act_records,
                         trained_act=act_records)
    return [p for p in (planner, executor) if p.weight > 0]


def tokens_per_iteration(w: Workload, a: Assumptions | None = None) -> list[dict]:
    """Per iteration kind: records generated, prompt/generated tokens, records and tokens trained."""
    a = a or Assumptions()
    out = []
    for p in phases(w, a):
        gen = sum(r.seqs * r.cap * a.response_fill for r in p.rounds)
        prompt = sum(r.prompts * r.prompt_len for r in p.rounds)
        out.append({
            "phase": p.name, "share": p.weight, "plan_records": p.plan_records, "act_records": p.act_records,
            "prompt_tokens": prompt, "generated_tokens": gen,
            "trained_records": p.trained_plan + p.trained_act,
            "trained_tokens": _trained_tokens(w, a, p),
        })
    return out


def _trained_tokens(w: Workload, a: Assumptions, p: Phase) -> float:
    plan = min(w.plan_prompt + w.plan_cap * a.response_fill, w.max_len)
    act_prompt = w.flat_prompt if w.algorithm in FLAT_ALGORITHMS else w.act_prompt
    act = min(act_prompt + w.act_cap * a.response_fill, w.max_len)
    return p.trained_plan * plan + p.trained_act * act


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How GPUs are used: `colocated` = every GPU hosts an engine share and a learner rank."""

    sampler_gpus: int
    tp: int
    learner_gpus: int
    colocated: bool
    origin: str = ""

    @property
    def engines(self) -> int:
        return max(self.sampler_gpus // self.tp, 1)

    @property
    def total(self) -> int:
        return self.sampler_gpus if self.colocated else self.sampler_gpus + self.learner_gpus

    def describe(self) -> str:
        eng = f"{self.engines} engine{'s' if self.engines > 1 else ''} x TP{self.tp}"
        ranks = f"{self.learner_gpus} rank{'s' if self.learner_gpus > 1 else ''}"
        if self.colocated:
            return f"colocated {self.total}: {eng}, {ranks}"
        return f"split {self.sampler_gpus}+{self.learner_gpus}: {eng}, {ranks}"


def valid_tp(m: ModelSpec | None, tp: int) -> bool:
    """vLLM shards attention heads: TP must divide the head count, and the KV-head count or be a
    multiple of it (KV heads are then replicated)."""
    if m is None:
        return True
    return m.heads % tp == 0 and (m.kv_heads % tp == 0 or tp % m.kv_heads == 0)


def candidate_layouts(total: int, *, gpus_per_node: int = 8, model: ModelSpec | None = None) -> list[Layout]:
    """Colocated and split layouts of `total` GPUs with engine TP in 1, 2, 4, 8 (valid for `model`)."""
    if total < 1:
        raise SizingError(f"need at least 1 GPU, got {total}")
    tps = [t for t in (1, 2, 4, 8) if t <= min(total, gpus_per_node) and valid_tp(model, t)]
    out = [Layout(total, t, total, True) for t in tps if total % t == 0]
    if total >= 2:
        if total <= 16:
            sampler_sizes = range(1, total)
        else:
            sampler_sizes = sorted({total * k // 8 for k in range(1, 8)} | {total * k // 16 for k in (1, 3)})
        for s in sampler_sizes:
            for t in tps:
                if s % t == 0 and 0 < s < total:
                    out.append(Layout(s, t, total - s, False))
    return out


def layout_from_config(cfg) -> Layout | None:
    """The layout a config asks for, or None when it uses no GPUs."""
    s, lr = cfg.sampler, cfg.learner
    sampler_gpus = s.num_engines * max(s.gpus_per_engine, 0)
    learner_gpus = lr.num_ranks * max(lr.gpus_per_rank, 0)
    if sampler_gpus <= 0 and learner_gpus <= 0:
        return None
    tp = max(s.tensor_parallel_size, 1)
    if 0 < s.gpus_per_engine < 1 or 0 < lr.gpus_per_rank < 1:  # fractional GPUs: engines and ranks share
        return Layout(max(round(s.num_engines * tp), 1), tp, lr.num_ranks, True, "config")
    return Layout(max(round(s.num_engines * tp), 1), tp, max(round(learner_gpus), 1), False, "config")


# ---------------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------------
def decode_step_s(m: ModelSpec, g: GPUSpec, a: Assumptions, *, batch: float, context: float, tp: int,
                  dtype_bytes: int = 2) -> float:
    """Seconds for one decode step of `batch` sequences at `context` tokens on one engine."""
    mem = m.weight_bytes(dtype_bytes) / tp + batch * context * m.kv_bytes_per_token_per_gpu(tp, dtype_bytes)
    t_mem = mem / (g.hbm_bw * a.decode_bw_eff)
    t_flop = batch * m.fwd_flops_per_token(context) / (tp * g.bf16_flops * a.decode_mfu)
    return max(t_mem, t_flop) + (m.layers * a.tp_step_overhead_s if tp > 1 else 0.0)


def _kv_waves(m: ModelSpec, g: GPUSpec, a: Assumptions, *, seqs: float, context: float, tp: int,
              util: float, dtype_bytes: int) -> int:
    """How many sequential waves the engine needs when the KV cache cannot hold every sequence."""
    free = util * g.memory_gb * GB - m.weight_bytes(dtype_bytes) / tp - a.memory_headroom_gb * GB
    need = seqs * context * m.kv_bytes_per_token_per_gpu(tp, dtype_bytes)
    if free <= 0:
        return 10**6
    return max(1, math.ceil(need / free))


def round_seconds(r: Round, m: ModelSpec, g: GPUSpec, a: Assumptions, *, engines: int, tp: int, util: float,
                  dtype_bytes: int = 2) -> float:
    """Wall time of one generate round spread over `engines` engines."""
    prompts = math.ceil(r.prompts / engines) if r.prompts else 0
    seqs = max(math.ceil(r.seqs / engines), 1)
    mean = r.cap * a.response_fill
    prefill = prompts * r.prompt_len * (1 - a.prefix_hit) * m.fwd_flops_per_token(r.prompt_len / 2)
    t_prefill = prefill / (tp * g.bf16_flops * a.prefill_mfu)
    waves = _kv_waves(m, g, a, seqs=seqs, context=r.prompt_len + r.cap, tp=tp, util=util, dtype_bytes=dtype_bytes)
    per_wave = math.ceil(seqs / waves)
    ctx = r.prompt_len + mean / 2
    t_decode = mean * decode_step_s(m, g, a, batch=per_wave, context=ctx, tp=tp, dtype_bytes=dtype_bytes)
    tail = decode_step_s(m, g, a, batch=1, context=r.prompt_len + r.cap, tp=tp, dtype_bytes=dtype_bytes)
    t_decode = waves * t_decode + (r.cap - mean) * tail
    return t_prefill + t_decode + a.round_overhead_s


def _nodes(n: int, a: Assumptions) -> int:
    return max(1, math.ceil(n / a.gpus_per_node))


def _learner_bw(n: int, g: GPUSpec, a: Assumptions) -> float:
    return g.nvlink_bw if n <= a.gpus_per_node else g.ib_bw


def train_seconds(tokens: float, records: float, w: Workload, m: ModelSpec, g: GPUSpec, a: Assumptions,
                  *, ranks: int, parts: dict | None = None) -> float:
    """Learner time for one iteration's trained records (compute vs ZeRO collectives); `parts`
    receives the compute and communication seconds."""
    if records <= 0:
        return 0.0
    seq = tokens / records
    flops = (4 if a.grad_checkpointing else 3) * m.fwd_flops_per_token(seq / 2)  # fwd + bwd (+ recompute)
    if w.kl:
        flops += m.fwd_flops_per_token(seq / 2)  # reference forward
    compute = tokens * flops / (ranks * g.bf16_flops * a.train_mfu)
    if ranks == 1:
        if parts is not None:
            parts.update(compute=compute, comm=0.0)
        return compute
    bw = _learner_bw(ranks, g, a)
    shard = m.weight_bytes(2) * (ranks - 1) / ranks
    per_micro = shard * (1 if w.zero_stage == 2 else 3 + (1 if w.kl else 0)) / bw
    micro_steps = math.ceil(records / (ranks * w.micro_batch))
    if parts is not None:
        parts.update(compute=compute, comm=micro_steps * per_micro)
    return max(compute, micro_steps * per_micro) + w.mini_batches * shard / bw


def sync_seconds(path: str, m: ModelSpec, g: GPUSpec, a: Assumptions, *, receiver_nodes: int = 1,
                 learner_ranks: int = 1, zero_stage: int = 2, bucket_mb: int = 256) -> float:
    """Seconds to push bf16 weights from the learner to the samplers over `path`.

    Paths: `ipc` (CUDA IPC, learner and engine on the same GPU), `nccl-nvlink` (same node),
    `nccl-ib` (across nodes), `objstore` (Ray object store across nodes: D2H, TCP, H2D),
    `shm` (safetensors file in /dev/shm, same node: what actors/coordinator.py does today).
    """
    nbytes = m.weight_bytes(2)
    buckets = math.ceil(nbytes / (bucket_mb * 1e6))
    t = buckets * a.sync_bucket_overhead_s
    if zero_stage == 3 and learner_ranks > 1:  # gather the shards onto the sending rank first
        t += nbytes * (learner_ranks - 1) / learner_ranks / _learner_bw(learner_ranks, g, a)
    if path == "ipc":
        return t + nbytes / (0.5 * g.hbm_bw)
    if path == "nccl-nvlink":
        return t + nbytes / g.nvlink_bw
    if path == "nccl-ib":
        return t + nbytes / g.ib_bw
    if path == "objstore":
        hops = math.ceil(math.log2(receiver_nodes + 1))
        return t + 2 * nbytes / g.pcie_bw + hops * nbytes / a.objstore_bw
    if path == "shm":
        return t + 2 * nbytes / g.pcie_bw + 2 * nbytes / a.shm_bw
    raise SizingError(f"unknown sync path {path!r}")


SYNC_PATHS = ("ipc", "nccl-nvlink", "shm", "nccl-ib", "objstore")


def learner_memory_gb(w: Workload, m: ModelSpec, *, ranks: int, seq: float, checkpointing: bool = False) -> float:
    """Per-GPU learner memory: ZeRO-2/3 mixed-precision AdamW states (16 bytes/param, ZeRO paper),
    the frozen reference, activations (34 bytes x hidden per token per layer with flash attention,
    Korthikanti et al. 2022; one bf16 hidden state per layer with checkpointing) and fp32 logits."""
    p = m.params
    states = 2 * p + 14 * p / ranks if w.zero_stage == 2 else 16 * p / ranks
    ref = (2 * p if w.zero_stage == 2 else 2 * p / ranks) if w.kl else 0.0
    per_layer = 2 * m.hidden if checkpointing else 34 * m.hidden
    acts = w.micro_batch * seq * (m.layers * per_layer + m.vocab * 8)
    return (states + ref + acts) / GB


def sampler_memory_gb(m: ModelSpec, *, seqs: float, context: float, tp: int, dtype_bytes: int = 2) -> float:
    """Per-GPU sampler memory: weights + the KV cache of every live sequence."""
    return (m.weight_bytes(dtype_bytes) / tp + seqs * context * m.kv_bytes_per_token_per_gpu(tp, dtype_bytes)) / GB


def estimate(w: Workload, m: ModelSpec, g: GPUSpec, layout: Layout, a: Assumptions | None = None, *,
             gpu_memory_utilization: float | None = None, bucket_mb: int = 256) -> dict:
    """One row: time and memory of `w` on `layout` (see the module docstring for the formulas)."""
    a = a or Assumptions()
    ranks = layout.learner_gpus
    mem = g.memory_gb - a.memory_headroom_gb
    longest = max(w.plan_prompt, w.act_prompt, w.flat_prompt) + max(w.plan_cap, w.act_cap)
    peak_seqs = math.ceil(w.episodes / layout.engines)
    samp_need = sampler_memory_gb(m, seqs=peak_seqs, context=longest, tp=layout.tp, dtype_bytes=w.dtype_bytes)
    seq = min(max(w.act_prompt, w.flat_prompt) + w.act_cap, w.max_len)
    learn_need = learner_memory_gb(w, m, ranks=ranks, seq=seq, checkpointing=a.grad_checkpointing)
    if layout.colocated:  # vLLM gets what the learner leaves (no sleep mode: both stay resident)
        util = gpu_memory_utilization or math.floor(100 * max(min((mem - learn_need) / g.memory_gb, 0.9), 0.0)) / 100
    else:
        util = gpu_memory_utilization or 0.9
    weights_gb = m.weight_bytes(w.dtype_bytes) / layout.tp / GB
    notes = []
    if weights_gb + 1.0 > util * g.memory_gb:
        notes.append("sampler OOM")
    if learn_need > (mem - util * g.memory_gb if layout.colocated else mem) + 1e-6:
        notes.append("learner OOM")

    # weight-sync path for this layout
    learner_nodes = _nodes(ranks, a)
    one_node = layout.total <= a.gpus_per_node
    if layout.colocated:
        path, receivers = "ipc", _nodes(layout.total, a)
    elif one_node:
        path, receivers = "nccl-nvlink", 1
    else:
        path, receivers = "nccl-ib", max(_nodes(layout.total, a) - learner_nodes, 1)
    if a.sync_method != "auto":
        if a.sync_method not in SYNC_PATHS:
            raise SizingError(f"sync_method={a.sync_method!r}: choose auto or one of {list(SYNC_PATHS)}")
        if a.sync_method == "ipc" and not layout.colocated:
            notes.append("ipc needs colocation")
        if a.sync_method in ("ipc", "nccl-nvlink", "shm") and not one_node and not layout.colocated:
            notes.append(f"{a.sync_method} needs one node")
        path = a.sync_method
    sync = sync_seconds(path, m, g, a, receiver_nodes=receivers, learner_ranks=ranks,
                        zero_stage=w.zero_stage, bucket_mb=bucket_mb)

    rows = []
    advice = []
    for p in phases(w, a):
        t_roll = sum(round_seconds(r, m, g, a, engines=layout.engines, tp=layout.tp, util=max(util, 0.05),
                                   dtype_bytes=w.dtype_bytes) for r in p.rounds)
        tokens = _trained_tokens(w, a, p)
        parts: dict = {}
        t_train = train_seconds(tokens, p.trained_plan + p.trained_act, w, m, g, a, ranks=ranks, parts=parts)
        if parts.get("comm", 0) > parts.get("compute", 0) > 0 and "learner" not in " ".join(advice):
            advice.append("learner is bound by ZeRO collectives: raise learner.micro_batch_size"
                          + (" or use zero_stage 2" if w.zero_stage == 3 else ""))
        rows.append((p, t_roll, t_train))
    live = math.ceil(w.episodes * a.mean_steps_fraction / layout.engines)
    waves = _kv_waves(m, g, a, seqs=live, context=max(w.act_prompt, w.flat_prompt) + w.act_cap, tp=layout.tp,
                      util=max(util, 0.05), dtype_bytes=w.dtype_bytes)
    if waves > 1:
        advice.append(f"KV cache holds 1/{waves} of an engine's sequences: more engines or a higher "
                      "sampler.gpu_memory_utilization")
    t_roll = sum(p.weight * r for p, r, _ in rows)
    t_train = sum(p.weight * t for p, _, t in rows)
    t_iter = t_roll + t_train + sync
    gen = sum(p.weight * sum(r.seqs * r.cap * a.response_fill for r in p.rounds) for p, _, _ in rows)
    steps = sum(p.weight * (p.act_records) for p, _, _ in rows)
    busy = (layout.sampler_gpus * t_roll + layout.learner_gpus * t_train) / (layout.total * t_iter)
    if layout.colocated:
        busy = (t_roll + t_train) / t_iter
    return {
        "setting": w.label,
        "gpu": g.name,
        "gpus": layout.total,
        "layout": layout.describe(),
        "origin": layout.origin,
        "colocated": layout.colocated,
        "sampler_gpus": layout.sampler_gpus,
        "engines": layout.engines,
        "tp": layout.tp,
        "learner_gpus": ranks,
        "learner_nodes": learner_nodes,
        "rollout_s": t_roll,
        "train_s": t_train,
        "sync_path": path,
        "sync_s": sync,
        "iter_s": t_iter,
        "gpu_busy": busy,
        "gen_tokens_per_s": gen / t_iter,
        "env_steps_per_s": steps / t_iter,
        "sampler_mem_gb": samp_need,
        "learner_mem_gb": learn_need,
        "vllm_util": util,
        "fits": not notes,
        "notes": ", ".join(notes),
        "advice": advice,
        "best": False,
    }


def plan(w: Workload, m: ModelSpec, g: GPUSpec, total_gpus: int, a: Assumptions | None = None, *,
         extra: Layout | None = None, bucket_mb: int = 256) -> list[dict]:
    """Every candidate layout of `total_gpus` (plus `extra`, e.g. the config's own), fastest first;
    the fastest layout that fits in memory is marked `best`."""
    a = a or Assumptions()
    layouts = candidate_layouts(total_gpus, gpus_per_node=a.gpus_per_node, model=m)
    if extra is not None:
        layouts = [lay for lay in layouts if dataclasses.replace(lay, origin="config") != extra] + [extra]
    rows = [estimate(w, m, g, lay, a, bucket_mb=bucket_mb) for lay in layouts]
    rows.sort(key=lambda r: (not r["fits"], r["iter_s"]))
    for r in rows:
        if r["fits"]:
            r["best"] = True
            break
    return rows


def plan_from_config(cfg, *, gpus: int | None = None, gpu: str = DEFAULT_GPU, assumptions: Assumptions | None = None,
                     model: str | None = None, prompt_tokens: tuple[int, int, int] | None = None) -> list[dict]:
    """Sizing rows for a `TrainConfig`: every layout of `gpus` GPUs (default: as many as the config's
    sampler + learner settings use), the config's own layout marked `origin == "config"`."""
    if gpu not in GPUS:
        raise SizingError(f"unknown GPU {gpu!r}; choose one of {sorted(GPUS)}")
    a = assumptions or Assumptions()
    own = layout_from_config(cfg)
    if gpus is None:
        if own is None:
            raise SizingError(
                "this config uses no GPUs (sampler.gpus_per_engine and learner.gpus_per_rank are 0); "
                "pass --gpus N to size it for a GPU cluster"
            )
        gpus = own.total
    w = workload_from_config(cfg, prompt_tokens=prompt_tokens)
    m = model_spec(model or cfg.model.path)
    extra = own if own is not None and own.total == gpus else None
    return plan(w, m, GPUS[gpu], gpus, a, extra=extra, bucket_mb=cfg.learner.sync_bucket_mb)


# ---------------------------------------------------------------------------------------------
# Paper settings
# ---------------------------------------------------------------------------------------------
PAPER_SETTINGS = (
    # label, env kind, model key, max steps, GPUs, groups
    ("ALFWorld 1.5B", "alfworld", "qwen2.5-1.5b", 50, 2, 16),
    ("WebShop 1.5B", "webshop", "qwen2.5-1.5b", 15, 2, 16),
    ("ALFWorld 7B", "alfworld", "qwen2.5-7b", 50, 4, 16),
    ("WebShop 7B", "webshop", "qwen2.5-7b", 15, 4, 16),
    ("Sokoban 7B", "sokoban", "qwen2.5-7b", 15, 4, 16),
    ("ALFWorld 7B", "alfworld", "qwen2.5-7b", 50, 64, 16),
    ("ALFWorld 7B, 128 groups", "alfworld", "qwen2.5-7b", 50, 64, 128),
)


def paper_workload(env_kind: str, max_steps: int, groups: int = 16, label: str = "", *, zero_stage: int = 2,
                   micro_batch: int = 8) -> Workload:
    """The paper's workload (16 x 8 groups, caps 512, prompt + response <= 2560) on `env_kind`."""
    plan_p, act_p, flat_p = PROMPT_TOKENS[env_kind]
    return Workload(env_kind, "himac", num_groups=groups, group_size=8, max_steps=max_steps, plan_prompt=plan_p,
                    act_prompt=act_p, flat_prompt=flat_p, plan_cap=512, act_cap=512, max_len=2560,
                    zero_stage=zero_stage, micro_batch=micro_batch, label=label)


def paper_rows(gpu: str = DEFAULT_GPU, a: Assumptions | None = None, *, split_only: bool = False) -> list[dict]:
    """The fastest layout that fits for each of the paper's settings (Qwen2.5-1.5B on 2 GPUs, 7B on
    4 and 64); `split_only` leaves out colocated layouts (the configs in configs/ are split).
    1.5B uses ZeRO-2 and micro-batches of 8, 7B ZeRO-3 and micro-batches of 2 on 4 GPUs (as the
    configs) and of 8 on 64 GPUs."""
    a = a or Assumptions()
    out = []
    for label, kind, key, steps, n, groups in PAPER_SETTINGS:
        m = MODELS[key]
        big = m.params > 3e9
        mb = 2 if big and n <= 8 else 8  # 64-way ZeRO-3 shards leave room for bigger micro-batches
        w = paper_workload(kind, steps, groups, label=f"{label} / {n} GPUs", zero_stage=3 if big else 2,
                           micro_batch=mb)
        rows = [r for r in plan(w, m, GPUS[gpu], n, a) if not (split_only and r["colocated"])]
        best = next((r for r in rows if r["fits"]), rows[0])
        out.append({**best, "best": False})
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
COLUMNS = (
    ("setting", "setting", "{}"),
    ("layout", "layout", "{}"),
    ("rollout_s", "rollout s", "{:.0f}"),
    ("train_s", "learn s", "{:.0f}"),
    ("sync_path", "sync path", "{}"),
    ("sync_s", "sync s", "{:.1f}"),
    ("iter_s", "iter s", "{:.0f}"),
    ("gpu_busy", "GPU busy", "{:.0%}"),
    ("gen_tokens_per_s", "gen tok/s", "{:,.0f}"),
    ("sampler_mem_gb", "sampler GB", "{:.0f}"),
    ("learner_mem_gb", "learner GB", "{:.0f}"),
    ("fits", "fits", "{}"),
)
NOTE_COLUMN = ("notes", "notes", "{}")


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key, "")
    if key == "fits":
        return "yes" if value else "no"
    if key == "layout" and row.get("best"):
        value = f"* {value}"
    elif key == "layout" and row.get("origin") == "config":
        value = f"(config) {value}"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_plan_table(rows: list[dict], *, markdown: bool = False, columns=COLUMNS) -> str:
    """A text (or Markdown) table of sizing rows; `*` marks the best layout that fits.
    Columns whose values are all empty (e.g. `setting` for one config) are dropped."""
    cols = [c for c in columns if any(str(r.get(c[0], "")) for r in rows)]
    head = [c[1] for c in cols]
    body = [[_cell(r, key, fmt) for key, _, fmt in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt_row = lambda cells: "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [fmt_row(head), "  ".join("-" * wd for wd in widths)]
    lines += [fmt_row(row) for row in body]
    return "\n".join(lines)


def format_tokens(w: Workload, a: Assumptions | None = None, *, markdown: bool = False) -> str:
    """Records and tokens per iteration kind."""
    rows = tokens_per_iteration(w, a)
    head = ["iteration", "share", "plan records", "act records", "prompt tokens", "generated tokens",
            "trained records", "trained tokens"]
    body = [[r["phase"], f"{r['share']:.0%}", f"{r['plan_records']:,.0f}", f"{r['act_records']:,.0f}",
             f"{r['prompt_tokens'] / 1e6:.2f}M", f"{r['generated_tokens'] / 1e6:.2f}M",
             f"{r['trained_records']:,.0f}", f"{r['trained_tokens'] / 1e6:.2f}M"] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                         + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    return "\n".join(["  ".join(h.rjust(wd) for h, wd in zip(head, widths))]
                     + ["  ".join(c.rjust(wd) for c, wd in zip(b, widths)) for b in body])


def sync_table(gpu: str = DEFAULT_GPU, a: Assumptions | None = None, *, markdown: bool = True) -> str:
    """Weight-sync seconds per path for the paper's model sizes (ZeRO-2 sender, 256 MB buckets)."""
    a = a or Assumptions()
    g = GPUS[gpu]
    head = ["model", "bf16 weights", *SYNC_PATHS]
    body = []
    for key in ("qwen2.5-1.5b", "qwen2.5-7b"):
        m = MODELS[key]
        cells = [m.name, f"{m.weight_bytes(2) / GB:.1f} GB"]
        cells += [f"{sync_seconds(p, m, g, a, receiver_nodes=7 if p == 'objstore' else 1):.2f} s" for p in SYNC_PATHS]
        body.append(cells)
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                         + ["| " + " | ".join(b) + " |" for b in body])
    return "\n".join("  ".join(c for c in row) for row in [head, *body])


def figures_table() -> str:
    """The published / measured figures behind the model, then the assumptions, as Markdown."""
    from himac_ray.tools.config_docs import field_docstrings

    lines = ["| figure | value | source |", "|---|---|---|"]
    lines += [f"| {f} | {v} | {s} |" for f, v, s in FIGURES]
    lines += ["", "| assumption (`--assume KEY=VALUE`) | default | meaning |", "|---|---|---|"]
    docs = field_docstrings(Assumptions)
    for f in dataclasses.fields(Assumptions):
        meaning = " ".join(docs.get(f.name, "").split()).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.default!r} | {meaning} |")
    lines += ["", "| GPU | source |", "|---|---|"]
    lines += [f"| {g.name} | {g.source} |" for g in GPUS.values()]
    lines += ["", f"Prompt lengths (`PROMPT_TOKENS`): {PROMPT_TOKENS_SOURCE}."]
    return "\n".join(lines)


def paper_report(gpus: tuple[str, ...] = ("H100-80GB", "A100-80GB")) -> str:
    """The generated block docs/scaling.md embeds (a test checks it is current)."""
    parts = []
    for gpu in gpus:
        parts.append(f"#### {gpu}: fastest layout that fits\n\n" + format_plan_table(paper_rows(gpu), markdown=True))
        parts.append(f"#### {gpu}: fastest split layout (sampler and learner on separate GPUs)\n\n"
                     + format_plan_table(paper_rows(gpu, split_only=True), markdown=True))
    parts.append("#### Records and tokens per iteration (ALFWorld, 16 x 8, 50 steps, caps 512)\n\n"
                 + format_tokens(paper_workload("alfworld", 50), markdown=True))
    parts.append("#### Weight sync, H100-80GB (one push of the bf16 policy; ZeRO-2 sender, 256 MB buckets; "
                 "objstore to 7 nodes)\n\n" + sync_table("H100-80GB"))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _parse_assume(items: list[str]) -> Assumptions:
    a = Assumptions()
    names = {f.name: f.type for f in dataclasses.fields(Assumptions)}
    changes = {}
    for item in items or []:
        key, _, raw = item.partition("=")
        if key not in names or not raw:
            raise SizingError(f"--assume {item!r}: use key=value with key one of {sorted(names)}")
        current = getattr(a, key)
        changes[key] = (raw.lower() in ("1", "true", "yes")) if isinstance(current, bool) else type(current)(raw)
    return dataclasses.replace(a, **changes)


def add_arguments(parser: argparse.ArgumentParser, *, config_args: bool = True) -> argparse.ArgumentParser:
    """The `plan` options (pass `config_args=False` when the parser already has --config/--set)."""
    if config_args:
        parser.add_argument("--config", help="YAML config file (see configs/)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override one config key (repeatable)")
    parser.add_argument("--gpus", type=int, help="GPUs to plan for (default: what the config's sampler/learner use)")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS), help="GPU type")
    parser.add_argument("--model", help="model for sizing (default: model.path), e.g. qwen2.5-7b")
    parser.add_argument("--assume", action="append", default=[], metavar="KEY=VALUE",
                        help="change an assumption, e.g. --assume mean_steps_fraction=0.6 (repeatable)")
    parser.add_argument("--measure-prompts", action="store_true",
                        help="measure prompt lengths with the model's tokenizer (local folder) instead of the table")
    parser.add_argument("--top", type=int, default=0, help="show only the N fastest layouts")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--paper", action="store_true", help="print the paper-settings report (docs/scaling.md)")
    parser.add_argument("--figures", action="store_true", help="print the published figures and their sources")
    return parser


def _tokenizer_for(path: str):
    from transformers import AutoTokenizer

    from himac_ray.models import resolve_model

    try:
        folder = resolve_model(path)
    except Exception:  # noqa: BLE001  (unknown / missing model: fall back to the embedded tokenizer)
        folder = resolve_model("embedded")
    return AutoTokenizer.from_pretrained(str(folder))


def run(args) -> int:
    """Execute parsed `plan` arguments; returns the exit code."""
    try:
        a = _parse_assume(args.assume)
        if args.figures:
            print(figures_table())
            return 0
        if args.paper:
            print(paper_report(), end="")
            return 0
        from himac_ray.config import ConfigError, load_config

        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as err:
            print(f"himac-ray plan: config error: {err}", file=sys.stderr)
            return 2
        prompt_tokens = None
        if args.measure_prompts:
            r = cfg.rollout
            prompt_tokens = measure_prompt_tokens(cfg.env.id, _tokenizer_for(cfg.model.path),
                                                  env_kwargs=dict(cfg.env.kwargs), max_subgoals=r.max_subgoals,
                                                  history_length=r.history_length)
        rows = plan_from_config(cfg, gpus=args.gpus, gpu=args.gpu, assumptions=a, model=args.model,
                                prompt_tokens=prompt_tokens)
    except SizingError as err:
        print(f"himac-ray plan: {err}", file=sys.stderr)
        return 2
    if args.top:
        rows = rows[: args.top] + [r for r in rows[args.top:] if r["origin"] == "config"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = workload_from_config(cfg, prompt_tokens=prompt_tokens)
    m = model_spec(args.model or cfg.model.path)
    print(f"{m.name} ({m.params / 1e9:.2f}B), {w.env_kind}, {w.algorithm}: {w.num_groups} groups x {w.group_size}, "
          f"max {w.max_steps} steps, prompts plan/act {w.plan_prompt}/{w.act_prompt} tokens, "
          f"caps {w.plan_cap}/{w.act_cap}; {args.gpu}; mean_steps_fraction={a.mean_steps_fraction}, "
          f"response_fill={a.response_fill}")
    print()
    print(format_tokens(w, a, markdown=args.markdown))
    print()
    print(format_plan_table(rows, markdown=args.markdown, columns=COLUMNS + (NOTE_COLUMN,)))
    print("\n* = fastest layout that fits in memory. Estimates; see docs/scaling.md for the model and its sources.")
    for r in rows:
        if (r["best"] or r["origin"] == "config") and r["advice"]:
            print(f"{r['layout']}: " + "; ".join(r["advice"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m himac_ray.tools.sizing --config F [--gpus N] ...` (also `himac-ray plan`)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="himac-ray plan", description="Estimate GPU layout, weight-sync and iteration time for a config."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
