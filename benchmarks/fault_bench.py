"""Fault-injection soak (`himac-ray bench faults`): a tiny-model run that loses actors and its driver.

Two runs of the same config and seeds on a private local Ray instance this process starts:

1. the reference: `python -m himac_ray.train` uninterrupted;
2. the soak: the same command while a seeded schedule kills, each at a random point of a chosen
   iteration, an env pool, a sampler and a learner rank (SIGKILL to the pid of that actor's
   process, which must be a descendant of this process: never a process found by name), and
   once the driver itself (SIGKILL to the driver subprocess), which is then started again with
   `--resume`.

Env pools and samplers are replaced during the rollout; a dead learner rank restarts the learner
group in-process from the latest checkpoint (`run.max_learner_restarts`); the driver kill is
recovered by `--resume`. Afterwards the soak must have reached its last iteration, its Parquet
records must equal the reference's as a set of (iteration, group, trajectory, level, step) with
no duplicate, `metrics.jsonl` must have one row per iteration, and the final weights must equal
the reference's within `WEIGHT_TOL`.

Determinism: greedy sampling everywhere (`rollout.*_temperature=0`), float32 and an entropy bonus
with zero-advantage records kept, so the weights move although greedy groups tie; a redone
rollout then produces the same records and the same update.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RAY_ENV, RESULTS_DIR, ROOT, log, machine, opt, save_json

ITERATIONS = 6
WEIGHT_TOL = 1e-5
"""max |w_soak - w_reference| over every weight of the final checkpoint (float32 on CPU). A redone
iteration repeats the reference's computation; what may differ is the batch composition vLLM sees
(a redone slice runs alone), which can move greedy logits in the last bits"""
SOAK_OVERRIDES = (
    "run.checkpoint_every=1", "run.keep_checkpoints=2", "run.save_trajectories=true", "run.eval_every=0",
    "model.dtype=float32", "rollout.planner_temperature=0", "rollout.executor_temperature=0",
    "rollout.num_env_pools=2", "learner.skip_zero_advantage=false", "algorithm.entropy_coef=0.01",
    "learner.lr=1e-3", "learner.num_ranks=2", "sampler.prefix_caching=false", "env.eval_episodes=2",
    "run.generate_timeout_s=600", "run.rollout_timeout_s=1800",
)
ACTOR_CLASSES = {"env_pool": "EnvPoolActor", "sampler": "SamplerActor", "learner": "LearnerWorker"}
FAULT_KINDS = ("env_pool", "sampler", "learner", "driver")


RECOVERY_WAIT_ITERATIONS = 4
"""iterations' worth of wall time the soak waits for an injected actor fault's recovery to be logged"""


def make_schedule(seed: int, iterations: int = ITERATIONS) -> list[dict]:
    """One fault of each kind, in distinct iterations 1..iterations-2 (shuffled by `seed`; the last
    iteration stays clean, so a late fault still lands in the run), each at a random fraction of an
    iteration's wall time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    its = rng.choice(np.arange(1, iterations - 1), size=len(FAULT_KINDS), replace=False)
    kinds = list(rng.permutation(FAULT_KINDS))
    fracs = rng.uniform(0.1, 0.9, size=len(FAULT_KINDS))
    return sorted(({"kind": str(k), "iteration": int(i), "at_fraction": round(float(f), 3)}
                   for k, i, f in zip(kinds, its, fracs)), key=lambda f: f["iteration"])


