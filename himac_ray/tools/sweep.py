"""`himac-ray sweep`: a Ray Tune grid over config overrides; every trial is a real training run.

    himac-ray sweep --config configs/sweep_tiny_cpu.yaml --grid algorithm.group_size=2,4,8
    himac-ray sweep --config F --grid algorithm.group_size=4,8 --grid learner.lr=1e-6,3e-6 --samples 2
    himac-ray sweep --resume --name NAME            # continue an interrupted sweep

Each grid point (times `--samples` seeds: run.seed, run.seed+1, ...) is one Tune trial. The trial
(a class trainable needing no CPU itself) builds the config with its overrides and its own
`run.dir` (`<experiment dir>/<trial>/run`), starts a `Coordinator` actor, which starts the
samplers, env pools and learner as in `himac-ray train`, and reports every iteration to Tune
(`success_rate`, `mean_return`, `env_steps`, ...) as one Tune step; its `cleanup` releases the
run's actors and placement groups, also when Tune (ASHA) stops it early. A trial that fails is retried once and
continues from its latest checkpoint; a trial that fails twice is marked ERROR and the sweep goes
on. `--resume` restores the experiment (`Tuner.restore(..., resume_errored=True)`): finished
trials are kept, unfinished and errored ones continue from their run's latest checkpoint.

At the end the command prints one line per trial (parameters, best training success rate and
the env steps at which it was first reached) and writes into the experiment directory
`sweep_curves.png` (success rate and mean return against env steps, one curve per trial),
`sweep_summary.json` and `sweep_table.txt`. The trials' resources come from their configs
(samplers + learner); trials run one at a time unless the cluster holds several
(`--max-concurrent` overrides). Ray is imported lazily.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from himac_ray.config import ConfigError, config_from_dict, config_to_dict, load_config
from himac_ray.tools.sweep_grid import (
    PLOT_FILE,
    SUMMARY_FILE,
    TrialNamer,
    collect,
    grid_points,
    parse_grid,
    short_params,
    trial_config_dict,
    write_results,
)
from himac_ray.tools.sweep_trial import TIME_ATTR, trial_trainable

SPEC_FILE = "sweep.json"
DEFAULT_STORAGE = "runs/sweeps"
METRIC, MODE = "success_rate", "max"
TRIAL_HEAD = {"cpu": 0, "memory": 64 * 1024**2}
"""what the trial process itself reserves: no CPU (its samplers and learner reserve their own; Tune
refuses an empty bundle, hence a token of logical memory)"""


# ------------------------------------------------------------------ command


def add_arguments(parser: argparse.ArgumentParser, *, config_args: bool = True) -> argparse.ArgumentParser:
    """The `sweep` options (pass `config_args=False` when the parser already has --config/--set)."""
    if config_args:
        parser.add_argument("--config", help="YAML config file (see configs/)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override one config key for every trial (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a config key and the values to try, e.g. algorithm.group_size=2,4,8 (repeatable: "
                             "the grid is every combination)")
    parser.add_argument("--samples", type=int, default=1,
                        help="seeds per grid point (run.seed, run.seed+1, ...)")
    parser.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                        help="fifo: run every trial to the end; asha: stop trials with a low success rate early")
    parser.add_argument("--name", help="experiment name (default: sweep_<config>_<time>); with --resume: which sweep")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=f"folder holding experiments (default {DEFAULT_STORAGE})")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="trials running at once (default: as many as the cluster's CPUs/GPUs hold, at least 1)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep (the latest one in --storage unless --name is given)")
    return parser


def trial_resources(cfg) -> dict[str, float]:
    """CPUs / GPUs one training run's samplers and learner reserve."""
    policies = 2 if cfg.model.planner_path else 1
    s, lrn = cfg.sampler, cfg.learner
    return {"CPU": policies * s.num_engines * s.cpus_per_engine + lrn.num_ranks * lrn.cpus_per_rank,
            "GPU": policies * s.num_engines * s.gpus_per_engine + lrn.num_ranks * lrn.gpus_per_rank}


