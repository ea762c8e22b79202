"""Rollout throughput: the same model, envs and episodes three ways.

(a) himac-ray: vLLM `SamplerActor`(s) behind a `SamplerPool`, driven by an env-pool actor
    (`RolloutDispatcher` -> `run_rollout`), i.e. the path a training iteration takes.
(b) naive: a per-episode loop (`run_rollout` on one episode at a time) over `HFGenerator`,
    transformers `generate` with batch 1.
(c) raw vLLM: an in-process `LLM.generate` over the SAME prompt token ids that (a) produced,
    each with `max_tokens = min_tokens =` its response length and `ignore_eos`, batched exactly
    as (a)'s decision rounds were (one call per round); also reported as ONE call over every
    prompt (a limit no multi-turn rollout can reach: round r+1's prompts depend on round r).

Figures: generated tokens/s and env steps/s (wall clock of the whole rollout for (a) and (b),
of the generate calls for (c)), ratios a/b and a/c on tokens/s. Every system is warmed up
(one short rollout / generate call) before it is timed. (b) runs fewer episodes in quick mode:
compare rates, not totals.

Usage: `himac-ray bench rollout [--model tiny|embedded] [--full] [--json]` or
`python -m benchmarks.rollout_bench --model tiny`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict

from benchmarks.common import cpu_delta, cpu_snapshot, free_vllm, local_ray, log, machine, opt, ratio, script_main
from himac_ray.generation import SamplingParams

ENV_ID = "himac/Sokoban-v0"
ENV_KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 15}
# Token budgets of configs/sokoban_tiny.yaml and configs/sokoban_embedded_cpu.yaml.
MAX_TOKENS = {"tiny": (48, 24), "embedded": (96, 48)}
# (seeds, group size, naive episodes) per model and mode; (a) and (c) run seeds * group size episodes.
SIZES = {
    ("tiny", "smoke"): (1, 2, 1),
    ("tiny", "quick"): (8, 4, 2),
    ("tiny", "full"): (16, 4, 8),
    ("embedded", "smoke"): (1, 2, 1),
    ("embedded", "quick"): (4, 4, 2),
    ("embedded", "full"): (8, 4, 4),
}
SEED_START = 5000


@dataclasses.dataclass
class Workload:
    model: str
    seeds: list
    group_size: int
    naive_episodes: int
    planner: SamplingParams
    executor: SamplingParams
    max_steps: int = 15
    mode: str = "macro"

    @property
    def episodes(self) -> int:
        return len(self.seeds) * self.group_size

    def call(self, seeds: list[int], *, group_size: int | None = None):
        """The workload's `RolloutCall` over `seeds` (`group_size`: default the workload's)."""
        from himac_ray.rollout_call import EpisodeSettings, RolloutCall

        return RolloutCall(seeds=seeds, mode=self.mode, group_size=group_size or self.group_size,
                           planner_params=self.planner, executor_params=self.executor,
                           settings=EpisodeSettings(max_subgoals=3))


def workload(model: str, size: str) -> Workload:
    n_seeds, group, naive = SIZES[(model, size)]
    plan_tokens, act_tokens = MAX_TOKENS[model]
    # the planner phase of a HiMAC iteration: sampled blueprints, greedy executor (schedule.sampling_params)
    return Workload(
        model=model, seeds=list(range(SEED_START, SEED_START + n_seeds)), group_size=group, naive_episodes=naive,
        planner=SamplingParams(temperature=1.0, max_tokens=plan_tokens, stop=("</plan>",)),
        executor=SamplingParams(temperature=0.0, max_tokens=act_tokens, stop=("<sub_done>",)),
        max_steps=3 if size == "smoke" else 15,
    )


def _env_kwargs(w: Workload) -> dict:
    return {**ENV_KWARGS, "max_steps": w.max_steps}


def _figures(tokens: int, steps: int, seconds: float, episodes: int, cpu_seconds: float, **extra) -> dict:
    return {"gen_tokens": int(tokens), "env_steps": int(steps), "episodes": int(episodes), "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds else 0.0, "env_steps_per_s": steps / seconds if seconds else 0.0,
            "cpu_seconds": cpu_seconds, "tokens_per_cpu_s": tokens / cpu_seconds if cpu_seconds else 0.0, **extra}


# ------------------------------------------------------------------------------------------ (a)
def _threads(_actor) -> int:
    import torch

    return torch.get_num_threads()


def measure_pool(model_path: str, w: Workload):
    """(a): Ray sampler actor + env-pool actor; returns (figures, RolloutResult)."""
    import ray

    from actors.env_pool import RolloutDispatcher
    from actors.sampler import SamplerPool, sampler_group
    from himac_ray.config import ModelConfig, SamplerConfig

    # the training default: one engine, one Ray CPU. Ray gives the actor OMP_NUM_THREADS=1 and vLLM
    # runs its model inside the actor's process: one compute thread. In-process vLLM (c) on this
    # 2-core machine also computes on one thread (its CPU auto-binding reserves the other core
    # for the engine-core process), so (a) and (c) use the same compute.
    cpus = 1
    group = sampler_group(model_path, role="both", model=ModelConfig(path=model_path, max_model_len=2048),
                          sampler=SamplerConfig(num_engines=1, kv_cache_gb=1, cpus_per_engine=cpus))
    actors = group.actors
    dispatcher = RolloutDispatcher(ENV_ID, _env_kwargs(w), num_pools=1, log=log)
    try:
        pool = SamplerPool(actors)
        threads = ray.get(actors[0].__ray_call__.remote(_threads))
        warm = dataclasses.replace(w, seeds=[w.seeds[0] + 10_000], group_size=2)
        dispatcher(warm.call(warm.seeds), generator=pool)  # warm-up (not timed)
        before = ray.get(actors[0].stats.remote())
        cpu0 = cpu_snapshot()
        start = time.perf_counter()
        result = dispatcher(w.call(w.seeds), generator=pool)
        seconds = time.perf_counter() - start
        cpu = cpu_delta(cpu0)
        after = ray.get(actors[0].stats.remote())
    finally:
        dispatcher.shutdown()
        group.shutdown()
    m = result.metrics
    busy = after["busy_seconds"] - before["busy_seconds"]
    figures = _figures(m["gen_tokens"], m["env_steps"], seconds, m["episodes"], cpu, gen_calls=m["gen_calls"],
                       gen_seconds=m["gen_seconds"], env_seconds=m["env_seconds"], vllm_busy_seconds=busy,
                       success_rate=m["success_rate"], invalid_action_rate=m["invalid_action_rate"],
                       sampler_torch_threads=threads, sampler_cpus=cpus)
    return figures, result


# ------------------------------------------------------------------------------------------ (c)
def replay_rounds(records) -> list[list]:
    """(a)'s records grouped into its generate calls: the plan round, then one round per step."""
    rounds = defaultdict(list)
    for r in records:
        rounds[(0, 0) if r.level == "plan" else (1, r.step)].append(r)
    return [rounds[k] for k in sorted(rounds)]


