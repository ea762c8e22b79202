"""Training entry point: `himac-ray train ...` and `python -m himac_ray.train ...` (for `ray job submit`).

Connects to `run.ray_address` / `$RAY_ADDRESS`, or starts a local Ray head whose dashboard binds
to `run.dashboard_host` and every other endpoint to `run.node_ip_address` (both 127.0.0.1 by
default: the dashboard runs submitted jobs). Every input is checked (`check_inputs`) before an
earlier run is moved aside or Ray starts. Optionally warm-starts the policy by SFT on the envs'
experts, then drives the `Coordinator` actor with a progress bar. Imports Ray and the actors lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from himac_ray import metrics as M
from himac_ray.atomic import publish_file
from himac_ray.config import ConfigError, TrainConfig, config_to_dict, load_config
from himac_ray.run_state import (
    RunStateError,
    check_run_dir,
    checkpoint_problem,
    complete_checkpoints,
    config_changes,
    latest_checkpoint,
    prepare_run_dir,
)

SFT_DIR = "sft_model"
WARM_START_POINTER = "warm_start.json"
"""in the run directory: which cached warm start the run trains from"""


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although the config differs from the run's config.json")
    return parser


RAY_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "VLLM_CONFIGURE_LOGGING": "0"}}


def local_ray_options(cfg: TrainConfig) -> dict:
    """`ray.init` arguments of a new local head: the dashboard on `run.dashboard_host`, every other
    endpoint (GCS, raylet, dashboard agent, metrics export) on `run.node_ip_address` (Ray binds
    them to loopback when the node address is loopback; both default to 127.0.0.1)."""
    needed = cfg.sampler.num_engines * cfg.sampler.cpus_per_engine * (2 if cfg.model.planner_path else 1)
    needed += cfg.learner.num_ranks * cfg.learner.cpus_per_rank
    return {"num_cpus": max(os.cpu_count() or 1, int(needed + 0.999)), "include_dashboard": True,
            "dashboard_host": cfg.run.dashboard_host, "_node_ip_address": cfg.run.node_ip_address,
            "runtime_env": RAY_ENV}


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def loopback_head(host: str):
    """Around a `ray.init` that starts a head on `host` or connects to a head at `host`: keep a
    loopback host loopback.

    Ray 2.60's `ray.init` replaces a loopback address by the machine's reachable IP
    (`services.resolve_ip_for_localhost`): a started head's GCS, raylet, workers and dashboard agent
    would listen on that IP and on 0.0.0.0, and a driver connecting to "127.0.0.1:<port>" would dial
    "<machine IP>:<port>", where a loopback head does not listen (it retries until it times out).
    Ray keeps loopback where it runs single-machine heads (`ray_constants.ENABLE_RAY_CLUSTER` false,
    its default on macOS and Windows): this sets that for the block only (started processes get the
    address on their command lines). Any other host (a head meant to be reached from other
    machines) is left as it is."""
    import ray._private.ray_constants as ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    if host in LOOPBACK_HOSTS:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def address_host(address: str) -> str:
    """The host of a Ray address: "127.0.0.1" for "127.0.0.1:6379" or "ray://127.0.0.1:10001";
    "auto" and other forms without a port come back whole."""
    host = address.split("://", 1)[-1]
    return host.rsplit(":", 1)[0].strip("[]") if ":" in host else host


def start_local_head(**ray_init_kwargs):
    """`ray.init` of a private head on this machine (address "local": never a running cluster),
    listening on loopback only (`loopback_head`); other arguments pass through. Returns Ray's context."""
    import ray

    with loopback_head("127.0.0.1"):
        return ray.init(address="local", _node_ip_address="127.0.0.1", **ray_init_kwargs)