def soak(*, work_dir: Path, seed: int = 0, iterations: int = ITERATIONS, extra: tuple[str, ...] = ()) -> dict:
    """Run the reference and the soak (see the module docstring); returns the figures."""
    import ray

    from himac_ray.train import start_local_head

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    overrides = [*SOAK_OVERRIDES, f"run.iterations={iterations}", f"run.seed={seed}", *extra]
    temp_dir = tempfile.mkdtemp(prefix="rayq", dir="/tmp")  # Ray's socket paths must stay short
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ctx = start_local_head(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir,
                           runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    address = ctx.address_info["gcs_address"]
    try:
        log(f"reference run ({iterations} iterations) on Ray at {address}")
        t0 = time.monotonic()
        rc = _driver(work_dir / "reference", address, overrides, resume=False).wait()
        ref_wall = time.monotonic() - t0
        if rc != 0:
            raise RuntimeError(f"the reference run failed (exit {rc}); see {work_dir / 'reference.log'}")
        iter_s = _iteration_seconds(work_dir / "reference")
        schedule = make_schedule(seed, iterations)
        log(f"reference: {ref_wall:.0f}s, {iter_s:.0f}s per iteration; soak schedule: {schedule}")
        t0 = time.monotonic()
        injected = _run_with_faults(work_dir / "soak", address, overrides, schedule, iter_s)
        soak_wall = time.monotonic() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return _figures(work_dir, injected, ref_wall=ref_wall, soak_wall=soak_wall, seed=seed, iterations=iterations)


def _driver(run_dir: Path, address: str, overrides: list[str], *, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "himac_ray.train", "--config", str(ROOT / "configs" / "sokoban_tiny.yaml"),
           *[a for o in overrides for a in ("--set", o)], "--set", f"run.dir={run_dir}",
           "--set", f"run.ray_address={address}", *(["--resume"] if resume else [])]
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = open(run_dir.with_suffix(".log"), "a")  # noqa: SIM115  (handed to the child)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _run_with_faults(run_dir: Path, address: str, overrides: list[str], schedule: list[dict],
                     iter_s: float) -> list[dict]:
    """The soak run: start the driver, fire each scheduled fault, restart a killed driver with --resume."""
    import numpy as np

    rng = np.random.default_rng(len(schedule))
    proc = _driver(run_dir, address, overrides, resume=False)
    injected = []
    for fault in schedule:
        while not _started(run_dir, fault["iteration"]) and proc.poll() is None:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"the soak driver exited (code {proc.returncode}) before fault {fault}; "
                               f"see {run_dir.with_suffix('.log')}")
        time.sleep(fault["at_fraction"] * iter_s)
        row = {**fault, "time": time.time(), "iteration_running": _iterations_done(run_dir)}
        if fault["kind"] == "driver":
            os.kill(proc.pid, signal.SIGKILL)  # the driver subprocess this function started
            proc.wait()
            row.update(target=f"driver pid {proc.pid}", recovery="driver restarted with --resume")
            log(f"fault: killed the driver (pid {proc.pid}) in iteration {row['iteration_running']}; resuming")
            time.sleep(2)
            proc = _driver(run_dir, address, overrides, resume=True)
        else:
            before = _recoveries(run_dir).get(fault["kind"], 0)
            pid, name = _actor_pid(ACTOR_CLASSES[fault["kind"]], rng)
            os.kill(pid, signal.SIGKILL)
            row.update(target=f"{name} pid {pid}", recovery="in-process restart" + (
                " from the latest checkpoint" if fault["kind"] == "learner" else ""))
            log(f"fault: killed {name} (pid {pid}) in iteration {row['iteration_running']}")
            # one fault at a time: the next is injected only once this one's recovery is logged (a
            # dead actor is noticed at its next call, which may be a phase later); a recovery that
            # never comes is reported as not recovered
            deadline = time.time() + RECOVERY_WAIT_ITERATIONS * iter_s
            while (_recoveries(run_dir).get(fault["kind"], 0) <= before and proc.poll() is None
                   and time.time() < deadline):
                time.sleep(0.5)
        injected.append(row)
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"the soak run failed (exit {rc}); see {run_dir.with_suffix('.log')}")
    return injected


def _iteration_seconds(run_dir: Path) -> float:
    """Median wall time of one iteration (the sum of its time/* phases) in a finished run."""
    import numpy as np

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return float(np.median([sum(v for k, v in r.items() if k.startswith("time/")) for r in rows]))


