"""Learning: held-out success before and after RL, HiMAC vs flat GRPO vs GiGPO, on the fast CPU recipe.

Setup (every run): the demo recipe (`configs/sokoban_embedded_cpu.yaml`: SmolLM2-135M, compact
prompts, reasoning-free executor answers, dynamic sampling; the full size adds the learning
recipe's overrides, `SIZES["full"]["overrides"]`), warm-started by SFT on expert
demonstrations — one warm start per prompt family (HiMAC planner + executor prompts, or flat
prompts), from the warm-start cache, shared by every RL seed and by GRPO and GiGPO — then RL with
the real stack (`benchmarks.harness.Stack`: vLLM sampler, env pool, DeepSpeed learner, `Trainer`)
until the run has used `budget` env steps (every env step counts: tied groups, dynamic sampling's
extra groups and HiMAC's micro-phase pre-pass) or `max_minutes` of wall clock.

Held-out success: greedy planner and executor on env seeds 0..`eval_episodes`-1 (never trained
on), and beside it the sampled success at the recipe's `env.eval_temperature` (`env.eval_samples`
episodes per room), for the warm start (once per family) and at `eval_points` fractions of the budget. Each run
reports its final success against its warm start as a paired difference over the same rooms
with a 95% percentile-bootstrap interval (`himac_ray.evaluate.paired_interval`), and split by room class
(`ROOM_CLASSES`: straight pushes vs walk-arounds, from the expert's blueprint) with an interval per class.

`--env alfworld` runs the same bench on the built-in ALFWorld replica (`configs/alfworld_embedded_cpu.yaml`,
`ALFWORLD_SIZES`: 128 held-out tasks, greedy only) and reports every evaluation's success by task type
(`extra["task_type"]` of the records) beside the overall one, with a paired 95% interval per type.

Usage: `himac-ray bench learning [--env sokoban|alfworld] [--size smoke|quick|full] [--algos himac,grpo]
[--seeds 0,1,2] [--budget N] [--json]`; results go to `benchmarks/results/learning_recipe_<size>.json`
(Sokoban) or `learning_alfworld_<size>.json` (smoke: into bench_out/, so a smoke run never touches the
results; finished runs are skipped when the same command runs again) and PNGs beside them; each run's final
policy stays in its run directory under bench_out/learning (`FINAL_POLICY`, a model folder).
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import textwrap
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, ROOT, local_ray, log, machine, opt, save_json, script_main
from himac_ray import metrics as M
from himac_ray.atomic import publish_file

CONFIG = ROOT / "configs" / "sokoban_embedded_cpu.yaml"
ALFWORLD_CONFIG = ROOT / "configs" / "alfworld_embedded_cpu.yaml"
WORK_DIR = ROOT / "bench_out" / "learning"
ALGOS = ("himac", "grpo", "gigpo")
FINAL_POLICY = "final_policy"
"""each run's final weights, a model folder inside its run directory (`keep_final_policy`)"""
MAX_DIR_NAME = 120
"""longest run-directory name (the run key is kept whole in the JSON)"""
SIZES = {
    "smoke": dict(model="tiny", budget=20, eval_points=(1.0,), seeds=[0], algos=("himac",), eval_episodes=2,
                  sft_episodes=2, sft_epochs=1, max_steps=3, num_groups=1, max_minutes=10),
    # quick / full: the demo config's SFT settings, so the demo and the bench share one cached warm start
    "quick": dict(model="embedded", budget=300, eval_points=(1.0,), seeds=[0], algos=("himac",), eval_episodes=32,
                  max_steps=10, num_groups=4, max_minutes=20),
    # full: the learning recipe of RESULTS.md 16.1 (session 6) on top of the demo config — 16 tasks per
    # iteration (4-5 informative groups instead of 1-2), two executor iterations per planner one, lr 5e-5
    # x 2 passes, clip-higher; `--set` adds overrides after these and tags the run key with all of them
    "full": dict(model="embedded", budget=8000, eval_points=(0.5, 1.0), seeds=[0, 1, 2], algos=ALGOS, eval_episodes=64,
                 max_steps=10, num_groups=16, max_minutes=45, overrides=(
                     "algorithm.num_groups=16", "algorithm.min_informative_groups=4", "algorithm.max_extra_groups=8",
                     "coevolution.executor_iters=2", "learner.lr=5e-5", "learner.ppo_epochs=2",
                     "algorithm.clip_coef_high=0.28")),
}
"""Sokoban's sizes"""
ALFWORLD_SIZES = {
    # the searching expert wins the two SFT games (seeds 100000-1) in 9 and 8 steps: 12 keeps both
    "smoke": dict(model="tiny", budget=24, eval_points=(1.0,), seeds=[0], algos=("himac",), eval_episodes=3,
                  sft_episodes=2, sft_epochs=1, max_steps=12, num_groups=1, max_minutes=10),
    # quick / full: the config's SFT settings (one cached warm start per prompt family)
    "quick": dict(model="embedded", budget=400, eval_points=(1.0,), seeds=[0], algos=("himac",), eval_episodes=32,
                  max_steps=20, num_groups=4, max_minutes=20),
    # full: on a 2-core AVX2 CPU (float32) a 128-task greedy evaluation the warm start fails is ~2,560 env
    # steps, ~16 min (32 tasks took 5 min); the RL loop stops at the budget or after `max_minutes` (the warm
    # start's evaluation included), then the final evaluation runs: <= ~60 min per run. 4 tasks per
    # iteration: an executor update trains ~320 records of ~330 tokens (invalid-action penalties make
    # almost every group informative), minutes of learner time each
    "full": dict(model="embedded", budget=2000, eval_points=(1.0,), seeds=[0], algos=("himac", "grpo"),
                 eval_episodes=128, max_steps=20, num_groups=4, max_minutes=36),
}
"""ALFWorld's sizes"""
ENVS = {
    "sokoban": dict(config=CONFIG, sizes=SIZES, results="learning_recipe", label="Sokoban 6x6/1 box", unit="rooms"),
    "alfworld": dict(config=ALFWORLD_CONFIG, sizes=ALFWORLD_SIZES, results="learning_alfworld",
                     label="ALFWorld (built-in, 6 task types)", unit="tasks"),
}
"""`--env` choices: base config, size table, result-file stem, title and what a held-out episode is"""
DEFAULT_ENV = "sokoban"