def init_ray(cfg: TrainConfig, *, log=print):
    """Connect to an existing cluster or start a local head (`local_ray_options`)."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        with loopback_head(address_host(address)):
            ctx = ray.init(address=address, runtime_env=RAY_ENV, log_to_driver=True)
        log(f"[himac-ray] connected to Ray at {address}")
    else:
        with loopback_head(cfg.run.node_ip_address):
            ctx = ray.init(**local_ray_options(cfg))
        url = getattr(ctx, "dashboard_url", "") or ""
        log(f"[himac-ray] local Ray started; dashboard: http://{url}" if url else "[himac-ray] local Ray started")
    return ctx


def _resolve_models(cfg: TrainConfig, run_dir: Path, resume: bool, log) -> tuple[str, str | None]:
    """Model folders for samplers and learner (the SFT warm start when configured).

    With `sft.cache` the warm start lives in the shared cache (`himac_ray.warm_start`) and the run
    directory records which one it used (`warm_start.json`), so `--resume` keeps the same policy and
    KL reference; without it the warm start is trained into the run directory (`sft_model/`).
    """
    from himac_ray.models import resolve_model
    from himac_ray.warm_start import is_built, warm_start_dir, write_key

    model_path = str(resolve_model(cfg.model.path))
    planner_path = str(resolve_model(cfg.model.planner_path)) if cfg.model.planner_path else None
    sft_dir, pointer = run_dir / SFT_DIR, run_dir / WARM_START_POINTER
    if (sft_dir / "config.json").exists():
        log(f"[himac-ray] using the SFT warm start in {sft_dir}")
        return str(sft_dir), planner_path
    if pointer.exists():
        used = Path(json.loads(pointer.read_text())["path"])
        if (used / "config.json").exists():
            log(f"[himac-ray] using the SFT warm start {used} (recorded in {pointer})")
            return str(used), planner_path
        log(f"[himac-ray] the warm start {used} recorded in {pointer} is gone; building it again")
    if not cfg.run.sft_warmup or (resume and latest_checkpoint(run_dir) and not pointer.exists()):
        return model_path, planner_path
    target = warm_start_dir(cfg, model_path) if cfg.sft.cache else sft_dir
    if cfg.sft.cache and is_built(target):
        log(f"[himac-ray] reusing the cached SFT warm start {target} (same model, env, prompts and SFT settings)")
    else:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        from himac_ray.sft.trainer import sft_from_config

        plans = f" + {cfg.sft.plan_episodes} planner-only blueprints" if cfg.sft.plan_episodes and cfg.algorithm.name == "himac" else ""
        log(f"[himac-ray] SFT warm start on {cfg.sft.episodes} expert episodes{plans} of {cfg.env.id} -> {target}")
        warm = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=model_path))
        # in a child process: the model, its optimizer state and the allocator's cached pages are
        # returned to the OS when it exits (in this process they would stay for the whole run)
        pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                                   initargs=(os.getpid(),))
        try:
            pool.submit(sft_from_config, warm, target).result()
        except BaseException:  # Ctrl-C or a failure: stop the SFT child now, not after its last step
            for child in list(getattr(pool, "_processes", {}).values()):
                child.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        if cfg.sft.cache:
            write_key(cfg, model_path, target)
    if cfg.sft.cache:
        publish_file(pointer, lambda tmp: tmp.write_text(json.dumps({"path": str(target)}) + "\n"))
    return str(target), planner_path


def _exit_with_parent(parent_pid: int) -> None:
    """Initializer of the SFT child process: it gets SIGTERM when the training driver dies (Linux
    `PR_SET_PDEATHSIG`), instead of training on as an orphan holding gigabytes."""
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the driver died before prctl took effect
        os._exit(1)


def _drive(coordinator, total: int, resume: bool, log) -> list[dict]:
    """Run the coordinator, showing its progress: a redrawn bar on a terminal; elsewhere (`ray job
    submit` logs, CI, nohup) one line per phase change instead of a bar redrawn every 2 s."""
    import ray
    from tqdm import tqdm

    ref = coordinator.run.remote(resume=resume)
    tty = sys.stdout.isatty()
    bar = tqdm(total=total, desc="himac-ray", unit="iter", dynamic_ncols=True, file=sys.stdout, disable=not tty)
    shown, last_phase, started = 0, None, time.time()
    while True:
        ready, _ = ray.wait([ref], timeout=2.0)
        status = ray.get(coordinator.status.remote())
        last = status.get("last") or {}
        if last:
            done = last[M.ITERATION] + 1
            bar.update(max(0, done - bar.n))
            if done != shown:
                shown = done
                (bar.write if tty else log)(_summary(last))
        phase = f"it {status.get('iteration', 0)} {status.get('trainable', '')}: {status.get('phase', '')}"
        if tty:
            bar.set_postfix_str(phase)
        elif phase != last_phase:
            log(f"[himac-ray {time.time() - started:6.0f}s] {phase}")
        last_phase = phase
        if ready:
            bar.close()
            return ray.get(ref)


def _summary(row: dict) -> str:
    learn = ""
    if M.KL in row:  # the learner ran (single-level keys)
        learn = f" kl_ref {row[M.KL]:.4f} clip {row.get(M.CLIPFRAC, 0):.2f} entropy {row.get(M.ENTROPY, 0):.2f}"
    return (f"iter {row[M.ITERATION]:3d} [{row[M.TRAINABLE]:>8}] success {row[M.SUCCESS_RATE]:.2f} "
            f"return {row[M.MEAN_RETURN]:+.2f} invalid {row[M.INVALID_RATE]:.2f} "
            f"informative {row.get(M.GROUPS_INFORMATIVE_FRACTION, float('nan')):.2f}{learn} "
            f"tok/s {row[M.ROLLOUT_TOKENS_PER_S]:.0f} steps/s {row[M.ENV_STEPS_PER_S]:.2f} "
            f"sync {row[M.SYNC_SECONDS]:.2f}s busy sampler/learner {row.get(M.SAMPLER_BUSY, 0):.2f}/"
            f"{row.get(M.LEARNER_BUSY, 0):.2f}"
            + (f" | stale<= {row[M.STALENESS_MAX]} dropped {row[M.DROPPED_STALE]} overlap "
               f"{row[M.OVERLAP_SECONDS]:.1f}s" if M.DROPPED_STALE in row else "")
            + (f" | IS mean {row[M.IS_WEIGHT_MEAN]:.3f} max {row[M.IS_WEIGHT_MAX]:.2f} truncated "
               f"{row[M.IS_TRUNCATED]:.3f}" if M.IS_WEIGHT_MEAN in row else "")
            + (f" | held-out {row[M.EVAL_SUCCESS]:.3f}" if M.EVAL_SUCCESS in row else ""))


def _resume_hint(run_dir: Path) -> str:
    ckpt = latest_checkpoint(run_dir)
    return f"latest complete checkpoint: {ckpt}; continue with --resume" if ckpt else "no checkpoint was written"


def check_inputs(cfg: TrainConfig, *, resume: bool, allow_config_change: bool = False) -> dict:
    """Everything a run needs, checked before it touches the disk or starts Ray: the run directory
    (`run_state.check_run_dir`), the model folders / names, and on `--resume` the saved config.
    Returns the changed keys of a resume (`run_state.config_changes`). Raises ConfigError or RunStateError."""
    from himac_ray.models import ModelUnavailableError, resolve_model

    run_dir = Path(cfg.run.dir)
    check_run_dir(run_dir, resume=resume)
    for key in ("model.path", "model.planner_path"):
        name = getattr(cfg.model, key.split(".")[1])
        if name is None:
            continue
        try:
            resolve_model(name)
        except ModelUnavailableError as err:
            raise ConfigError(f"{key}={name!r}: {err}") from None
    if not resume:
        return {}
    problems = {ckpt.name: checkpoint_problem(ckpt) for ckpt in complete_checkpoints(run_dir)}
    if problems and all(problems.values()):
        listed = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        raise RunStateError(f"--resume: no checkpoint in {run_dir / 'checkpoints'} can be loaded ({listed})")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise RunStateError(f"--resume: cannot read the run's config ({run_dir / 'config.json'}): {err}") from None
    changes = config_changes(saved, cfg)
    if changes and not allow_config_change:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigError(f"--resume: the config differs from the run's ({run_dir / 'config.json'}) in {listed}. "
                          "Resume with the same config, or pass --allow-config-change to continue with the new values")
    return changes


def _record_config(cfg: TrainConfig, run_dir: Path, changes: dict, log) -> None:
    """Write the run's config.json; a resume that changed keys also appends them to config_changes.jsonl."""
    if changes:
        ckpt = latest_checkpoint(run_dir)
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": ckpt.name if ckpt else None,
               "changed": {k: [old, new] for k, (old, new) in changes.items()}}
        with (run_dir / "config_changes.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"[himac-ray] --allow-config-change: resuming with {', '.join(f'{k}={new!r} (was {old!r})' for k, (old, new) in changes.items())}"
            f"; recorded in {run_dir / 'config_changes.jsonl'}")
    text = json.dumps(config_to_dict(cfg), indent=2)
    publish_file(run_dir / "config.json", lambda tmp: tmp.write_text(text))


