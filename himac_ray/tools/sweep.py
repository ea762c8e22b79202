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
import copy
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import yaml

from himac_ray import metrics as M
from himac_ray.config import ConfigError, config_from_dict, config_to_dict, load_config

SPEC_FILE = "sweep.json"
SUMMARY_FILE = "sweep_summary.json"
TABLE_FILE = "sweep_table.txt"
PLOT_FILE = "sweep_curves.png"
DEFAULT_STORAGE = "runs/sweeps"
METRIC, MODE = "success_rate", "max"
TRIAL_HEAD = {"cpu": 0, "memory": 64 * 1024**2}
"""what the trial process itself reserves: no CPU (its samplers and learner reserve their own; Tune
refuses an empty bundle, hence a token of logical memory)"""
TIME_ATTR = "iterations_done"
"""Tune time attribute: himac-ray iterations finished (survives trial restarts, unlike training_iteration)"""
REPORT_KEYS = {
    "success_rate": M.SUCCESS_RATE,
    "mean_return": M.MEAN_RETURN,
    "env_steps": M.ENV_STEPS,
    "invalid_action_rate": M.INVALID_RATE,
    "mean_response_len": M.RESPONSE_LEN,
    "rollout_tokens_per_s": M.ROLLOUT_TOKENS_PER_S,
    "eval_success_rate": M.EVAL_SUCCESS,
}


# ------------------------------------------------------------------ grid


def split_values(text: str) -> list[str]:
    """`2,4,8` -> ['2', '4', '8']; commas inside [] or {} stay (`[6,6],[8,8]` -> two values)."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [v.strip() for v in out]


def parse_grid(items: list[str]) -> dict[str, list]:
    """`["algorithm.group_size=2,4,8"]` -> {"algorithm.group_size": [2, 4, 8]} (values parsed as YAML)."""
    grid: dict[str, list] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like key.sub=v1,v2,...")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in grid:
            raise ConfigError(f"--grid {key} given twice")
        if key == "run.dir":
            raise ConfigError("--grid run.dir: every trial gets its own run.dir inside the experiment directory")
        values = []
        for text in split_values(raw):
            if not text:
                raise ConfigError(f"--grid {item!r}: empty value")
            try:
                values.append(yaml.safe_load(text))
            except yaml.YAMLError as err:
                raise ConfigError(f"--grid {item!r}: cannot parse {text!r}: {err}") from None
        grid[key] = values
    return grid


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination, first key slowest: {"a": [1, 2], "b": [3]} -> [{a: 1, b: 3}, {a: 2, b: 3}]."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def set_dotted(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[parts[-1]] = value


def trial_config_dict(base: dict, params: dict, run_dir: str | Path) -> dict:
    """The base config with a trial's overrides and run.dir, validated."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    set_dotted(data, "run.dir", str(run_dir))
    return config_to_dict(config_from_dict(data))


def _absolute_paths(cfg_dict: dict) -> dict:
    """Relative model folders that exist here become absolute (Tune runs trials in other directories)."""
    for key in ("path", "planner_path"):
        value = cfg_dict["model"].get(key)
        if value and not os.path.isabs(value) and Path(value).exists():
            cfg_dict["model"][key] = str(Path(value).resolve())
    return cfg_dict


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def short_params(params: dict) -> str:
    """`algorithm.group_size=4,learner.lr=1e-06` -> `group_size=4,lr=1e-06` (last key part)."""
    return ",".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in params.items())


class TrialNamer:
    """Tune trial name / directory name: `<trial id>_<short params>` (picklable)."""

    def __init__(self, keys: list[str]):
        self.keys = list(keys)

    def __call__(self, trial) -> str:
        params = {k: trial.config[k] for k in self.keys if k in trial.config}
        name = f"{trial.trial_id}_{short_params(params)}" if params else trial.trial_id
        return "".join(c if c.isalnum() or c in "._=,-" else "-" for c in name)[:120]


# ------------------------------------------------------------------ trial