def make_cfg(run_dir: Path, *, algo: str, seed: int, spec: dict, extra=()):
    from himac_ray.config import load_config

    overrides = [f"run.dir={run_dir}", f"model.path={spec['model']}", f"algorithm.name={algo}", f"run.seed={seed}",
                 f"sampler.seed={seed}", "run.save_trajectories=false", "run.sft_warmup=false",
                 f"algorithm.num_groups={spec['num_groups']}", f"env.kwargs.max_steps={spec['max_steps']}",
                 f"env.eval_episodes={spec['eval_episodes']}", *spec.get("overrides", ()), *extra]
    if "sft_episodes" in spec:
        overrides += [f"sft.episodes={spec['sft_episodes']}", f"sft.epochs={spec['sft_epochs']}"]
    return load_config(ENVS[spec.get("env", DEFAULT_ENV)]["config"], overrides)


def warm_start(algo: str, spec: dict, *, build: bool = True) -> str:
    """The cached SFT warm start of `algo`'s prompt family (built on first use unless `build` is False)."""
    from himac_ray.models import resolve_model
    from himac_ray.sft.trainer import sft_from_config
    from himac_ray.warm_start import is_built, warm_start_dir, write_key

    cfg = make_cfg(WORK_DIR / "sft_cfg", algo=algo, seed=0, spec=spec)
    base = resolve_model(cfg.model.path)
    out = warm_start_dir(cfg, base)
    if build and not is_built(out):
        t0 = time.perf_counter()
        log(f"learning: SFT warm start for {algo} ({cfg.sft.episodes} expert episodes x {cfg.sft.epochs} epochs) -> {out}")
        sft_from_config(cfg, out)
        write_key(cfg, base, out)
        log(f"learning: SFT done in {time.perf_counter() - t0:.0f}s")
    return str(out)


