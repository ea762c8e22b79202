"""Where one training iteration's time goes (embedded model, `configs/sokoban_embedded_cpu.yaml`).

Runs real iterations on the driver-side `benchmarks.harness.Stack` (the coordinator's wiring)
and splits each iteration's wall clock into:

- generation: vLLM busy time inside the sampler actor (`LLM.generate`)
- sampler calls: the rest of the rollout's generate calls (chat-template rendering and
  tokenization in the sampler, Ray RPC, pickling samples)
- env: env reset / step time inside the env-pool actor
- rollout driver: prompt building, action parsing, records, returning them through Ray
- advantage: group-relative advantages (`time/advantage`)
- learner compute: `Learner.train_step` inside the rank (`perf/learner_seconds`)
- learner transfer: the rest of `time/learn` (records -> Arrow -> object store -> rank)
- sync: learner safetensors export + sampler in-place reload (`time/sync`)
- bookkeeping: `time/record` (metrics row, env-step counters) + anything between phases

The first iteration (and a tiny rollout before it) is a warm-up and is reported separately.
Full mode alternates planner and executor phases as training does (warm-up = iteration 0, a
planner phase; then an executor and a planner phase); quick mode runs planner phases only. Usage:
`himac-ray bench profile [--full] [--json]`.
"""

from __future__ import annotations

import tempfile

from benchmarks.common import RESULTS_DIR, ROOT, local_ray, log, machine, opt, script_main

CONFIG = ROOT / "configs" / "sokoban_embedded_cpu.yaml"
PARTS = ("generation", "sampler calls", "env", "rollout driver", "advantage", "learner compute", "learner transfer",
         "sync", "bookkeeping")


def load_cfg(run_dir: str, overrides):
    from himac_ray.config import load_config

    # no SFT warm start: it does not change the cost; but without it every group scores the same,
    # so zero-advantage records must still be trained or the learner would be skipped entirely
    # dynamic sampling off: with an untrained model every group ties and it would only add rollouts
    return load_config(CONFIG, [f"run.dir={run_dir}", "run.sft_warmup=false", "run.save_trajectories=false",
                                "run.eval_every=0", "learner.skip_zero_advantage=false",
                                "algorithm.min_informative_groups=0", *overrides])


def collect(overrides, measured: int, extra_syncs: int = 0, warmup_iteration: bool = True) -> dict:
    """Warm-up + `measured` iterations; per-iteration detail; then `extra_syncs` more timed syncs.

    `warmup_iteration=False` replaces the untimed warm-up iteration by the short warm-up rollout
    alone, so the measured iterations start at iteration 0 (a planner phase)."""
    from benchmarks.harness import Stack
    from himac_ray.models import resolve_model

    out = {"config": str(CONFIG.relative_to(ROOT)), "overrides": list(overrides), "iterations": []}
    with tempfile.TemporaryDirectory(prefix="himac-bench-") as tmp, local_ray():
        cfg = load_cfg(tmp, overrides)
        out["algorithm"] = {"groups": cfg.algorithm.num_groups, "group_size": cfg.algorithm.group_size,
                            "max_steps": cfg.env.kwargs.get("max_steps")}
        stack = Stack(cfg, model_path=str(resolve_model(cfg.model.path)))
        try:
            out["startup_seconds"] = stack.startup
            stack.warm_up()
            if warmup_iteration:
                log("profile: warm-up iteration")
                out["warmup"] = detail(stack.iteration())
            for _ in range(measured):
                d = detail(stack.iteration())
                out["iterations"].append(d)
                log(f"profile: iteration {d['iteration']} [{d['trainable']}] {d['wall']:.1f}s: "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in d["parts"].items() if v >= 0.05))
            out["extra_syncs"] = [stack.sync(trainable="executor", version=1000 + i) for i in range(extra_syncs)]
        finally:
            stack.shutdown()
    return out


def env_steps_per_s(iterations: list[dict]) -> float:
    """Env steps per wall second over whole training iterations (rollout, learner, sync, bookkeeping)."""
    return sum(d["env_steps"] for d in iterations) / max(sum(d["wall"] for d in iterations), 1e-9)


def detail(it: dict) -> dict:
    row, ro, sync = it["row"], it["rollout"], it["sync"]
    t = {k[len("time/"):]: v for k, v in row.items() if k.startswith("time/")}
    learner_s = row.get("perf/learner_seconds", row.get("planner/perf/learner_seconds", 0.0))
    parts = {
        "generation": ro["vllm_busy"],
        "sampler calls": max(ro["gen_seconds"] - ro["vllm_busy"], 0.0),
        "env": ro["env_seconds"],
        "rollout driver": max(t["rollout"] - ro["gen_seconds"] - ro["env_seconds"], 0.0),
        "advantage": t["advantage"],
        "learner compute": learner_s,
        "learner transfer": max(t["learn"] - learner_s, 0.0),
        "sync": t["sync"],
        "bookkeeping": t["record"] + max(it["wall"] - sum(t.values()), 0.0),
    }
    return {"iteration": row["iteration"], "trainable": row["trainable"], "mode": row["mode"], "wall": it["wall"],
            "time": t, "parts": parts, "share": {k: v / it["wall"] for k, v in parts.items()},
            "gen_tokens": ro["gen_tokens"], "env_steps": ro["env_steps"], "episodes": ro["episodes"],
            "records": row.get("records"), "learner_tokens": row.get("perf/learner_tokens"),
            "learner_tokens_per_s": row.get("perf/learner_tokens_per_s"),
            "sync_seconds": sync.get("seconds", 0.0), "save_seconds": sync.get("save_seconds", 0.0),
            "reload_seconds": sync.get("reload_seconds", 0.0), "weights_mb": sync.get("bytes", 0) / 2**20}