def measure_raw(model_path: str, records, w: Workload) -> dict:
    """(c): in-process vLLM over (a)'s prompts with (a)'s response lengths (ignore_eos)."""
    from vllm import SamplingParams as VSamplingParams
    from vllm.inputs import TokensPrompt

    from himac_ray.engines.vllm_engine import VLLMGenerator

    gen = VLLMGenerator(model_path, seed=0, max_model_len=2048, kv_cache_gb=1)
    try:
        def run(batch) -> tuple[float, int, float]:
            batch = [r for r in batch if r.response_ids]
            params = [VSamplingParams(
                temperature=w.planner.temperature if r.level == "plan" else w.executor.temperature,
                max_tokens=len(r.response_ids), min_tokens=len(r.response_ids), ignore_eos=True, logprobs=0)
                for r in batch]
            prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in batch]
            cpu0 = cpu_snapshot()
            start = time.perf_counter()
            outs = gen.llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - start
            return seconds, sum(len(c.token_ids) for o in outs for c in o.outputs), cpu_delta(cpu0)

        run(records[: min(8, len(records))])  # warm-up (not timed)
        rounds = replay_rounds(records)
        seconds, tokens, cpu = 0.0, 0, 0.0
        for batch in rounds:
            s, t, c = run(batch)
            seconds += s
            tokens += t
            cpu += c
        one_s, one_t, one_cpu = run(records)
    finally:
        free_vllm(gen)
    steps = sum(r.level == "act" for r in records)
    episodes = len({r.traj_id for r in records})
    return {
        "per_round": _figures(tokens, steps, seconds, episodes, cpu, gen_calls=len(rounds)),
        "one_batch": _figures(one_t, steps, one_s, episodes, one_cpu, gen_calls=1),
    }