def evaluate(stack, cfg) -> dict:
    """Greedy held-out success (and the sampled one under "sampled" when the recipe sets
    `env.eval_temperature`); with task types (ALFWorld), the greedy success of each under "by_task_type"
    and each task's type under "task_type_by_seed"."""
    from himac_ray.evaluate import SAMPLED, run_eval

    t0 = time.perf_counter()
    out = run_eval(cfg, stack.rollout)
    ev = {"success": out["success_rate"], "won_by_seed": out["won_by_seed"], "seconds": time.perf_counter() - t0}
    if set(out["by_task_type"]) != {"all"}:  # Sokoban's records carry no task type
        ev["by_task_type"] = {t: {"success": s["success_rate"], "tasks": s["episodes"]}
                              for t, s in out["by_task_type"].items()}
        ev["task_type_by_seed"] = out["task_type_by_seed"]
    if SAMPLED in out:
        s = out[SAMPLED]
        ev[SAMPLED] = {"success": s["success_rate"], "won_by_seed": s["won_by_seed"],
                       "temperature": s["temperature"], "samples": s["samples"]}
    return ev


def start_eval_key(model: str, algo: str, spec: dict) -> str:
    """What the warm start's evaluation is shared under: by the seeds and algorithms that start from
    it (same warm-start folder, same held-out rooms and evaluation settings), never by others."""
    cfg = make_cfg(WORK_DIR / "sft_cfg", algo=algo, seed=0, spec=spec)
    return f"{Path(model).name}:rooms{cfg.env.eval_episodes}:T{cfg.env.eval_temperature:g}x{cfg.env.eval_samples}"


def sampled_rise(start: dict, final: dict) -> dict:
    """The sampled evaluation's paired difference, final vs warm start ({} when not evaluated)."""
    from himac_ray.evaluate import SAMPLED, paired_interval

    if SAMPLED not in start or SAMPLED not in final:
        return {}
    mean, lo, hi = paired_interval(start[SAMPLED]["won_by_seed"], final[SAMPLED]["won_by_seed"])
    return {"start_success": start[SAMPLED]["success"], "final_success": final[SAMPLED]["success"],
            "rise": mean, "rise_ci95": [lo, hi], "temperature": final[SAMPLED]["temperature"],
            "samples": final[SAMPLED]["samples"]}


ROOM_CLASSES = ("straight push", "walk-around")
"""Sokoban's held-out rooms by the expert's blueprint: one subgoal (1-2 pushes in a line) or more (push,
walk around the box, push again: 4-7 steps)"""


def room_classes(env_cfg, seeds) -> dict[str, str]:
    """Sokoban room (env seed, as str) -> its ROOM_CLASSES entry, from the built-in expert's blueprint."""
    import gymnasium as gym

    import himac_ray.envs  # noqa: F401  (registers the env ids)

    env = gym.make(env_cfg.id, **env_cfg.kwargs)
    try:
        out = {}
        for seed in seeds:
            env.reset(seed=int(seed))
            out[str(seed)] = ROOM_CLASSES[len(env.unwrapped.expert_subgoals()) > 1]
        return out
    finally:
        env.close()


def rise_by_task_type(start: dict, final: dict, types: dict[str, str] | None = None) -> dict:
    """Per task type: greedy success of the warm start and of the final policy, and their paired
    difference over that type's tasks with a 95% interval ({} without task types). `types` (room ->
    type) stands in where the evaluations carry none (Sokoban's room classes)."""
    from himac_ray.evaluate import paired_interval

    if final.get("task_type_by_seed") and start.get("task_type_by_seed"):
        types = final["task_type_by_seed"]
    if not types:
        return {}
    out = {}
    for t in sorted(set(types.values())):
        seeds = [s for s, ts in types.items() if ts == t and s in start["won_by_seed"]]
        if not seeds:
            continue
        before = {s: start["won_by_seed"][s] for s in seeds}
        after = {s: final["won_by_seed"][s] for s in seeds}
        mean, lo, hi = paired_interval(before, after)
        out[t] = {"tasks": len(seeds), "start_success": statistics.mean(before.values()),
                  "final_success": statistics.mean(after.values()), "rise": mean, "rise_ci95": [lo, hi]}
    return out


