"""Sync vs async pipeline (`himac-ray bench pipeline`): env steps per second and idle fractions.

Both modes run the same config, seeds and placement in one process, one after the other, on a
private local Ray instance: the sampler engine on one core (`sampler.threads=1`), the learner rank
on the other (`learner.torch_threads=1`), same iterations (so the same env seeds). Per mode:

- env steps/s: env steps of all iterations / their wall clock (sum of `time/iteration`: from the
  first iteration's start to the last one's end; the final evaluation is outside it);
- sampler idle / learner idle: 1 - busy seconds / that wall clock, from the rows'
  `perf/sampler_busy_fraction` (a rollout running) and `perf/learner_busy_fraction` (a learner step);
- overlap seconds (async) and records dropped as stale.

Sizes: smoke (tiny model, 3 iterations per mode, seconds per iteration), quick (tiny model, 6), full
(the embedded model with the fast CPU recipe, 4 iterations per mode, about 12 minutes here).
`--set key=value` changes the config of both modes (placement and pipeline keys stay the bench's); a full
run with overrides saves `pipeline_full[overrides].json` beside the recipe's `pipeline_full.json`.
Goal (issue #17): async >= 1.5x sync env steps per second.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import RESULTS_DIR, ROOT, local_ray, log, machine, opt, save_json

SIZES = {
    "smoke": {"config": "sokoban_tiny.yaml", "iterations": 3},
    "quick": {"config": "sokoban_tiny.yaml", "iterations": 6},
    # full: from the recipe's cached SFT warm start (the learning bench's): the untrained base model ties
    # every group, so the learner would train nothing and there would be nothing to overlap
    "full": {"config": "sokoban_embedded_cpu.yaml", "iterations": 4, "warm_start": True},
}
PLACEMENT = ("sampler.threads=1", "sampler.cpus_per_engine=1", "learner.torch_threads=1", "learner.cpus_per_rank=1",
             "learner.num_ranks=1", "sampler.num_engines=1")
"""one core for the sampler, one for the learner (the issue's layout on this 2-core machine)"""
COMMON = ("run.eval_every=0", "env.eval_episodes=1", "env.eval_temperature=0", "run.save_trajectories=false",
          "run.checkpoint_every=1000", "run.sft_warmup=false")
MODES = {"sync": ("run.pipeline=sync",), "async": ("run.pipeline=async", "run.max_staleness=1")}


def mode_config(config: str, iterations: int, mode: str, run_dir: Path, overrides: tuple[str, ...] = ()):
    """The TrainConfig of one mode's run: `configs/<config>` with `overrides`, then the bench's placement,
    common and mode keys (which win over an override of the same key)."""
    from himac_ray.config import load_config

    return load_config(ROOT / "configs" / config, [f"run.dir={run_dir}", f"run.iterations={iterations}",
                                                   *overrides, *PLACEMENT, *COMMON, *MODES[mode]])


def run_mode(config: str, iterations: int, mode: str, run_dir: Path, model_path: str | None = None,
             overrides: tuple[str, ...] = ()) -> dict:
    """One training run of `iterations` in `mode` (from `model_path`, else the config's model; `overrides`
    before the bench's own keys); its throughput and idle figures."""
    import ray

    from actors.coordinator import Coordinator
    from himac_ray.config import config_to_dict
    from himac_ray.models import resolve_model

    cfg = mode_config(config, iterations, mode, run_dir, overrides)
    coord = Coordinator.remote(config_to_dict(cfg), model_path=model_path or str(resolve_model(cfg.model.path)))
    try:
        ray.get(coord.setup.remote())
        rows = ray.get(coord.run.remote())
    finally:
        ray.get(coord.shutdown.remote())
        ray.kill(coord)
    return summarize(rows, mode=mode)


def summarize(rows: list[dict], *, mode: str) -> dict:
    """Throughput and idle fractions over all `rows` (the metrics rows of one fresh run)."""
    from himac_ray import metrics as M

    wall = sum(r[M.ITERATION_SECONDS] for r in rows)
    steps = rows[-1][M.ENV_STEPS]
    sampler = sum(r[M.SAMPLER_BUSY] * r[M.ITERATION_SECONDS] for r in rows)
    learner = sum(r[M.LEARNER_BUSY] * r[M.ITERATION_SECONDS] for r in rows)
    return {"mode": mode, "iterations": len(rows), "env_steps": steps, "wall_s": wall,
            "env_steps_per_s": steps / max(wall, 1e-9), "sampler_idle": 1 - sampler / max(wall, 1e-9),
            "learner_idle": 1 - learner / max(wall, 1e-9),
            "overlap_s": sum(r.get(M.OVERLAP_SECONDS, 0.0) for r in rows),
            "dropped_stale": sum(r.get(M.DROPPED_STALE, 0) for r in rows),
            "per_iteration_s": [round(r[M.ITERATION_SECONDS], 2) for r in rows]}


def format_table(out: dict) -> str:
    lines = [f"{'mode':<7}{'iters':>6}{'env steps':>10}{'wall s':>9}{'steps/s':>9}{'sampler idle':>14}"
             f"{'learner idle':>14}{'overlap s':>11}{'dropped':>9}"]
    for m in out["modes"]:
        lines.append(f"{m['mode']:<7}{m['iterations']:>6}{m['env_steps']:>10.0f}{m['wall_s']:>9.1f}"
                     f"{m['env_steps_per_s']:>9.2f}{m['sampler_idle']:>14.2f}{m['learner_idle']:>14.2f}"
                     f"{m['overlap_s']:>11.1f}{m['dropped_stale']:>9}")
    lines.append(f"async / sync env steps per second: {out['speedup']:.2f}x (goal >= 1.5)")
    return "\n".join(lines)


def results_path(overrides: tuple[str, ...]) -> Path:
    """Where a full run saves its JSON: `pipeline_full.json` for the recipe, `pipeline_full[a=1,b=2].json`
    with `--set` overrides (so a variant never overwrites the recipe's figures)."""
    return RESULTS_DIR / (f"pipeline_full[{','.join(overrides)}].json" if overrides else "pipeline_full.json")


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench pipeline`: options `size` (smoke | quick | full) and `overrides` (`--set`)."""
    import tempfile

    size = opt(args, "size", "quick" if quick else "full")
    overrides = tuple(opt(args, "overrides") or ())
    spec = SIZES[size]
    out = {"bench": "pipeline", "size": size, "config": spec["config"], "placement": list(PLACEMENT),
           "overrides": list(overrides), "machine": machine(), "modes": []}
    model = None
    if spec.get("warm_start"):
        from benchmarks import learning_bench

        model = learning_bench.warm_start("himac", learning_bench.SIZES["quick"])
        out["warm_start"] = Path(model).name
    with local_ray(num_cpus=4), tempfile.TemporaryDirectory(prefix="himac-pipeline-") as tmp:
        for mode in MODES:
            log(f"{mode}: {spec['iterations']} iterations of {spec['config']}" + (f" from {model}" if model else ""))
            out["modes"].append(run_mode(spec["config"], spec["iterations"], mode, Path(tmp) / mode, model, overrides))
    sync, async_ = out["modes"]
    out["speedup"] = async_["env_steps_per_s"] / max(sync["env_steps_per_s"], 1e-9)
    print(format_table(out), flush=True)
    if size == "full":
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        save_json(results_path(overrides), out, indent=2)
    return out


if __name__ == "__main__":
    from benchmarks.common import script_main

    script_main(run, "sync vs async pipeline: env steps/s and idle fractions")