def train(cfg: TrainConfig, *, resume: bool = False, allow_config_change: bool = False, log=print) -> list[dict]:
    """Run (or resume) training as configured; returns the new metrics rows.

    Inputs are checked first (`check_inputs`); only then is an earlier run moved aside and Ray started.
    """
    run_dir = Path(cfg.run.dir)
    if resume and latest_checkpoint(run_dir) is None:
        log(f"[himac-ray] --resume: no complete checkpoint in {run_dir}; starting from scratch")
        resume = False
    changes = check_inputs(cfg, resume=resume, allow_config_change=allow_config_change)
    aside = prepare_run_dir(run_dir, resume=resume)
    if aside is not None:
        log(f"[himac-ray] {run_dir} held an earlier run: moved it to {aside} (use --resume to continue a run)")
    _record_config(cfg, run_dir, changes, log)

    import ray

    from actors.coordinator import Coordinator

    init_ray(cfg, log=log)
    model_path, planner_path = _resolve_models(cfg, run_dir, resume, log)
    coordinator = Coordinator.remote(config_to_dict(cfg), model_path=model_path, planner_path=planner_path)
    start = time.time()
    interrupted = False
    try:
        ray.get(coordinator.setup.remote())
        rows = _drive(coordinator, cfg.run.iterations, resume, log)
    except ray.exceptions.RayError as err:
        raise SystemExit(f"[himac-ray] training failed: {err}\n[himac-ray] {_resume_hint(run_dir)}") from None
    except KeyboardInterrupt:
        interrupted = True  # do not wait for a running learner step: the actors die with the coordinator
        log(f"\n[himac-ray] interrupted: stopping the run's actors; {_resume_hint(run_dir)}")
        raise
    finally:
        if not interrupted:
            try:
                ray.get(coordinator.shutdown.remote(), timeout=120)
            except ray.exceptions.RayError:
                pass  # the coordinator itself is gone; its actors die with it
        ray.kill(coordinator, no_restart=True)
    log(f"[himac-ray] {len(rows)} iteration(s) in {time.time() - start:.0f}s; run dir {run_dir} "
        f"(metrics.jsonl, curve.png, checkpoints/)")
    summary = eval_summary(run_dir)
    if summary:
        log(summary)
    return rows