def run_one(algo: str, seed: int, spec: dict, model_path: str, run_dir: Path, start: dict | None) -> dict:
    """RL from the warm start until the budget; held-out evaluations at the spec's points."""
    from benchmarks.harness import Stack
    from himac_ray.evaluate import paired_interval

    cfg = make_cfg(run_dir, algo=algo, seed=seed, spec=spec)
    stack = Stack(cfg, model_path=model_path)
    t0 = time.perf_counter()
    iters = []
    try:
        start = start or evaluate(stack, cfg)
        curve = [{"iteration": 0, "env_steps": 0, "success": start["success"],
                  "sampled_success": start.get("sampled", {}).get("success")}]
        evals = [{"env_steps": 0, **start}]
        points = [p * spec["budget"] for p in spec["eval_points"]]
        while points:
            it = stack.iteration()
            row = it["row"]
            iters.append({k: v for k, v in row.items() if isinstance(v, (int, float, str))} | {"wall": it["wall"]})
            steps = stack.trainer.state.env_steps
            sizes = ", ".join(f"{level} {row[key]:.1f}" for level, key in M.GROUP_SIZE_MEAN.items() if key in row)
            log(f"learning: {algo} seed {seed}: iter {row['iteration']} [{row['trainable']}] train success "
                f"{row['charts/success_rate']:.2f}, informative {row.get(M.GROUPS_INFORMATIVE_FRACTION, 0):.2f}, "
                f"members per group: {sizes}, {steps} env steps, {it['wall']:.0f}s")
            out_of_time = time.perf_counter() - t0 > 60 * spec["max_minutes"]
            if steps >= points[0] or out_of_time:
                while points and steps >= points[0]:
                    points.pop(0)
                ev = evaluate(stack, cfg)
                evals.append({"env_steps": steps, **ev})
                curve.append({"iteration": stack.trainer.state.iteration, "env_steps": steps, "success": ev["success"],
                              "sampled_success": ev.get("sampled", {}).get("success")})
                sampled = (f"; sampled {ev['sampled']['success']:.3f} (warm start {start['sampled']['success']:.3f})"
                           if "sampled" in ev and "sampled" in start else "")
                log(f"learning: {algo} seed {seed}: iter {stack.trainer.state.iteration}, {steps} env steps, "
                    f"held-out greedy {ev['success']:.3f} (warm start {start['success']:.3f}){sampled}")
                if out_of_time:
                    log(f"learning: {algo} seed {seed}: stopped at the {spec['max_minutes']}-minute cap")
                    break
        final_policy = keep_final_policy(stack, model_path, run_dir)
    finally:
        stack.shutdown()
    mean, lo, hi = paired_interval(start["won_by_seed"], evals[-1]["won_by_seed"])
    classes = room_classes(cfg.env, start["won_by_seed"]) if spec.get("env", DEFAULT_ENV) == DEFAULT_ENV else None
    return {"algo": algo, "seed": seed, "curve": curve, "evals": evals, "iterations": iters,
            "start_success": start["success"], "final_success": evals[-1]["success"],
            "rise": mean, "rise_ci95": [lo, hi], "sampled": sampled_rise(start, evals[-1]),
            "by_task_type": rise_by_task_type(start, evals[-1], classes), "env_steps": stack.trainer.state.env_steps,
            "seconds": time.perf_counter() - t0, "final_policy": str(final_policy), "start_eval": start}


def keep_final_policy(stack, warm_start_path: str, run_dir: Path) -> Path:
    """The run's final policy as a model folder, `run_dir/FINAL_POLICY`: the warm start's config and tokenizer
    with the learner's weights in the serving dtype (what the diagnostics in `benchmarks/results` take as
    MODEL_DIR, e.g. `level_swap_diag.py`). One folder per run, replaced by a rerun of the same key. With two
    policies (per-level LoRA adapters, two models) it holds the executor's weights only."""
    import shutil

    from himac_ray.warm_start import KEY_FILE

    out = run_dir / FINAL_POLICY
    shutil.copytree(warm_start_path, out, ignore=shutil.ignore_patterns("*.safetensors", KEY_FILE, "sft_*"),
                    dirs_exist_ok=True)
    stack.learner.save_weights(out / "model.safetensors", policy="executor")
    return out


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


def family(spec: dict) -> str:
    """What runs are averaged over seeds and compared across algorithms within: the `--set` overrides
    and the recipe's HiMAC warm-start folder (its key covers model, env, prompts and SFT settings, so a
    prompt or SFT change makes a new family under the same overrides; all algorithms share it)."""
    tag = ",".join(spec.get("overrides", ()))
    return (f"[{tag}]" if tag else "") + f"@{Path(warm_start('himac', spec, build=False)).name}"