def max_concurrent(needs: list[dict[str, float]], cluster: dict[str, float]) -> int:
    """How many of the most demanding trial fit the cluster at once (at least 1)."""
    fits = []
    for res in ("CPU", "GPU"):
        need = max((n.get(res, 0.0) for n in needs), default=0.0)
        if need > 0:
            fits.append(int(cluster.get(res, 0.0) // need))
    return max(1, min(fits)) if fits else 1


def _absolute_paths(cfg_dict: dict) -> dict:
    """Relative model folders that exist here become absolute (Tune runs trials in other directories)."""
    for key in ("path", "planner_path"):
        value = cfg_dict["model"].get(key)
        if value and not os.path.isabs(value) and Path(value).exists():
            cfg_dict["model"][key] = str(Path(value).resolve())
    return cfg_dict


def build_spec(args) -> dict:
    """Validated base config, grid and trial points for a new sweep (raises ConfigError)."""
    grid = parse_grid(args.grid)
    if args.samples < 1:
        raise ConfigError(f"--samples={args.samples} must be >= 1")
    base_cfg = load_config(args.config, args.overrides)
    if args.samples > 1:
        if "run.seed" in grid:
            raise ConfigError("--samples varies run.seed: do not also put run.seed in --grid")
        grid["run.seed"] = [base_cfg.run.seed + i for i in range(args.samples)]
    if not grid:
        raise ConfigError("give at least one --grid key=v1,v2,... (or --samples > 1)")
    base = _absolute_paths(config_to_dict(base_cfg))
    points = grid_points(grid)
    for point in points:  # every trial's config is valid before anything starts
        try:
            trial_config_dict(base, point, "/tmp/check")
        except ConfigError as err:
            raise ConfigError(f"grid point {short_params(point)}: {err}") from None
    return {"config": args.config, "overrides": list(args.overrides), "grid": grid, "base": base,
            "points": points, "scheduler": args.scheduler}


def _latest_sweep(storage: Path) -> Path | None:
    specs = sorted(storage.glob(f"*/{SPEC_FILE}"), key=lambda p: p.stat().st_mtime)
    return specs[-1].parent if specs else None


def run(args) -> int:
    """Execute parsed `sweep` arguments; returns the exit code."""
    storage = Path(args.storage).expanduser().resolve()  # Tune needs an absolute storage path
    try:
        if args.resume:
            exp_dir = storage / args.name if args.name else _latest_sweep(storage)
            if exp_dir is None or not (exp_dir / SPEC_FILE).exists():
                print(f"himac-ray sweep: no sweep to resume in {storage}"
                      + (f" named {args.name}" if args.name else ""), file=sys.stderr)
                return 2
            spec = json.loads((exp_dir / SPEC_FILE).read_text())
            if args.grid or args.overrides or args.config:
                print("[himac-ray sweep] --resume: config, --set and --grid are read from "
                      f"{exp_dir / SPEC_FILE}", flush=True)
        else:
            spec = build_spec(args)
            stem = Path(args.config).stem if args.config else "default"
            name = args.name or f"sweep_{stem}_{time.strftime('%Y%m%d_%H%M%S')}"
            exp_dir = storage / name
            if (exp_dir / SPEC_FILE).exists():
                print(f"himac-ray sweep: {exp_dir} already holds a sweep; continue it with --resume --name {name} "
                      "or pick another --name", file=sys.stderr)
                return 2
    except ConfigError as err:
        print(f"himac-ray sweep: config error: {err}", file=sys.stderr)
        return 2
    spec["exp_dir"] = str(exp_dir)
    return _run_tune(spec, args, exp_dir)


def _run_tune(spec: dict, args, exp_dir: Path) -> int:
    import ray
    from ray import tune

    from himac_ray.train import init_ray, local_ray_options, loopback_head

    keys = list(spec["grid"])
    base_cfg = config_from_dict(spec["base"])
    needs = [trial_resources(config_from_dict(trial_config_dict(spec["base"], p, "/tmp/check")))
             for p in spec["points"]]
    if not (base_cfg.run.ray_address or os.environ.get("RAY_ADDRESS")):
        # a new local head even when another `ray start` instance runs on this machine
        # (ray.init without an address would try to join it)
        # (the run's local-head options, with CPUs for the largest trial)
        options = {**local_ray_options(base_cfg),
                   "num_cpus": max(os.cpu_count() or 1, math.ceil(max(n["CPU"] for n in needs)))}
        with loopback_head(base_cfg.run.node_ip_address):
            ray.init(address="local", **options)
    init_ray(base_cfg)  # connects to run.ray_address / $RAY_ADDRESS (no-op when started above)
    trainable = tune.with_resources(tune.with_parameters(trial_trainable(), spec=spec), TRIAL_HEAD)
    start = time.time()
    if args.resume:
        print(f"[himac-ray sweep] resuming {exp_dir}", flush=True)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        concurrent = args.max_concurrent or max_concurrent(needs, ray.cluster_resources())
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / SPEC_FILE).write_text(json.dumps({k: v for k, v in spec.items() if k != "exp_dir"}, indent=2))
        print(f"[himac-ray sweep] {len(spec['points'])} trial(s) over {', '.join(keys)}; "
              f"{concurrent} at a time (each needs {needs[0]}); experiment dir {exp_dir}", flush=True)
        scheduler = None
        if spec["scheduler"] == "asha":
            from ray.tune.schedulers import ASHAScheduler

            iters = base_cfg.run.iterations
            scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=iters, grace_period=max(1, iters // 4),
                                      reduction_factor=2)
        namer = TrialNamer(keys)
        tuner = tune.Tuner(
            trainable,
            param_space={k: tune.grid_search(v) for k, v in spec["grid"].items()},
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler,
                                        max_concurrent_trials=concurrent, trial_name_creator=namer,
                                        trial_dirname_creator=namer),
            run_config=tune.RunConfig(name=exp_dir.name, storage_path=str(exp_dir.parent),
                                      failure_config=tune.FailureConfig(max_failures=1), verbose=1),
        )
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        print(f"himac-ray sweep: interrupted; continue with: himac-ray sweep --resume --name {exp_dir.name} "
              f"--storage {exp_dir.parent}", file=sys.stderr)
        return 130
    trials = collect(results, exp_dir, keys, spec["points"])
    title = f"sweep over {', '.join(keys)} ({Path(spec['config']).name if spec.get('config') else 'defaults'})"
    table = write_results(trials, exp_dir, keys, title=title)
    print(f"\n{table}\n")
    print(f"[himac-ray sweep] {len(trials)} trial(s) in {time.time() - start:.0f}s; "
          f"{exp_dir / PLOT_FILE}, {exp_dir / SUMMARY_FILE}")
    errored = [t for t in trials if t["status"] != "OK"]
    if errored:
        print(f"[himac-ray sweep] {len(errored)} trial(s) failed; rerun them with: himac-ray sweep --resume "
              f"--name {exp_dir.name} --storage {exp_dir.parent}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m himac_ray.tools.sweep", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