def report_of(row: dict) -> dict:
    out = {"iteration": int(row[M.ITERATION]), TIME_ATTR: int(row[M.ITERATION]) + 1,
           "trainable": str(row.get(M.TRAINABLE, ""))}
    for name, key in REPORT_KEYS.items():
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _read_rows(run_dir: Path) -> list[dict]:
    try:
        return M.MetricsLog(run_dir).rows()
    except (OSError, ValueError):
        return []


class TrialRun:
    """One trial's training run, driven through a `Coordinator` actor, one iteration per `next()`.

    The run's placement groups belong to the sweep's driver job, not to the trial: `close()` must
    release them (the trainable's `cleanup` calls it, also when Tune stops a trial early), or the
    next trial cannot place its samplers.
    """

    def __init__(self, params: dict, spec: dict, trial_name: str, *, log=print):
        import ray

        from actors.coordinator import Coordinator
        from himac_ray.run_state import latest_checkpoint
        from himac_ray.train import _resolve_models

        self.run_dir = Path(spec["exp_dir"]) / trial_name / "run"
        cfg_dict = trial_config_dict(spec["base"], params, self.run_dir)
        self.cfg = config_from_dict(cfg_dict)
        resume = latest_checkpoint(self.run_dir) is not None
        if not resume and (self.run_dir / "metrics.jsonl").exists():  # an attempt that failed before its first checkpoint
            self.run_dir.rename(self.run_dir.with_name(f"run.failed-{time.strftime('%Y%m%d-%H%M%S')}"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2))
        log(f"[himac-ray sweep] trial {trial_name}: {short_params(params) or 'base config'}; run dir {self.run_dir}"
            + ("; resuming from its latest checkpoint" if resume else ""))
        self.pending: list[dict] = []
        self.reported = -1  # last himac-ray iteration handed to Tune
        self.seen = 0  # rows the coordinator's status has shown
        self.finished = False
        self.coordinator = None
        model_path, planner_path = _resolve_models(self.cfg, self.run_dir, resume, log)
        self.coordinator = Coordinator.remote(cfg_dict, model_path=model_path, planner_path=planner_path)
        try:
            ray.get(self.coordinator.setup.remote())
            self.ref = self.coordinator.run.remote(resume=resume)
        except BaseException:
            self.close()  # setup may have placed samplers before failing
            raise

    def _add(self, rows: list[dict]) -> None:
        known = {r[M.ITERATION] for r in self.pending}
        for row in sorted(rows, key=lambda r: r[M.ITERATION]):
            if row[M.ITERATION] > self.reported and row[M.ITERATION] not in known:
                self.pending.append(row)
                known.add(row[M.ITERATION])
        self.pending.sort(key=lambda r: r[M.ITERATION])

    def _poll(self, timeout: float = 1.0) -> None:
        import ray

        ready, _ = ray.wait([self.ref], timeout=timeout)
        if ready:
            self._add(ray.get(self.ref))  # raises the run's error, if any
            self.finished = True
            return
        status = ray.get(self.coordinator.status.remote())
        last = status.get("last")
        if status.get("done", 0) > self.seen and last:
            if status["done"] - self.seen > 1:  # rows between two polls: the run's log has them
                self._add([r for r in _read_rows(self.run_dir) if r[M.ITERATION] < last[M.ITERATION]])
            self._add([last])
            self.seen = status["done"]

    def next(self) -> dict:
        """The next iteration's report (blocks until it exists); `done` on the run's last one."""
        final = self.cfg.run.iterations - 1
        while not self.finished and not (self.pending and self.pending[0][M.ITERATION] < final):
            self._poll()  # the final row is handed over once the run has checkpointed and returned
        if not self.pending:  # nothing left to run (e.g. a restored trial that had finished)
            rows = _read_rows(self.run_dir)
            return {**(report_of(rows[-1]) if rows else {TIME_ATTR: 0}), "done": True}
        row = self.pending.pop(0)
        self.reported = row[M.ITERATION]
        return {**report_of(row), "done": self.finished and not self.pending}

    def close(self) -> None:
        """Release the run's samplers, learner, env pools and placement groups (idempotent)."""
        import ray

        coordinator, self.coordinator = self.coordinator, None
        if coordinator is None:
            return
        try:
            ray.get(coordinator.shutdown.remote(), timeout=120)
        except ray.exceptions.RayError:
            pass
        ray.kill(coordinator, no_restart=True)


