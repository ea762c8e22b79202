"""GPU sizing, the cost model: candidate layouts and the rollout / learn / sync / iteration-time
estimate (`estimate`, `plan`) of a workload (`sizing_workload`). Formulas: `himac_ray.tools.sizing` and
docs/scaling.md. No Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from himac_ray.tools.sizing_specs import (
    DEFAULT_GPU,
    GB,
    GPUS,
    Assumptions,
    GPUSpec,
    ModelSpec,
    SizingError,
    model_spec,
)
from himac_ray.tools.sizing_workload import Phase, Round, Workload, phases, trained_tokens, workload_from_config


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


def async_iteration_seconds(*, rollout_s: float, learn_s: float, sync_s: float) -> float:
    """Seconds per iteration of `run.pipeline: async` in steady state, on a split layout.

    One rollout ahead (himac_ray/pipeline.py): iteration i+1's rollout starts when iteration i's
    rollout is taken, so it runs beside i's advantages, learner step and record. The weight sync
    overlaps nothing: a sampler actor serves one call at a time, so it loads the new weights
    between two generate calls and generates nothing meanwhile, while the learner waits for it.
    Hence max(rollout, learn) + sync, against rollout + learn + sync in sync mode.
    """
    return max(rollout_s, learn_s) + sync_s


def _async_cycle_seconds(w: Workload, rows: list[tuple[Phase, float, float]], sync: float) -> float:
    """Mean async iteration seconds over the co-evolution cycle: each iteration's learner step
    runs beside the *next* iteration's rollout, whose phase may differ (planner_iters planner
    iterations, then executor_iters executor iterations)."""
    by_name = {p.name: (roll, train) for p, roll, train in rows}
    if len(rows) == 1:
        cycle = [rows[0][0].name]
    else:
        cycle = ["planner"] * w.planner_iters + ["executor"] * w.executor_iters
    pairs = zip(cycle, cycle[1:] + cycle[:1])  # (this iteration, the next one), cyclically
    return sum(async_iteration_seconds(rollout_s=by_name[nxt][0], learn_s=by_name[cur][1], sync_s=sync)
               for cur, nxt in pairs) / len(cycle)


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
        tokens = trained_tokens(w, a, p)
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
    # colocated: the same GPUs roll out and learn, so running both at once gains nothing here
    t_async = t_iter if layout.colocated else _async_cycle_seconds(w, rows, sync)
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
        "async_iter_s": t_async,
        "phase_s": {p.name: {"rollout_s": r, "train_s": t} for p, r, t in rows},
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
         extra: Layout | None = None, bucket_mb: int = 256, pipeline: str = "sync") -> list[dict]:
    """Every candidate layout of `total_gpus` (plus `extra`, e.g. the config's own), fastest first
    in `pipeline` mode (`iter_s` for sync, `async_iter_s` for async); the fastest layout that fits
    in memory is marked `best`."""
    a = a or Assumptions()
    layouts = candidate_layouts(total_gpus, gpus_per_node=a.gpus_per_node, model=m)
    if extra is not None:
        layouts = [lay for lay in layouts if dataclasses.replace(lay, origin="config") != extra] + [extra]
    rows = [estimate(w, m, g, lay, a, bucket_mb=bucket_mb) for lay in layouts]
    key = "async_iter_s" if pipeline == "async" else "iter_s"
    rows.sort(key=lambda r: (not r["fits"], r[key]))
    for r in rows:
        if r["fits"]:
            r["best"] = True
            break
    return rows


def plan_from_config(cfg, *, gpus: int | None = None, gpu: str = DEFAULT_GPU, assumptions: Assumptions | None = None,
                     model: str | None = None, prompt_tokens: tuple[int, int, int] | None = None) -> list[dict]:
    """Sizing rows for a `TrainConfig`: every layout of `gpus` GPUs (default: as many as the config's
    sampler + learner settings use), the config's own layout marked `origin == "config"`, ranked by
    the iteration time of the config's `run.pipeline` (`pipeline_of`)."""
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
    return plan(w, m, GPUS[gpu], gpus, a, extra=extra, bucket_mb=cfg.learner.sync_bucket_mb, pipeline=pipeline_of(cfg))


def pipeline_of(cfg) -> str:
    """"async" when the config rolls out ahead of the learner, else "sync" (`max_staleness: 0`
    makes async run exactly as sync)."""
    from himac_ray.pipeline import lookahead

    return "async" if lookahead(pipeline=cfg.run.pipeline, max_staleness=cfg.run.max_staleness) else "sync"