def run_family(run: dict) -> str:
    """A run's family (runs of sessions before families were recorded: `[overrides]` or "")."""
    if "family" in run:
        return run["family"]
    return f"[{run['variant']}]" if run.get("variant") else ""


def mean_rise_interval(runs: list[dict]) -> list[float] | None:
    """Paired 95% interval of the seeds' mean rise (first to last held-out evaluation): each room's rise is averaged
    over the seeds, then rooms are resampled (`paired_interval`). It measures the room sampling of the mean; the
    seed-to-seed spread shows in the per-seed intervals. None if a run has no per-room evaluations."""
    from himac_ray.evaluate import paired_interval

    if not all(r.get("evals") for r in runs):
        return None
    rooms = set.intersection(*(set(r["evals"][0]["won_by_seed"]) & set(r["evals"][-1]["won_by_seed"]) for r in runs))
    before, after = ({room: statistics.mean(r["evals"][i]["won_by_seed"][room] for r in runs) for room in rooms}
                     for i in (0, -1))
    return list(paired_interval(before, after)[1:])


def run_budget(key: str, run: dict, default: int) -> int:
    """A run's env-step budget: recorded in the run, else in its key (`<algo>-seed<s>-budget<N><family>`), else
    `default` (the command's)."""
    if "budget" in run:
        return run["budget"]
    found = re.search(r"-budget(\d+)", key)
    return int(found.group(1)) if found else default


def summarize(out: dict) -> None:
    """Curves and means per algorithm, family (`family`) and budget, over their seeds: named `algo` + family, or
    `algo-budget<N>` + family when the family holds runs of several budgets (a mean never mixes budgets); within
    each family and budget that has flat GRPO runs, GRPO's best mean success and the env steps each algorithm
    needs to reach it (keyed by the family, `-budget<N>` prefixed when the family has several)."""
    spec = out["spec"]
    out["curves"], out["by_algo"], out["grpo_best_success"], out["steps_to_grpo_best"] = {}, {}, {}, {}
    groups: dict[tuple[str, int, str], list[dict]] = {}
    for key, r in out["runs"].items():
        groups.setdefault((run_family(r), run_budget(key, r, spec["budget"]), r["algo"]), []).append(r)
    budgets: dict[str, set[int]] = {}
    for fam, budget, _ in groups:
        budgets.setdefault(fam, set()).add(budget)

    def label(fam: str, budget: int) -> str:
        return (f"-budget{budget}" if len(budgets[fam]) > 1 else "") + fam

    for (fam, budget, algo), rs in sorted(groups.items()):
        name = algo + label(fam, budget)
        out["curves"][name] = aggregate(rs, budget)
        out["by_algo"][name] = {
            "algo": algo, "family": fam, "budget": budget,
            "seeds": [r["seed"] for r in rs], "start": statistics.mean(r["start_success"] for r in rs),
            "final": statistics.mean(r["final_success"] for r in rs), "rise": statistics.mean(r["rise"] for r in rs),
            "rise_ci95": mean_rise_interval(rs), "every_interval_above_0": all(r["rise_ci95"][0] > 0 for r in rs)}
        types = sorted({t for r in rs for t in r.get("by_task_type", {})})
        if types and all(set(r.get("by_task_type", {})) == set(types) for r in rs):
            out["by_algo"][name]["by_task_type"] = {t: {
                k: statistics.mean(r["by_task_type"][t][k] for r in rs) for k in ("start_success", "final_success", "rise")}
                | {"every_interval_above_0": all(r["by_task_type"][t]["rise_ci95"][0] > 0 for r in rs)} for t in types}
        if all(r.get("sampled") for r in rs):
            out["by_algo"][name]["sampled"] = {
                "start": statistics.mean(r["sampled"]["start_success"] for r in rs),
                "final": statistics.mean(r["sampled"]["final_success"] for r in rs),
                "rise": statistics.mean(r["sampled"]["rise"] for r in rs),
                "every_interval_above_0": all(r["sampled"]["rise_ci95"][0] > 0 for r in rs)}
    for fam, budget in sorted({(f, b) for f, b, a in groups if a == "grpo"}):
        where = label(fam, budget)
        best = max(p["mean"] for p in out["curves"]["grpo" + where])
        out["grpo_best_success"][where] = best
        out["steps_to_grpo_best"][where] = {a: steps_to_reach(out["curves"][a + where], best)
                                            for f, b, a in groups if (f, b) == (fam, budget)}


