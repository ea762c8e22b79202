"""LoRA vs full fine-tuning: weight-sync bytes and seconds, learner tokens/s and learner peak memory.

Both systems run the same config in one bench run: the DeepSpeed `Learner` (ZeRO-2, world size 1,
KL reference on, `model.dtype: auto`) trains the same executor records (`learner_bench.make_records`:
real Sokoban prompts, short responses, seeded advantages), then syncs into an in-process vLLM
engine the way the coordinator's `shm` path does: full fine-tuning writes every HF weight in the
serving dtype to one safetensors file in /dev/shm and the engine reloads it in place; LoRA writes
only the adapter folder and the engine loads it as a vLLM LoRA adapter (`load_inplace`).

Each system runs in a fresh process, so its peak resident memory (`ru_maxrss`) is its own; the
learner's peak is read after its timed steps, before vLLM starts. Timed: `steps` optimizer steps
after one warm-up step; `syncs` syncs after one warm-up sync. Goal: LoRA syncs >= 20x fewer bytes
and has a lower learner peak.

Usage: `himac-ray bench lora [--model tiny|embedded] [--size smoke|quick|full] [--json]`.
"""

from __future__ import annotations

import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from benchmarks.common import machine, opt, ratio, script_main
from himac_ray import metrics as M

SIZES = {"smoke": ("tiny", 4, 1, 1), "quick": ("embedded", 8, 2, 2), "full": ("embedded", 16, 3, 3)}
"""size -> (default model, records, timed steps, timed syncs)"""
RANK, ALPHA = 8, 16.0
LR, KL, MICRO = 1e-5, 0.01, 4
BYTES_GOAL = 20.0


def measure(system: str, model: str, records: int, steps: int, syncs: int) -> dict:
    """One system ("full" | "lora") in this (fresh) process: learner tokens/s and peak RSS, then syncs."""
    import shutil

    from benchmarks.learner_bench import make_records
    from himac_ray.config import AlgorithmConfig, LearnerConfig, LoraConfig, ModelConfig
    from himac_ray.engines.vllm_engine import VLLMGenerator
    from himac_ray.learner import Learner
    from himac_ray.models import resolve_model
    from himac_ray.weight_sync import shm_dir

    path = resolve_model(model)
    lora = LoraConfig(rank=RANK, alpha=ALPHA) if system == "lora" else LoraConfig()
    learner = Learner(model=ModelConfig(path=model, dtype="auto"),
                      learner=LearnerConfig(zero_stage=2, lr=LR, micro_batch_size=MICRO, max_len=2048, lora=lora),
                      algorithm=AlgorithmConfig(kl_coef=KL), seed=0)
    recs = make_records(str(path), records)
    learner.train_step(recs[:2], trainable="executor")  # warm-up: optimizer state, first-call costs
    tokens, seconds = 0.0, 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        tokens += learner.train_step(recs, trainable="executor")[M.LEARNER_TOKENS]
        seconds += time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in learner.policies["executor"][0].module.parameters() if p.requires_grad)

    gen = VLLMGenerator(path, seed=0, max_model_len=2048, dtype="auto", in_process=True,
                        **({"max_lora_rank": RANK} if system == "lora" else {}))
    timed = []
    for version in range(1, syncs + 2):  # the first one warms up
        target = shm_dir() / f"himac-lora-bench-{system}-v{version}{'' if system == 'lora' else '.safetensors'}"
        t0 = time.perf_counter()
        if system == "lora":
            learner.save_adapter(target, policy="executor")
        else:
            learner.save_weights(target, policy="executor")
        t1 = time.perf_counter()
        size = sum(f.stat().st_size for f in target.iterdir()) if target.is_dir() else target.stat().st_size
        if system == "lora":
            gen.load_adapter(target, name=learner.adapters["executor"], version=version)
            shutil.rmtree(target)
        else:
            gen.reload_weights(target, version=version)
            target.unlink()
        t2 = time.perf_counter()
        timed.append({"bytes": size, "export_seconds": t1 - t0, "load_seconds": t2 - t1, "seconds": t2 - t0})
    if gen.adapter_dir is not None:
        shutil.rmtree(gen.adapter_dir, ignore_errors=True)
    timed = timed[1:]
    return {"system": system, "model": model, "dtype": gen.dtype, "trainable_params": trainable,
            "learner_tokens": tokens, "learner_seconds": seconds, "learner_tokens_per_s": tokens / seconds,
            "learner_peak_mb": peak_mb, "sync_bytes": timed[-1]["bytes"],
            "sync_seconds": statistics.mean(s["seconds"] for s in timed),
            "sync_export_seconds": statistics.mean(s["export_seconds"] for s in timed),
            "sync_load_seconds": statistics.mean(s["load_seconds"] for s in timed), "syncs_timed": len(timed)}


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench lora`: options `size` (smoke | quick | full) and `model` (tiny | embedded)."""
    size = opt(args, "size", "quick" if quick else "full")
    default_model, records, steps, syncs = SIZES[size]
    model = opt(args, "model", default_model)
    systems = {}
    for system in ("full", "lora"):
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            systems[system] = pool.submit(measure, system, model, records, steps, syncs).result()
    full, lora = systems["full"], systems["lora"]
    out = {"bench": "lora", "size": size, "model": model, "records": records, "steps": steps, "rank": RANK,
           "alpha": ALPHA, "machine": machine(), "systems": systems,
           "sync_bytes_ratio": ratio(full["sync_bytes"], lora["sync_bytes"]),
           "sync_seconds_ratio": ratio(full["sync_seconds"], lora["sync_seconds"]),
           "learner_tokens_per_s_ratio": ratio(lora["learner_tokens_per_s"], full["learner_tokens_per_s"]),
           "learner_peak_ratio": ratio(lora["learner_peak_mb"], full["learner_peak_mb"])}
    out["goal_met"] = out["sync_bytes_ratio"] >= BYTES_GOAL and lora["learner_peak_mb"] < full["learner_peak_mb"]
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    lines = [f"lora bench ({out['model']}, {out['records']} records x {out['steps']} steps, rank {out['rank']}, "
             f"serving dtype {out['systems']['full']['dtype']})",
             f"  {'system':>6} {'trainable':>11} {'sync MB':>9} {'sync s':>7} {'export s':>8} {'load s':>7} "
             f"{'learner tok/s':>13} {'peak MB':>8}"]
    for s in out["systems"].values():
        lines.append(f"  {s['system']:>6} {s['trainable_params']:>11,} {s['sync_bytes'] / 2**20:>9.2f} "
                     f"{s['sync_seconds']:>7.3f} {s['sync_export_seconds']:>8.3f} {s['sync_load_seconds']:>7.3f} "
                     f"{s['learner_tokens_per_s']:>13.0f} {s['learner_peak_mb']:>8.0f}")
    lines.append(f"  LoRA: {out['sync_bytes_ratio']:.0f}x fewer sync bytes (goal >= {BYTES_GOAL:.0f}x), sync "
                 f"{out['sync_seconds_ratio']:.1f}x faster, learner tokens/s x{out['learner_tokens_per_s_ratio']:.2f}, "
                 f"learner peak x{out['learner_peak_ratio']:.2f} (goal < 1): {'met' if out['goal_met'] else 'NOT met'}")
    return "\n".join(lines)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], model={"choices": ["tiny", "embedded"]})