_TRAINABLE = None


def trial_trainable():
    """The Tune trainable class (built on first use: Ray is imported lazily)."""
    global _TRAINABLE
    if _TRAINABLE is None:
        from ray import tune

        class HimacTrial(tune.Trainable):
            """setup: start the run (resuming from its run dir); step: one iteration; cleanup: release it."""

            def setup(self, config, spec=None):
                self.run = None
                self.run = TrialRun(dict(config), spec, self.trial_name)

            def step(self):
                return self.run.next()

            def cleanup(self):
                if self.run is not None:
                    self.run.close()

            def save_checkpoint(self, checkpoint_dir):
                # the run dir's own checkpoints are what a restarted trial resumes from
                reported = self.run.reported if self.run is not None else -1
                Path(checkpoint_dir, "trial.json").write_text(json.dumps({"reported_iteration": reported}))

            def load_checkpoint(self, checkpoint):
                pass

        _TRAINABLE = HimacTrial
    return _TRAINABLE


# ------------------------------------------------------------------ results


def summarize_rows(rows: list[dict]) -> dict:
    """Best training success rate, env steps when first reached, final values; rows in iteration order."""
    rows = sorted({r[M.ITERATION]: r for r in rows}.values(), key=lambda r: r[M.ITERATION])
    if not rows:
        return {"iterations": 0, "best_success": None, "env_steps_to_best": None, "iteration_of_best": None,
                "final_success": None, "final_env_steps": None, "final_mean_return": None}
    best = max(r.get(M.SUCCESS_RATE, 0.0) for r in rows)
    first = next(r for r in rows if r.get(M.SUCCESS_RATE, 0.0) >= best)
    return {
        "iterations": len(rows),
        "best_success": best,
        "env_steps_to_best": int(first.get(M.ENV_STEPS, 0)),
        "iteration_of_best": int(first[M.ITERATION]),
        "final_success": rows[-1].get(M.SUCCESS_RATE),
        "final_env_steps": int(rows[-1].get(M.ENV_STEPS, 0)),
        "final_mean_return": rows[-1].get(M.MEAN_RETURN),
    }


def _rows_from_tune(result) -> list[dict]:
    """Metrics rows rebuilt from Tune's reported results (when the run dir is not readable here)."""
    df = result.metrics_dataframe
    if df is None or "iteration" not in df:
        return []
    rows = []
    for rec in df.to_dict("records"):
        if rec.get("iteration") is None or (isinstance(rec["iteration"], float) and math.isnan(rec["iteration"])):
            continue
        row = {M.ITERATION: int(rec["iteration"]), M.TRAINABLE: rec.get("trainable", "")}
        row.update({key: rec[name] for name, key in REPORT_KEYS.items() if name in rec})
        rows.append(row)
    return rows


def _trial_params(result, run_dir: Path, keys: list[str]) -> dict:
    """The trial's grid values: from Tune, or (a trial that never reported) from its run's config.json."""
    if result.config:
        return {k: result.config.get(k) for k in keys}
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {k: None for k in keys}
    out = {}
    for k in keys:
        node = cfg
        for part in k.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[k] = node
    return out


