"""Learning: HiMAC vs flat GRPO vs flat GiGPO on Sokoban 6x6 / 1 box, same model, warm start and budget.

Setup (every run): the tiny random Llama (`model.path=tiny`, 2 layers) warm-started by SFT on
expert demonstrations (`himac_ray.sft.trainer.sft_from_config`; one warm start per prompt family,
HiMAC planner+executor prompts or flat prompts, built once and shared by all RL seeds and by GRPO
and GiGPO), then RL with the real stack (`benchmarks.harness.Stack`: vLLM sampler, env pool,
DeepSpeed learner, `Trainer`) until the run has used `budget` env steps (HiMAC's micro-phase
pre-pass counts). Held-out success: greedy planner / executor on seeds 0..31 (never trained
on), before RL and after every `eval_every` iterations. Training env seeds are the same
function of the iteration for every algorithm and RL seed; the RL seed sets torch / vLLM seeds.

Per-iteration episodes are held constant: `num_groups = EPISODES_PER_ITER / group_size`.

Reported: success vs env steps per algorithm (mean, min, max over RL seeds), the env steps each
needs to reach the best mean success flat GRPO reaches (goal: HiMAC <= 0.5x GRPO), and HiMAC's
group-size sensitivity (G = 2, 4, 8). Full mode writes `benchmarks/results/learning_full.json` as
it goes (finished runs are skipped when restarted) and the PNGs.

Usage: `himac-ray bench learning [--full] [--json]`; full: `python -m benchmarks.learning_bench --full`.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, ROOT, local_ray, log, machine, opt, script_main

CONFIG = ROOT / "configs" / "sokoban_tiny.yaml"
WORK_DIR = ROOT / "bench_out" / "learning"
ALGOS = ("himac", "grpo", "gigpo")
EPISODES_PER_ITER = 8
SFT = {"sft.episodes": 64, "sft.epochs": 3, "sft.lr": 1e-3, "sft.batch_size": 8}
# token budgets that fit the expert formats (HiMAC executor answers are <= 36 tokens, plans ~60
# (<= 80), flat answers 22): configs/sokoban_tiny.yaml's 48 / 24 would cut HiMAC's answers off
RL = {"learner.lr": 1e-4, "algorithm.kl_coef": 0.01, "learner.micro_batch_size": 8,
      "rollout.executor_temperature": 1.0, "rollout.planner_temperature": 1.0, "rollout.plan_max_tokens": 96,
      "rollout.action_max_tokens": 48}
SIZES = {  # env-step budget, eval every (iterations), RL seeds, algorithms, group sizes (sensitivity)
    "smoke": dict(budget=30, eval_every=1, seeds=[0], algos=("himac",), group_sizes=(), episodes=2, sft_episodes=4,
                  sft_epochs=1, max_steps=3, eval_episodes=2),
    "quick": dict(budget=200, eval_every=1, seeds=[0], algos=ALGOS, group_sizes=(), episodes=EPISODES_PER_ITER,
                  sft_episodes=32, sft_epochs=2, max_steps=15),
    "full": dict(budget=1500, eval_every=2, seeds=[0, 1, 2], algos=ALGOS, group_sizes=(2, 4, 8), group_size_seeds=[0],
                 episodes=EPISODES_PER_ITER, sft_episodes=SFT["sft.episodes"], sft_epochs=SFT["sft.epochs"], max_steps=15),
}


def make_cfg(run_dir: Path, *, algo: str, group_size: int, seed: int, spec: dict, extra=()):
    from himac_ray.config import load_config

    overrides = [f"run.dir={run_dir}", f"algorithm.name={algo}", f"algorithm.group_size={group_size}",
                 f"algorithm.num_groups={max(1, spec['episodes'] // group_size)}", f"run.seed={seed}",
                 f"sampler.seed={seed}", "run.save_trajectories=false", "run.sft_warmup=false",
                 f"env.kwargs.max_steps={spec['max_steps']}", f"sft.episodes={spec['sft_episodes']}",
                 f"sft.epochs={spec['sft_epochs']}", f"sft.lr={SFT['sft.lr']}", f"sft.batch_size={SFT['sft.batch_size']}",
                 *(f"{k}={v}" for k, v in RL.items()), *extra]
    overrides.append(f"env.eval_episodes={spec.get('eval_episodes', 32)}")
    return load_config(CONFIG, overrides)


def warm_start(family: str, spec: dict, size: str) -> str:
    """SFT model folder for 'himac' or 'flat' prompts (built once per size)."""
    from himac_ray.sft.trainer import sft_from_config

    out = WORK_DIR / f"sft_{family}_{size}"
    if (out / "config.json").exists():
        return str(out)
    cfg = make_cfg(WORK_DIR / "sft_cfg", algo="himac" if family == "himac" else "grpo", group_size=4, seed=0, spec=spec)
    t0 = time.perf_counter()
    log(f"learning: SFT warm start ({family} prompts, {cfg.sft.episodes} expert episodes, {cfg.sft.epochs} epochs)")
    sft_from_config(cfg, out)
    log(f"learning: SFT {family} done in {time.perf_counter() - t0:.0f}s")
    return str(out)


def run_one(algo: str, group_size: int, seed: int, spec: dict, model_path: str, run_dir: Path) -> dict:
    """RL from the warm start until `budget` env steps; the held-out success curve."""
    from benchmarks.harness import Stack

    cfg = make_cfg(run_dir, algo=algo, group_size=group_size, seed=seed, spec=spec)
    stack = Stack(cfg, model_path=model_path)
    t0 = time.perf_counter()
    curve, iters = [], []
    try:
        ev = stack.trainer.evaluate()
        curve.append({"iteration": 0, "env_steps": 0, "success": ev["eval/success_rate"]})
        while stack.trainer.state.env_steps < spec["budget"]:
            it = stack.iteration()
            row = it["row"]
            iters.append({k: row[k] for k in row if isinstance(row[k], (int, float, str))} | {"wall": it["wall"]})
            done = stack.trainer.state.iteration
            if done % spec["eval_every"] == 0 or stack.trainer.state.env_steps >= spec["budget"]:
                ev = stack.trainer.evaluate()
                curve.append({"iteration": done, "env_steps": stack.trainer.state.env_steps,
                              "success": ev["eval/success_rate"]})
                log(f"learning: {algo} G={group_size} seed {seed}: iter {done}, {stack.trainer.state.env_steps} env steps, "
                    f"held-out success {ev['eval/success_rate']:.3f}, train success {row['charts/success_rate']:.2f}")
    finally:
        stack.shutdown()
    return {"algo": algo, "group_size": group_size, "seed": seed, "curve": curve, "iterations": iters,
            "seconds": time.perf_counter() - t0}


def success_at(curve: list[dict], steps: float) -> float:
    """Held-out success of the latest evaluation at or before `steps` env steps."""
    best = curve[0]["success"]
    for p in curve:
        if p["env_steps"] <= steps:
            best = p["success"]
    return best


def aggregate(runs: list[dict], budget: int, points: int = 21) -> list[dict]:
    grid = [round(budget * i / (points - 1)) for i in range(points)]
    out = []
    for x in grid:
        vals = [success_at(r["curve"], x) for r in runs]
        out.append({"env_steps": x, "mean": statistics.mean(vals), "min": min(vals), "max": max(vals),
                    "std": statistics.pstdev(vals)})
    return out


def steps_to_reach(agg: list[dict], target: float) -> float | None:
    for p in agg:
        if p["mean"] >= target - 1e-9:
            return p["env_steps"]
    return None


def summarize(out: dict) -> None:
    spec = out["spec"]
    runs = out["runs"]
    out["curves"] = {}
    for algo in spec["algos"]:
        rs = [r for r in runs.values() if r["algo"] == algo and r["group_size"] == 4]
        if rs:
            out["curves"][algo] = aggregate(rs, spec["budget"])
    if "grpo" in out["curves"]:
        best = max(p["mean"] for p in out["curves"]["grpo"])
        out["grpo_best_success"] = best
        out["steps_to_grpo_best"] = {a: steps_to_reach(c, best) for a, c in out["curves"].items()}
        g, h = out["steps_to_grpo_best"].get("grpo"), out["steps_to_grpo_best"].get("himac")
        out["himac_vs_grpo_steps_ratio"] = (h / g) if (g and h is not None) else None
    out["final_success"] = {a: c[-1]["mean"] for a, c in out["curves"].items()}
    out["group_size_curves"] = {}
    for g in spec["group_sizes"]:
        seeds = spec.get("group_size_seeds", spec["seeds"])
        rs = [r for r in runs.values() if r["algo"] == "himac" and r["group_size"] == g and r["seed"] in seeds]
        if rs:
            out["group_size_curves"][str(g)] = aggregate(rs, spec["budget"])


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench learning`: option `size` (smoke | quick | full)."""
    from himac_ray.models import resolve_model

    size = opt(args, "size", "quick" if quick else "full")
    spec = dict(SIZES[size])
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result_path = RESULTS_DIR / f"learning_{size}.json"
    out = {"bench": "learning", "size": size, "machine": machine(), "spec": spec, "sft": SFT, "rl": RL,
           "config": str(CONFIG.relative_to(ROOT)), "runs": {}}
    if size == "full" and result_path.exists():
        out["runs"] = json.loads(result_path.read_text()).get("runs", {})
    resolve_model("tiny")
    models = {}
    jobs = [(a, 4, s) for a in spec["algos"] for s in spec["seeds"]]
    jobs += [("himac", g, s) for g in spec["group_sizes"] if g != 4 for s in spec.get("group_size_seeds", spec["seeds"])]
    for algo, g, seed in jobs:
        key = f"{algo}-G{g}-seed{seed}"
        if key in out["runs"]:
            continue
        family = "himac" if algo == "himac" else "flat"
        if family not in models:
            models[family] = warm_start(family, spec, size)
        with local_ray():
            out["runs"][key] = run_one(algo, g, seed, spec, models[family], WORK_DIR / size / key)
        summarize(out)
        if size != "smoke":
            result_path.write_text(json.dumps(out, indent=1))
    summarize(out)
    if size != "smoke":
        result_path.write_text(json.dumps(out, indent=1))
        plot(out, RESULTS_DIR / f"learning_{size}.png", RESULTS_DIR / f"learning_group_size_{size}.png")
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    spec = out["spec"]
    lines = [f"learning bench ({out['size']}): tiny model + SFT warm start, Sokoban 6x6/1 box, budget {spec['budget']} env "
             f"steps, {len(spec['seeds'])} RL seed(s), held-out success (greedy, 32 seeds)"]
    for algo, c in out["curves"].items():
        pts = "  ".join(f"{p['env_steps']}:{p['mean']:.2f}" for p in c[:: max(1, len(c) // 5)])
        lines.append(f"  {algo:<6} start {c[0]['mean']:.3f} final {c[-1]['mean']:.3f} "
                     f"(min {c[-1]['min']:.3f} max {c[-1]['max']:.3f})   {pts}")
    if "steps_to_grpo_best" in out:
        lines.append(f"  best GRPO mean success {out['grpo_best_success']:.3f}; env steps to reach it: "
                     + ", ".join(f"{a} {s if s is not None else 'never'}" for a, s in out["steps_to_grpo_best"].items()))
        r = out.get("himac_vs_grpo_steps_ratio")
        lines.append(f"  HiMAC / GRPO env steps = {r:.2f} (goal <= 0.5)" if r is not None else
                     "  HiMAC / GRPO env steps: undefined (GRPO reached its best at 0 steps or HiMAC never did)")
    for g, c in out.get("group_size_curves", {}).items():
        lines.append(f"  HiMAC G={g}: start {c[0]['mean']:.3f} final {c[-1]['mean']:.3f}")
    return "\n".join(lines)


def plot(out: dict, path: Path, path_g: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for curves, p, title, fmt in ((out["curves"], path, "HiMAC vs flat GRPO / GiGPO", "{}"),
                                  (out.get("group_size_curves", {}), path_g, "HiMAC group size", "G={}")):
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name, c in curves.items():
            xs = [q["env_steps"] for q in c]
            ax.step(xs, [q["mean"] for q in c], where="post", label=fmt.format(name))
            ax.fill_between(xs, [q["min"] for q in c], [q["max"] for q in c], step="post", alpha=0.15)
        ax.set_xlabel("training env steps")
        ax.set_ylabel("held-out success (32 seeds)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}: tiny Llama + SFT, Sokoban 6x6/1 box ({len(out['spec']['seeds'])} seeds, min-max band)",
                     fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(p, dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0])