def _started(run_dir: Path, iteration: int) -> bool:
    """Iteration `iteration` runs: the ones before it are logged and checkpointed."""
    done = [int(p.parent.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("iter_*/COMPLETE")]
    return _iterations_done(run_dir) >= iteration and max(done, default=-1) >= iteration


def _iterations_done(run_dir: Path) -> int:
    try:
        return sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        return 0


def _actor_pid(class_name: str, rng) -> tuple[int, str]:
    """The pid of one live actor of `class_name`, checked to be a descendant of this process (the
    Ray instance this bench started), so nothing else on the machine can be hit. Reads the GCS actor
    table directly (`ray.util.state` needs the dashboard, which this bench does not start)."""
    import psutil
    from ray._private.state import actors as actor_table

    for _ in range(120):
        mine = {p.pid for p in psutil.Process().children(recursive=True)}
        live = sorted((a["Pid"], a["ActorID"]) for a in actor_table().values()
                      if a["ActorClassName"] == class_name and a["State"] == "ALIVE" and a["Pid"] in mine)
        if live:
            pid, actor_id = live[int(rng.integers(len(live)))]
            return int(pid), f"{class_name} {actor_id[:8]}"
        time.sleep(1.0)
    raise RuntimeError(f"no live {class_name} actor of this bench's Ray instance to kill")


def _records(run_dir: Path) -> list[tuple]:
    import pyarrow.parquet as pq

    keys = []
    for path in sorted((run_dir / "trajectories").glob("iter_*.parquet")):
        it = int(path.stem.split("_")[1])
        t = pq.read_table(path, columns=["group_id", "traj_id", "level", "step"]).to_pydict()
        keys += [(it, g, tr, lv, st) for g, tr, lv, st in zip(t["group_id"], t["traj_id"], t["level"], t["step"])]
    return keys


def _final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    ckpts = sorted((run_dir / "checkpoints").glob("iter_*"), key=lambda p: int(p.name.split("_")[1]))
    return load_file(str(next(ckpts[-1].glob("learner/*/model.safetensors"))))


def _figures(work_dir: Path, injected: list[dict], *, ref_wall: float, soak_wall: float, seed: int,
             iterations: int) -> dict:
    ref_dir, soak_dir = work_dir / "reference", work_dir / "soak"
    ref, got = _records(ref_dir), _records(soak_dir)
    metrics_its = [json.loads(line)["iteration"] for line in (soak_dir / "metrics.jsonl").read_text().splitlines()]
    w_ref, w_soak = _final_weights(ref_dir), _final_weights(soak_dir)
    from safetensors.torch import load_file

    from himac_ray.models import resolve_model

    w0 = load_file(str(resolve_model("tiny") / "model.safetensors"))
    weight_diff = max(float((w_soak[k] - w_ref[k]).abs().max()) for k in w_ref)
    moved = max(float((w_ref[k] - w0[k]).abs().max()) for k in w_ref if k in w0)
    recovered = _recoveries(soak_dir)
    for row in injected:
        row["recovered"] = row["kind"] == "driver" or recovered.get(row["kind"], 0) > 0
    out = {
        "bench": "faults", "machine": machine(), "seed": seed, "iterations": iterations,
        "overrides": list(SOAK_OVERRIDES), "schedule": injected,
        "faults_injected": len(injected), "faults_recovered": sum(r["recovered"] for r in injected),
        "recoveries_logged": recovered,
        "reached_last_iteration": metrics_its[-1:] == [iterations - 1] if metrics_its else False,
        "metrics_rows_one_per_iteration": metrics_its == list(range(iterations)),
        "records_reference": len(ref), "records_soak": len(got),
        "records_lost": len(set(ref) - set(got)), "records_extra": len(set(got) - set(ref)),
        "records_duplicated": len(got) - len(set(got)),
        "final_weight_max_abs_diff": weight_diff, "weight_tolerance": WEIGHT_TOL,
        "weights_moved_max_abs": moved, "weights_within_tolerance": weight_diff <= WEIGHT_TOL,
        "reference_wall_s": round(ref_wall, 1), "soak_wall_s": round(soak_wall, 1),
        "extra_wall_s": round(soak_wall - ref_wall, 1),
    }
    return out


def _recoveries(run_dir: Path) -> dict[str, int]:
    """Recovered faults by kind, from the run's faults.jsonl (written by the coordinator)."""
    counts: dict[str, int] = {}
    path = run_dir / "faults.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        kind = json.loads(line)["kind"]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def format_table(out: dict) -> str:
    lines = [f"{'fault':<10}{'iteration':>10}  {'target':<36}{'recovered':<10}how"]
    for r in out["schedule"]:
        lines.append(f"{r['kind']:<10}{r['iteration_running']:>10}  {r['target'][:34]:<36}"
                     f"{'yes' if r['recovered'] else 'NO':<10}{r['recovery']}")
    lines.append(f"faults injected {out['faults_injected']}, recovered {out['faults_recovered']}; records lost "
                 f"{out['records_lost']}, duplicated {out['records_duplicated']}, extra {out['records_extra']} "
                 f"(of {out['records_reference']}); metrics one row per iteration: "
                 f"{out['metrics_rows_one_per_iteration']}; final weights max |diff| "
                 f"{out['final_weight_max_abs_diff']:.2e} (tolerance {out['weight_tolerance']:.0e}, moved "
                 f"{out['weights_moved_max_abs']:.2e}); wall {out['reference_wall_s']:.0f}s -> {out['soak_wall_s']:.0f}s "
                 f"(+{out['extra_wall_s']:.0f}s)")
    return "\n".join(lines)


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench faults`: the soak on the tiny model; JSON in benchmarks/results/faults_<size>.json."""
    size = opt(args, "size", "quick" if quick else "full")
    seed = int(opt(args, "seeds", "0").split(",")[0])
    work = Path(tempfile.mkdtemp(prefix="himac-faults-"))
    try:
        out = soak(work_dir=work, seed=seed, iterations=ITERATIONS)
    finally:
        if os.environ.get("HIMAC_KEEP_BENCH_DIR") is None:
            shutil.rmtree(work, ignore_errors=True)
    print(format_table(out), flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"faults_{size}.json"
    save_json(path, out, indent=2)
    log(f"wrote {path}")
    return out