def collect(result_grid, exp_dir: Path, keys: list[str], points: list[dict]) -> list[dict]:
    """One entry per trial, in grid order: name, params, status, error, summary and metrics rows."""
    trials = []
    for result in result_grid:
        name = Path(result.path).name
        rows = _read_rows(exp_dir / name / "run") or _rows_from_tune(result)
        rows = sorted({r[M.ITERATION]: r for r in rows}.values(), key=lambda r: r[M.ITERATION])
        error = result.error
        last_line = str(error).strip().splitlines()[-1] if error and str(error).strip() else ""
        trials.append({
            "trial": name,
            "params": _trial_params(result, exp_dir / name / "run", keys),
            "status": "ERROR" if error else "OK",
            "error": f"{type(error).__name__}: {last_line}" if error else None,
            "run_dir": str(exp_dir / name / "run"),
            **summarize_rows(rows),
            "rows": rows,
        })
    order = [json.dumps(p, sort_keys=True, default=str) for p in points]

    def position(t):
        key = json.dumps(t["params"], sort_keys=True, default=str)
        return (order.index(key) if key in order else len(order), t["trial"])

    return sorted(trials, key=position)


def trial_id(name: str) -> str:
    """`27938_00001_group_size=4` -> `27938_00001` (Tune's trial id)."""
    return "_".join(name.split("_", 2)[:2])


def format_table(trials: list[dict], keys: list[str]) -> str:
    headers = ["trial", *[k.rsplit(".", 1)[-1] for k in keys], "status", "iters", "best success",
               "env steps to best", "final success"]
    lines = []
    best = max((t["best_success"] for t in trials if t["best_success"] is not None), default=None)
    for t in trials:
        cells = [trial_id(t["trial"]), *[format_value(t["params"].get(k)) for k in keys], t["status"],
                 str(t["iterations"]),
                 "-" if t["best_success"] is None else f"{t['best_success']:.3f}"
                 + (" *" if best is not None and t["best_success"] == best and best > 0 else ""),
                 "-" if t["env_steps_to_best"] is None else str(t["env_steps_to_best"]),
                 "-" if t["final_success"] is None else f"{t['final_success']:.3f}"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)] if lines else [len(h) for h in headers]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*c) for c in lines]
    for t in trials:
        if t["error"]:
            out.append(f"error in {trial_id(t['trial'])}: {t['error']}")
    return "\n".join(out)


def plot_trials(trials: list[dict], path: Path, *, title: str = "") -> Path | None:
    """Success rate and mean return against env steps, one curve per trial."""
    if not any(t["rows"] for t in trials):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for t in trials:
        if not t["rows"]:
            continue
        label = short_params(t["params"]) or t["trial"]
        if t["status"] != "OK":
            label += " (error)"
        x = [r.get(M.ENV_STEPS, r[M.ITERATION]) for r in t["rows"]]
        ax1.plot(x, [r.get(M.SUCCESS_RATE, float("nan")) for r in t["rows"]], marker="o", ms=3, label=label)
        ax2.plot(x, [r.get(M.MEAN_RETURN, float("nan")) for r in t["rows"]], marker="o", ms=3, label=label)
    for ax, ylabel in ((ax1, "train success rate"), (ax2, "mean return")):
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax1.set_ylim(-0.05, 1.05)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(trials: list[dict], exp_dir: Path, keys: list[str], *, title: str = "") -> str:
    table = format_table(trials, keys)
    (exp_dir / TABLE_FILE).write_text(table + "\n")
    summary = [{k: v for k, v in t.items() if k != "rows"} for t in trials]
    (exp_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    plot_trials(trials, exp_dir / PLOT_FILE, title=title)
    return table


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

    from himac_ray.train import init_ray

    keys = list(spec["grid"])
    base_cfg = config_from_dict(spec["base"])
    needs = [trial_resources(config_from_dict(trial_config_dict(spec["base"], p, "/tmp/check")))
             for p in spec["points"]]
    if not (base_cfg.run.ray_address or os.environ.get("RAY_ADDRESS")):
        # a new local head even when another `ray start` instance runs on this machine
        # (ray.init without an address would try to join it)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(max(n["CPU"] for n in needs))),
                 include_dashboard=True, dashboard_host=base_cfg.run.dashboard_host,
                 _node_ip_address=base_cfg.run.node_ip_address, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "VLLM_CONFIGURE_LOGGING": "0"}})
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