# ------------------------------------------------------------------------------------------ (b)
def measure_naive(model_path: str, w: Workload) -> dict:
    """(b): one episode at a time, transformers generate with batch 1."""
    import torch

    from himac_ray.engines.hf_engine import HFGenerator

    hf = HFGenerator(model_path)
    warm = w.call([w.seeds[0] + 10_000], group_size=1).run(generator=hf, env_id=ENV_ID,
                                                          env_kwargs={**_env_kwargs(w), "max_steps": 1})
    del warm
    tokens = steps = episodes = 0
    gen_s = env_s = 0.0
    cpu0 = cpu_snapshot()
    start = time.perf_counter()
    # the same seeds as (a), episode by episode (group member j of seed s = episode s, j)
    for k in range(w.naive_episodes):
        seed = w.seeds[k % len(w.seeds)]
        res = w.call([seed], group_size=1).run(generator=hf, env_id=ENV_ID, env_kwargs=_env_kwargs(w))
        tokens += res.metrics["gen_tokens"]
        steps += res.metrics["env_steps"]
        episodes += 1
        gen_s += res.metrics["gen_seconds"]
        env_s += res.metrics["env_seconds"]
    seconds = time.perf_counter() - start
    return _figures(tokens, steps, seconds, episodes, cpu_delta(cpu0), gen_seconds=gen_s, env_seconds=env_s,
                    torch_threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------ driver
def bench_model(model: str, size: str) -> dict:
    from himac_ray.models import resolve_model

    path = str(resolve_model(model))
    w = workload(model, size)
    load = machine().get("load_avg_1m", float("nan"))
    log(f"rollout/{model}: (a) sampler pool via Ray, {w.episodes} episodes ({len(w.seeds)} seeds x G={w.group_size})")
    with local_ray():
        a, result = measure_pool(path, w)
    log(f"rollout/{model}: (a) {a['tokens_per_s']:.0f} tok/s, {a['env_steps_per_s']:.1f} steps/s")
    log(f"rollout/{model}: (c) raw vLLM replay of {len(result.records)} prompts")
    c = measure_raw(path, result.records, w)
    log(f"rollout/{model}: (c) {c['per_round']['tokens_per_s']:.0f} tok/s per round, "
        f"{c['one_batch']['tokens_per_s']:.0f} tok/s one batch")
    log(f"rollout/{model}: (b) naive HF loop, {w.naive_episodes} episodes")
    b = measure_naive(path, w)
    log(f"rollout/{model}: (b) {b['tokens_per_s']:.1f} tok/s")
    return {
        "model": model, "size": size, "load_avg_1m": load, "nproc": os.cpu_count(), "env_id": ENV_ID, "env_kwargs": _env_kwargs(w), "mode": w.mode,
        "group_size": w.group_size, "seeds": len(w.seeds),
        "a_himac_ray": a, "b_naive_hf": b, "c_raw_vllm": c["per_round"], "c_raw_vllm_one_batch": c["one_batch"],
        "ratio_vs_naive_hf": ratio(a["tokens_per_s"], b["tokens_per_s"]),
        "ratio_vs_raw_vllm": ratio(a["tokens_per_s"], c["per_round"]["tokens_per_s"]),
        "ratio_vs_raw_vllm_one_batch": ratio(a["tokens_per_s"], c["one_batch"]["tokens_per_s"]),
        "env_steps_ratio_vs_naive_hf": ratio(a["env_steps_per_s"], b["env_steps_per_s"]),
        "cpu_ratio_vs_naive_hf": ratio(a["tokens_per_cpu_s"], b["tokens_per_cpu_s"]),
        "cpu_ratio_vs_raw_vllm": ratio(a["tokens_per_cpu_s"], c["per_round"]["tokens_per_cpu_s"]),
    }


def format_table(out: dict) -> str:
    lines = []
    for model, r in out["models"].items():
        lines.append(f"rollout bench, model {model}: {r['episodes_a']} episodes of {ENV_ID} 6x6/1 box, "
                     f"macro mode, G={r['group_size']}")
        header = f"  {'system':<34} {'episodes':>8} {'gen tokens':>10} {'env steps':>9} {'seconds':>8} {'tok/s':>8} {'steps/s':>8} {'tok/cpu-s':>9}"
        lines += [header, "  " + "-" * (len(header) - 2)]
        for label, key in (("(a) himac-ray sampler pool (Ray)", "a_himac_ray"), ("(b) naive HF loop (batch 1)", "b_naive_hf"),
                           ("(c) raw vLLM, same rounds", "c_raw_vllm"), ("(c') raw vLLM, one batch", "c_raw_vllm_one_batch")):
            f = r[key]
            lines.append(f"  {label:<34} {f['episodes']:>8} {f['gen_tokens']:>10} {f['env_steps']:>9} {f['seconds']:>8.1f} "
                         f"{f['tokens_per_s']:>8.1f} {f['env_steps_per_s']:>8.2f} {f['tokens_per_cpu_s']:>9.1f}")
        lines.append(f"  a/b = {r['ratio_vs_naive_hf']:.2f} (goal >= 8)   a/c = {r['ratio_vs_raw_vllm']:.2f} (goal >= 0.85)   "
                     f"a/c' = {r['ratio_vs_raw_vllm_one_batch']:.2f}")
        lines.append(f"  per CPU-second: a/b = {r['cpu_ratio_vs_naive_hf']:.2f}   a/c = {r['cpu_ratio_vs_raw_vllm']:.2f}   "
                     f"(load average before the run: {r.get('load_avg_1m', float('nan')):.1f} on {r.get('nproc', '?')} cores)")
    return "\n".join(lines)


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench rollout`: options `model` (tiny | embedded | both; quick default tiny, full
    default both) and `size` (smoke | quick | full)."""
    size = opt(args, "size", "quick" if quick else "full")
    model_opt = opt(args, "model", "tiny" if quick else "both")
    models = ["tiny", "embedded"] if model_opt == "both" else [model_opt]
    out = {"bench": "rollout", "size": size, "machine": machine(), "models": {}}
    for model in models:
        r = bench_model(model, size)
        r["episodes_a"] = r["a_himac_ray"]["episodes"]
        out["models"][model] = r
    first = out["models"][models[0]]
    # top-level keys: the first model's figures (tiny in quick mode)
    out.update({k: first[k] for k in ("ratio_vs_naive_hf", "ratio_vs_raw_vllm", "ratio_vs_raw_vllm_one_batch")})
    out["tokens_per_s"] = {k: first[k]["tokens_per_s"] for k in ("a_himac_ray", "b_naive_hf", "c_raw_vllm")}
    out["env_steps_per_s"] = {k: first[k]["env_steps_per_s"] for k in ("a_himac_ray", "b_naive_hf", "c_raw_vllm")}
    print(format_table(out), flush=True)
    return out


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], model={"choices": ["tiny", "embedded", "both"]})