BEFORE = ("model.dtype=float32", "rollout.prompt_style=verl", "rollout.answer_format=think", "sampler.threads=1",
          "sampler.prefix_caching=false", "rollout.plan_max_tokens=96", "rollout.action_max_tokens=48",
          "algorithm.num_groups=2", "model.max_model_len=2048", "learner.max_len=1536", "learner.mini_batches=1",
          "learner.micro_batch_size=2")
"""the demo config before the fast CPU recipe (issue #14, code e12ca09): float32, verl-agent prompts
with reasoning, one engine thread, no prefix caching, its token caps, 2 groups x G=4"""


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench profile`: option `size` (smoke | quick | full); `--compare` also profiles the
    recipe before the fast CPU recipe (`BEFORE`) in the same run and reports the env-steps/s ratio."""
    size = opt(args, "size", "quick" if quick else "full")
    overrides = {"smoke": ["coevolution.planner_iters=1000", "algorithm.num_groups=1", "algorithm.group_size=2",
                           "env.kwargs.max_steps=3"],
                 "quick": ["coevolution.planner_iters=1000"], "full": []}[size]
    measured = int(opt(args, "iterations", {"smoke": 1, "quick": 2, "full": 2}[size]))
    out = {"bench": "profile", "size": size, "machine": machine(), **collect(overrides, measured)}
    if opt(args, "compare", False):
        # the slow recipe's warm-up iteration alone would take ~10 min here: its measured iterations
        # start right after the warm-up rollout (iteration 0 = planner, 1 = executor: the same phases)
        before = collect([*overrides, *BEFORE], measured, warmup_iteration=False)
        out["before"] = {"overrides": before["overrides"], "iterations": before["iterations"],
                         "env_steps_per_s": env_steps_per_s(before["iterations"])}
        out["env_steps_per_s"] = env_steps_per_s(out["iterations"])
        out["speedup"] = out["env_steps_per_s"] / max(out["before"]["env_steps_per_s"], 1e-9)
        log(f"profile: env steps/s of an iteration {out['env_steps_per_s']:.2f} (fast CPU recipe) vs "
            f"{out['before']['env_steps_per_s']:.2f} (before): {out['speedup']:.1f}x")
    its = out["iterations"]
    out["by_phase"] = {}
    for phase in sorted({d["trainable"] for d in its}):
        ds = [d for d in its if d["trainable"] == phase]
        wall = sum(d["wall"] for d in ds)
        out["by_phase"][phase] = {"wall": wall / len(ds), "parts": {k: sum(d["parts"][k] for d in ds) / len(ds) for k in PARTS},
                                  "share": {k: sum(d["parts"][k] for d in ds) / wall for k in PARTS}}
    wall = sum(d["wall"] for d in its)
    out["share"] = {k: sum(d["parts"][k] for d in its) / wall for k in PARTS}
    out["largest"] = max(out["share"], key=out["share"].get)
    out["sync_share"] = out["share"]["sync"]
    if size != "smoke":
        plot(out, RESULTS_DIR / f"profile{'_compare' if 'before' in out else ''}_{size}.png")
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    a = out["algorithm"]
    lines = [f"profile ({out['config']} {' '.join(out['overrides'])}; {a['groups']} groups x G={a['group_size']}, "
             f"{a['max_steps']} steps): seconds per iteration"]
    phases = list(out["by_phase"])
    lines.append(f"  {'part':<18}" + "".join(f" {p + ' s':>14} {'share':>6}" for p in phases))
    for k in PARTS:
        lines.append(f"  {k:<18}" + "".join(f" {out['by_phase'][p]['parts'][k]:>14.2f} {100 * out['by_phase'][p]['share'][k]:>5.1f}%"
                                            for p in phases))
    lines.append(f"  {'iteration':<18}" + "".join(f" {out['by_phase'][p]['wall']:>14.2f} {'':>6}" for p in phases))
    lines.append(f"  largest part overall: {out['largest']} ({100 * out['share'][out['largest']]:.1f}%); "
                 f"sync {100 * out['sync_share']:.1f}%")
    return "\n".join(lines)


def plot(out: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {p: v["parts"] for p, v in out["by_phase"].items()}
    if "before" in out:  # the recipe before, same phases, for the side-by-side picture
        rows = {f"{p} (fast recipe)": parts for p, parts in rows.items()}
        for d in out["before"]["iterations"]:
            rows[f"{d['trainable']} (before)"] = d["parts"]
    phases = list(rows)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.8 * len(phases)))
    left = [0.0] * len(phases)
    colors = plt.get_cmap("tab10").colors
    for i, k in enumerate(PARTS):
        vals = [rows[p][k] for p in phases]
        ax.barh(phases, vals, left=left, color=colors[i % 10], label=k)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("seconds per iteration")
    ax.set_title("One HiMAC iteration, SmolLM2-135M on 2 CPU cores", fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], iterations={"type": int}, compare={"action": "store_true"})