def with_run_options(spec: dict, args) -> dict:
    """`spec` with the command's `seeds`, `budget`, `minutes` (wall-clock cap per run) and `--set`
    overrides (a variant of the recipe, after its own overrides) applied."""
    if opt(args, "seeds"):
        spec["seeds"] = [int(s) for s in str(opt(args, "seeds")).split(",")]
    if opt(args, "budget"):
        spec["budget"] = int(opt(args, "budget"))
    if opt(args, "minutes"):
        spec["max_minutes"] = float(opt(args, "minutes"))
    if opt(args, "overrides"):
        spec["overrides"] = (*spec.get("overrides", ()), *opt(args, "overrides"))
    return spec


def run_dir_name(key: str) -> str:
    """A run key as a directory name: itself while short, else its head and a hash of it (a key
    with several `--set` overrides exceeds the 255-byte file-name limit)."""
    if len(key) <= MAX_DIR_NAME:
        return key
    return f"{key[:MAX_DIR_NAME - 13]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def bench_spec(args, quick: bool) -> dict:
    """The run's spec: the `env`'s size table entry with the command's options applied."""
    env = opt(args, "env", DEFAULT_ENV)
    if env not in ENVS:
        raise ValueError(f"unknown learning-bench env {env!r}; choose one of {list(ENVS)}")
    size = opt(args, "size", "quick" if quick else "full")
    spec = with_run_options(dict(ENVS[env]["sizes"][size], env=env, size=size), args)
    if opt(args, "algos"):
        spec["algos"] = tuple(opt(args, "algos").split(","))
    return spec


