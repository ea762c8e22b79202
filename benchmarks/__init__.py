"""himac-ray benchmarks: `BENCHES` maps a name to `fn(args, quick) -> dict`.

`args` is an argparse namespace, a dict or None; each bench reads only the options it knows
(`size`: smoke | quick | full, `model`, `seconds`, `iterations`) and ignores the rest. Every
bench prints a human-readable table and returns its figures as one JSON-able dict. `quick=True`
is the short version (`make bench`); `quick=False` the long one behind benchmarks/RESULTS.md.
Modules are imported only when their bench runs (this file is cheap to import).

    from benchmarks import BENCHES, run_bench
    figures = run_bench("rollout", {"model": "tiny"}, quick=True)
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

QUICK_SET = ("env", "rollout", "sync", "learner")
"""what `make bench` (`himac-ray bench quick`) runs, in this order"""


def _lazy(module: str) -> Callable[..., dict]:
    def fn(args: Any = None, quick: bool = True) -> dict:
        return importlib.import_module(f"benchmarks.{module}").run(args, quick=quick)

    fn.__name__ = f"run_{module}"
    fn.__doc__ = f"benchmarks.{module}.run"
    return fn


def _env(args: Any = None, quick: bool = True) -> dict:
    """Env steps/s and resets/s of every built-in env (benchmarks/env_bench.py)."""
    from benchmarks.common import machine, opt
    from benchmarks.env_bench import format_table, run_env_bench

    seconds = float(opt(args, "seconds", 2.0 if quick else 10.0))
    results = run_env_bench(seconds=seconds)
    print(format_table(results), flush=True)
    return {"bench": "env", "seconds_per_env": seconds, "machine": machine(), "envs": results,
            "steps_per_s": {k: v.get("steps_per_s") for k, v in results.items()},
            "resets_per_s": {k: v.get("resets_per_s") for k, v in results.items()}}


def _quick(args: Any = None, quick: bool = True) -> dict:
    """The quick set in one go (env, rollout on the tiny model, sync, learner), then a summary."""
    import time

    from benchmarks.common import log, machine

    out: dict = {"bench": "quick", "machine": machine()}
    seconds = {}
    for name in QUICK_SET:
        t0 = time.perf_counter()
        log(f"=== bench {name} ===")
        out[name] = BENCHES[name](args, quick=quick)
        seconds[name] = time.perf_counter() - t0
    r, s, lrn = out["rollout"], out["sync"], out["learner"]
    out["summary"] = {
        "rollout_ratio_vs_naive_hf": r["ratio_vs_naive_hf"],
        "rollout_ratio_vs_raw_vllm": r["ratio_vs_raw_vllm"],
        "sync_seconds": s["sync_seconds"],
        "sync_share": s["sync_share"],
        "learner_overhead_ratio": lrn["overhead_ratio"],
        "seconds": seconds,
    }
    su = out["summary"]
    print(f"quick set: rollout a/b {su['rollout_ratio_vs_naive_hf']:.2f} (goal >= 8), a/c "
          f"{su['rollout_ratio_vs_raw_vllm']:.2f} (goal >= 0.85); sync {su['sync_seconds']:.2f}s = "
          f"{100 * su['sync_share']:.1f}% of an iteration (goal <= 5%); learner plain/DeepSpeed "
          f"{su['learner_overhead_ratio']:.2f}; took " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()),
          flush=True)
    return out


BENCHES: dict[str, Callable[..., dict]] = {
    "env": _env,
    "rollout": _lazy("rollout_bench"),
    "sync": _lazy("sync_bench"),
    "learner": _lazy("learner_bench"),
    "learning": _lazy("learning_bench"),
    "ablations": _lazy("ablation_bench"),
    "rllib": _lazy("rllib_bench"),
    "profile": _lazy("profile_bench"),
    "faults": _lazy("fault_bench"),
    "pipeline": _lazy("pipeline_bench"),
    "lora": _lazy("lora_bench"),
    "quick": _quick,
}


def run_bench(name: str, args: Any = None, quick: bool = True) -> dict:
    """Run bench `name` (a key of `BENCHES`) and return its figures."""
    if name not in BENCHES:
        raise KeyError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHES)}")
    return BENCHES[name](args, quick=quick)
