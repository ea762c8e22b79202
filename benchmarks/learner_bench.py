"""Learner throughput: the DeepSpeed `Learner` vs a plain single-process PyTorch AdamW loop.

Every system trains the SAME records (real Sokoban executor prompts rendered with the chat
template, short `<action>` responses, seeded random advantages) with the same math: policy
forward, frozen-reference forward for the KL term, `compute_policy_loss`, backward, grad-norm
clip, AdamW step, micro-batches of `micro_batch_size` records from `stable_order`. Timed are
`steps` optimizer steps after one untimed warm-up step (on 2 records); tokens = real (prompt + response)
tokens forwarded, as the learner's `perf/learner_tokens`.

Systems:
- `deepspeed_zero2`: `himac_ray.learner.Learner`, ZeRO-2, world size 1, in this process.
- `plain_torch`: the same update written as a plain PyTorch loop (no DeepSpeed), in this process.
- `plain_torch_full_logits`: the plain loop computing the LM head at every position (as the
  learner did before commit 3b193fd); full mode also runs the learner at that commit
  (`deepspeed_zero2_before_fix`) for a before / after figure.
- full mode adds Ray `LearnerGroup`s: ZeRO-2 with 1 rank (2 CPUs) and ZeRO-3 with 2 ranks (1 CPU
  each), same records.

Figures: tokens/s per system and `overhead_ratio` = plain_torch tokens/s / deepspeed tokens/s
(1.0 = no overhead). Usage: `himac-ray bench learner [--model embedded|tiny] [--full] [--json]`.
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path

from benchmarks.common import ROOT, cpu_delta, cpu_snapshot, local_ray, log, machine, opt, ratio, script_main
from himac_ray import metrics as M

ENV_ID = "himac/Sokoban-v0"
SIZES = {"smoke": (4, 1), "quick": (8, 1), "full": (16, 1)}  # records, timed steps
MICRO = 4
BEFORE_FIX = "c5c6d7b"
"""the learner before 3b193fd (logits over the response window only)"""
LR = 1e-6
KL = 0.01


def make_records(model_path: str, n: int, seed: int = 0):
    """`n` executor records from a scripted Sokoban rollout with chat-template prompt ids."""
    import numpy as np
    from transformers import AutoTokenizer

    from himac_ray.engines.chat import render_chats
    from himac_ray.generation import Sample
    from himac_ray.rollout import run_rollout

    tok = AutoTokenizer.from_pretrained(model_path)
    rng = np.random.default_rng(seed)
    actions = ["up", "down", "left", "right"]

    class Scripted:
        def generate(self, prompts, params):
            out = []
            for ids in render_chats(tok, prompts):
                samples = []
                for _ in range(params.n):
                    if params.max_tokens > 60:  # planner
                        text = "<plan>\n1. Move next to the box\n2. Push the box onto the target\n</plan>"
                    else:
                        text = f"<think>The box is near.</think><action>{actions[int(rng.integers(4))]}</action>"
                    resp = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
                    samples.append(Sample(text, resp, [-0.5] * len(resp), list(ids)))
                out.append(samples)
            return out

    from himac_ray.generation import SamplingParams

    seeds = list(range(7000, 7000 + max(1, math.ceil(n / 15 / 2))))
    res = run_rollout(generator=Scripted(), env_id=ENV_ID, env_kwargs={"max_steps": 15}, seeds=seeds, mode="macro",
                      group_size=2, planner_params=SamplingParams(max_tokens=96),
                      executor_params=SamplingParams(max_tokens=48), max_subgoals=3)
    acts = [r for r in res.records if r.level == "act"][:n]
    for r in acts:
        r.advantage = float(rng.normal())
    return acts


def _batches(records, pad_token_id: int, max_len: int):
    from himac_ray.batch import pad_batch
    from himac_ray.learner import stable_order, with_response_window

    ordered = [records[i] for i in stable_order(records)]
    batches = []
    for i in range(0, len(ordered), MICRO):
        part = ordered[i:i + MICRO]
        b = pad_batch(part, pad_token_id=pad_token_id, levels=("act",), max_len=max_len)
        batches.append(with_response_window(b, [len(r.response_ids) for r in part]))  # as the learner does
    return batches


def _timed(step, records, steps: int) -> tuple[float, float, float]:
    """(tokens, seconds, cpu seconds) of `steps` calls `step(records) -> tokens`, after one untimed
    warm-up step on the first 2 records (optimizer state allocation, first-call costs)."""
    step(records[:2])
    tokens, seconds, cpu = 0.0, 0.0, 0.0
    for _ in range(steps):
        c0 = cpu_snapshot()
        t0 = time.perf_counter()
        tokens += step(records)
        seconds += time.perf_counter() - t0
        cpu += cpu_delta(c0)
    return tokens, seconds, cpu


def _figures(tokens, seconds, cpu, **extra) -> dict:
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "cpu_seconds": cpu,
            "tokens_per_cpu_s": tokens / cpu if cpu else 0.0, **extra}


def _learner_at(commit: str):
    """`Learner` class of himac_ray/learner.py at git `commit` (for before / after comparisons)."""
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "show", f"{commit}:himac_ray/learner.py"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="himac-learner-")) / f"learner_{commit}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"learner_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Learner


def bench_deepspeed(model: str, records, steps: int, commit: str | None = None) -> dict:
    import torch

    from himac_ray.config import AlgorithmConfig, LearnerConfig, ModelConfig
    from himac_ray.learner import Learner

    if commit:
        Learner = _learner_at(commit)  # noqa: N806
    learner = Learner(model=ModelConfig(path=model), learner=LearnerConfig(zero_stage=2, lr=LR, micro_batch_size=MICRO,
                                                                           max_len=2048),
                      algorithm=AlgorithmConfig(kl_coef=KL), seed=0)
    out = _timed(lambda recs: learner.train_step(recs, trainable="executor")[M.LEARNER_TOKENS], records, steps)
    return _figures(*out, torch_threads=torch.get_num_threads(), commit=commit or "HEAD")


def bench_plain(model_path: str, records, steps: int, *, logits: str = "window") -> dict:
    """The learner's update as a plain PyTorch loop (same micro-batches, loss and clipping).

    `logits="window"` computes the LM head only over the columns spanning the micro-batch's
    responses, as `Learner` does since 3b193fd (HF `logits_to_keep`); "full" at every position,
    as it did before.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from himac_ray.loss import compute_policy_loss, token_entropy, token_logprobs

    tok = AutoTokenizer.from_pretrained(model_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval().requires_grad_(False)
    opt_ = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def lp_ent(m, b, with_entropy):
        ids, window = b["input_ids"], b["window"]
        kwargs = {"logits_to_keep": window} if logits == "window" else {}
        out = m(input_ids=ids, attention_mask=b["attention_mask"], use_cache=False, **kwargs).logits
        if logits != "window":
            out = out[:, window]
        trained = b["response_mask"] > 0
        ent = None
        if with_entropy:
            with torch.no_grad():
                picked = token_entropy(out[trained].unsqueeze(0))[0]
                ent = picked.new_zeros(trained.shape).masked_scatter(trained, picked)
        return token_logprobs(out, ids[:, window]), ent

    def step(recs) -> float:
        batches = _batches(recs, pad, 2048)
        model.train()
        total = sum(float(b["response_mask"].sum()) for b in batches)
        tokens = 0.0
        for b in batches:
            with torch.no_grad():
                ref_lp, _ = lp_ent(ref, b, False)
            lp, ent = lp_ent(model, b, True)
            loss, _ = compute_policy_loss(logprobs=lp, old_logprobs=b["old_logprobs"], advantages=b["advantages"],
                                          response_mask=b["response_mask"], ref_logprobs=ref_lp, clip_coef=0.2,
                                          kl_coef=KL, entropy=ent, entropy_coef=0.0, aggregation="token-mean")
            (loss * (float(b["response_mask"].sum()) / max(total, 1.0))).backward()
            tokens += float(b["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt_.step()
        opt_.zero_grad(set_to_none=True)
        return tokens

    out = _timed(step, records, steps)
    return _figures(*out, torch_threads=torch.get_num_threads(), logits=logits)


def bench_group(model: str, records, steps: int, *, ranks: int, zero_stage: int, cpus_per_rank: float) -> dict:
    """A Ray `LearnerGroup` (the training path) on the same records."""
    from actors.learner import LearnerGroup
    from himac_ray.config import AlgorithmConfig, LearnerConfig, ModelConfig

    group = LearnerGroup(model=ModelConfig(path=model),
                         learner=LearnerConfig(num_ranks=ranks, zero_stage=zero_stage, cpus_per_rank=cpus_per_rank,
                                               lr=LR, micro_batch_size=MICRO, max_len=2048),
                         algorithm=AlgorithmConfig(kl_coef=KL), seed=0)
    try:
        out = _timed(lambda recs: group.train_step(recs, trainable="executor")[M.LEARNER_TOKENS], records, steps)
    finally:
        group.shutdown()
    return _figures(*out, ranks=ranks, zero_stage=zero_stage, cpus_per_rank=cpus_per_rank)


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench learner`: options `model` (default embedded), `size` (smoke | quick | full)."""
    from himac_ray.models import resolve_model

    size = opt(args, "size", "quick" if quick else "full")
    model = opt(args, "model", "embedded")
    if model == "both":
        model = "embedded"
    path = str(resolve_model(model))
    n, steps = SIZES[size]
    records = make_records(path, n)
    n_tok = sum(len(r.prompt_ids) + len(r.response_ids) for r in records)
    n_resp = sum(len(r.response_ids) for r in records)
    log(f"learner/{model}: {len(records)} records, {n_tok} tokens ({n_resp} response tokens) per step, "
        f"micro-batch {MICRO}, {steps} timed steps")
    out = {"bench": "learner", "model": model, "size": size, "machine": machine(), "records": len(records),
           "tokens_per_step": n_tok, "response_tokens_per_step": n_resp, "micro_batch_size": MICRO, "steps": steps,
           "systems": {}}
    systems = out["systems"]
    systems["deepspeed_zero2"] = bench_deepspeed(model, records, steps)
    gc.collect()
    log(f"learner/{model}: deepspeed ZeRO-2 {systems['deepspeed_zero2']['tokens_per_s']:.0f} tok/s")
    systems["plain_torch"] = bench_plain(path, records, steps)
    gc.collect()
    log(f"learner/{model}: plain torch {systems['plain_torch']['tokens_per_s']:.0f} tok/s")
    systems["plain_torch_full_logits"] = bench_plain(path, records, steps, logits="full")
    gc.collect()
    log(f"learner/{model}: plain torch, full-vocab logits at every position "
        f"{systems['plain_torch_full_logits']['tokens_per_s']:.0f} tok/s")
    before = opt(args, "before_commit", BEFORE_FIX if size == "full" else None)
    if before:
        systems["deepspeed_zero2_before_fix"] = bench_deepspeed(model, records, steps, commit=before)
        gc.collect()
        log(f"learner/{model}: deepspeed ZeRO-2 at {before} (full logits) "
            f"{systems['deepspeed_zero2_before_fix']['tokens_per_s']:.0f} tok/s")
    if size == "full":
        with local_ray():
            systems["ray_zero2_1rank"] = bench_group(model, records, steps, ranks=1, zero_stage=2, cpus_per_rank=2)
            log(f"learner/{model}: Ray ZeRO-2 1 rank {systems['ray_zero2_1rank']['tokens_per_s']:.0f} tok/s")
            systems["ray_zero3_2ranks"] = bench_group(model, records, steps, ranks=2, zero_stage=3, cpus_per_rank=1)
            log(f"learner/{model}: Ray ZeRO-3 2 ranks {systems['ray_zero3_2ranks']['tokens_per_s']:.0f} tok/s")
    ds, plain = systems["deepspeed_zero2"], systems["plain_torch"]
    out["overhead_ratio"] = ratio(plain["tokens_per_s"], ds["tokens_per_s"])
    out["overhead_ratio_cpu"] = ratio(plain["tokens_per_cpu_s"], ds["tokens_per_cpu_s"])
    out["window_logits_speedup_plain"] = ratio(plain["tokens_per_s"], systems["plain_torch_full_logits"]["tokens_per_s"])
    if "deepspeed_zero2_before_fix" in systems:
        out["window_logits_speedup_learner"] = ratio(ds["tokens_per_s"], systems["deepspeed_zero2_before_fix"]["tokens_per_s"])
    if "ray_zero3_2ranks" in systems:
        out["zero3_2ranks_vs_zero2_1rank"] = ratio(systems["ray_zero3_2ranks"]["tokens_per_s"],
                                                   systems["ray_zero2_1rank"]["tokens_per_s"])
    out["tokens_per_s"] = {k: v["tokens_per_s"] for k, v in systems.items()}
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    lines = [f"learner bench, model {out['model']}: {out['records']} records, {out['tokens_per_step']} tokens per step",
             f"  {'system':<30} {'tok/s':>8} {'tok/cpu-s':>10} {'seconds':>8}"]
    for name, f in out["systems"].items():
        lines.append(f"  {name:<30} {f['tokens_per_s']:>8.0f} {f['tokens_per_cpu_s']:>10.0f} {f['seconds']:>8.1f}")
    lines.append(f"  overhead ratio (plain / DeepSpeed tok/s) = {out['overhead_ratio']:.2f}; "
                 f"window vs full-vocab logits (plain loop) = {out['window_logits_speedup_plain']:.2f}x")
    if "window_logits_speedup_learner" in out:
        lines.append(f"  learner after / before the logits fix = {out['window_logits_speedup_learner']:.2f}x")
    if "zero3_2ranks_vs_zero2_1rank" in out:
        lines.append(f"  ZeRO-3 2 ranks / ZeRO-2 1 rank = {out['zero3_2ranks_vs_zero2_1rank']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], model={"choices": ["tiny", "embedded"]})