def result_path(spec: dict) -> Path:
    """Where the bench's JSON goes (the PNG beside it): benchmarks/results, or bench_out for a smoke run.
    Sokoban's is learning_recipe_<size>.json: learning_<size>.json holds session 3's runs of the earlier
    recipe (RESULTS.md section 5)."""
    folder = WORK_DIR if spec["size"] == "smoke" else RESULTS_DIR
    return folder / f"{ENVS[spec['env']]['results']}_{spec['size']}.json"


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench learning`: options `env` (sokoban | alfworld), `size` (smoke | quick | full),
    `algos`, `seeds`, `budget`, `minutes` (wall-clock cap per run)."""
    spec = bench_spec(args, quick)
    size, env = spec["size"], spec["env"]
    path = result_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    out = {"bench": "learning", "env": env, "size": size, "machine": machine(),
           "config": str(ENVS[env]["config"].relative_to(ROOT)), "runs": {}, "start_evals": {}}
    if size != "smoke" and path.exists():
        saved = json.loads(path.read_text())
        out["runs"], out["start_evals"] = saved.get("runs", {}), saved.get("start_evals", {})
    out["spec"] = spec
    fam = out["family"] = family(spec)
    tag = ",".join(spec.get("overrides", ()))
    # Sokoban's run directories as before; another env's under its own folder
    runs_dir = WORK_DIR / size if env == DEFAULT_ENV else WORK_DIR / env / size
    for algo in spec["algos"]:
        for seed in spec["seeds"]:
            key = f"{algo}-seed{seed}-budget{spec['budget']}{fam}"
            if key in out["runs"]:
                continue
            model = warm_start(algo, spec)
            start_key = start_eval_key(model, algo, spec)
            with local_ray():
                res = run_one(algo, seed, spec, model, runs_dir / run_dir_name(key), out["start_evals"].get(start_key))
            out["start_evals"].setdefault(start_key, res.pop("start_eval"))
            res.pop("start_eval", None)
            res["variant"], res["family"], res["budget"] = tag, fam, spec["budget"]
            res["warm_start"] = start_key
            out["runs"][key] = res
            log(f"learning: {key}: {res['start_success']:.3f} -> {res['final_success']:.3f}, rise {res['rise']:+.3f} "
                f"[{res['rise_ci95'][0]:+.3f}, {res['rise_ci95'][1]:+.3f}] in {res['seconds'] / 60:.1f} min")
            summarize(out)
            save_json(path, out)
    summarize(out)
    save_json(path, out)
    plot(out, path.with_suffix(".png"))
    out["path"] = str(path)
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    spec = out["spec"]
    env = ENVS[spec.get("env", DEFAULT_ENV)]
    lines = [f"learning bench ({out['size']}): {spec['model']} + SFT warm start, {env['label']}, budget "
             f"{spec['budget']} env steps, held-out greedy success on {spec['eval_episodes']} {env['unit']}"]
    for key, r in sorted(out["runs"].items()):
        lines.append(f"  {key:<28} {r['start_success']:.3f} -> {r['final_success']:.3f}  rise {r['rise']:+.3f} "
                     f"95% [{r['rise_ci95'][0]:+.3f}, {r['rise_ci95'][1]:+.3f}]  {r['env_steps']} env steps, "
                     f"{r['seconds'] / 60:.1f} min")
        if r.get("sampled"):
            sr = r["sampled"]
            lines.append(f"  {'':<28} sampled (T={sr['temperature']:g}, {sr['samples']}/room) {sr['start_success']:.3f} -> "
                         f"{sr['final_success']:.3f}  rise {sr['rise']:+.3f} 95% [{sr['rise_ci95'][0]:+.3f}, "
                         f"{sr['rise_ci95'][1]:+.3f}]")
        for t, tr in r.get("by_task_type", {}).items():
            lines.append(f"  {'':<4}{t:<34} {tr['start_success']:.3f} -> {tr['final_success']:.3f}  rise "
                         f"{tr['rise']:+.3f} 95% [{tr['rise_ci95'][0]:+.3f}, {tr['rise_ci95'][1]:+.3f}]  "
                         f"{tr['tasks']} {env['unit']}")
    for algo, a in out.get("by_algo", {}).items():
        ci = f" 95% [{a['rise_ci95'][0]:+.3f}, {a['rise_ci95'][1]:+.3f}] over rooms" if a.get("rise_ci95") else ""
        lines.append(f"  {algo:<6} mean of seeds {a['seeds']}: greedy {a['start']:.3f} -> {a['final']:.3f} "
                     f"(rise {a['rise']:+.3f}{ci}; every seed's interval above 0: {a['every_interval_above_0']})")
        if a.get("sampled"):
            sa = a["sampled"]
            lines.append(f"  {'':<6} sampled {sa['start']:.3f} -> {sa['final']:.3f} (rise {sa['rise']:+.3f}; every "
                         f"seed's interval above 0: {sa['every_interval_above_0']})")
        for t, ta in a.get("by_task_type", {}).items():
            lines.append(f"  {'':<6} {t:<34} greedy {ta['start_success']:.3f} -> {ta['final_success']:.3f} "
                         f"(rise {ta['rise']:+.3f}; every seed's interval above 0: {ta['every_interval_above_0']})")
    for fam, steps in out.get("steps_to_grpo_best", {}).items():
        lines.append(f"  best GRPO mean success {out['grpo_best_success'][fam]:.3f}{fam}; env steps to reach it: "
                     + ", ".join(f"{a} {s if s is not None else 'never'}" for a, s in steps.items()))
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not out["curves"]:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, c in out["curves"].items():
        a = out["by_algo"][name]
        if (a["family"], a["budget"]) != (out["family"], out["spec"]["budget"]):  # the command's (the JSON keeps all)
            continue
        xs = [q["env_steps"] for q in c]
        ax.step(xs, [q["mean"] for q in c], where="post", label=a["algo"])
        ax.fill_between(xs, [q["min"] for q in c], [q["max"] for q in c], step="post", alpha=0.15)
    spec = out["spec"]
    env = ENVS[spec.get("env", DEFAULT_ENV)]
    ax.set_xlabel("training env steps")
    ax.set_ylabel(f"held-out success ({spec['eval_episodes']} {env['unit']})")
    ax.set_ylim(0, 1)
    ax.set_title(f"{spec['model']} + SFT, {env['label']} ({len(spec['seeds'])} seed(s), min-max band)\n"
                 f"{textwrap.fill(out['family'].replace(',', ', '), 120)}", fontsize=7)
    ax.legend()
    fig.tight_layout()
    publish_file(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], algos={}, seeds={}, budget={"type": int})