def eval_summary(run_dir: Path) -> str:
    """The first and the last held-out evaluation of a run side by side, with the paired 95%
    interval of the difference over the rooms both evaluated, greedy and (when the run evaluated
    it) sampled; a prompting-only run's one evaluation; "" otherwise."""
    from himac_ray.evaluate import SAMPLED, paired_interval
    from himac_ray.metrics import MetricsLog

    evals = [e for e in MetricsLog(run_dir).eval_rows() if e.get("won_by_seed")]
    if len(evals) == 1 and evals[0]["iteration"] == 0:  # run.iterations=0: the prompting-only baseline
        e, s = evals[0], evals[0].get(SAMPLED)
        sampled = f"; sampled (temperature {s['temperature']:g}) {s['success_rate']:.3f}" if s else ""
        return (f"[himac-ray] held-out success of the starting policy, no RL, on {len(e['won_by_seed'])} rooms: "
                f"greedy {e['success_rate']:.3f}{sampled}")
    if len(evals) < 2:
        return ""
    first, last = evals[0], evals[-1]
    lines = [f"[himac-ray] held-out success, iteration {first['iteration']} -> {last['iteration']} "
             f"({last.get(M.ENV_STEPS, 0)} env steps):"]
    for name, a, b in (("greedy", first, last), ("sampled", first.get(SAMPLED), last.get(SAMPLED))):
        if not (a and b and a.get("won_by_seed") and b.get("won_by_seed")):
            continue
        n = len(b["won_by_seed"])
        mean, lo, hi = paired_interval(a["won_by_seed"], b["won_by_seed"])
        if name == "greedy":
            won = [f"{sum(x['won_by_seed'].values()):g}/{n}" for x in (a, b)]
            how = ""
        else:
            won = [f"{x['success_rate']:.3f}" for x in (a, b)]
            how = f" (temperature {b['temperature']:g}, {b['samples']} episodes per room)"
        lines.append(f"  {name}{how}: {won[0]} -> {won[1]} on {n} rooms; difference {mean:+.3f}, "
                     f"paired 95% interval [{lo:+.3f}, {hi:+.3f}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = add_train_args(argparse.ArgumentParser(prog="python -m himac_ray.train", description=__doc__))
    args = parser.parse_args(argv)
    from himac_ray.models import ModelUnavailableError
    from himac_ray.models.store import ModelDirError

    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    except (ConfigError, RunStateError, ModelUnavailableError, ModelDirError) as err:
        print(f"himac-ray: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
