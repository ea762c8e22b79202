"""Env throughput: steps/s and resets/s of every built-in himac-ray env, with random admissible actions.

Usage: `python benchmarks/env_bench.py [--seconds 2] [--env himac/Sokoban-v0 ...]`. Prints a table to
stdout; `run_env_bench` returns the numbers. Envs are built with `gymnasium.make`, as rollouts do,
and only the `reset`/`step` calls are timed (action sampling is not). Single process, single core.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np

from himac_ray.envs import ENV_IDS

BUILTIN_ENV_IDS = [env_id for env_id in ENV_IDS if not env_id.endswith("Real-v0")]


def _bench_one(env_id: str, seconds: float) -> dict[str, float]:
    env = gym.make(env_id)
    rng = np.random.default_rng(0)
    clock = time.perf_counter

    # resets: half the budget, fresh seed each time (at least 5 resets)
    reset_s: list[float] = []
    deadline = clock() + seconds / 2
    while clock() < deadline or len(reset_s) < 5:
        t0 = clock()
        env.reset(seed=len(reset_s))
        reset_s.append(clock() - t0)

    # steps: the other half, random admissible actions, resetting (untimed) when an episode ends
    obs, info = env.reset(seed=0)
    num_steps, num_episodes, step_s = 0, 0, 0.0
    deadline = clock() + seconds / 2
    while clock() < deadline or num_steps < 10:
        actions = info["admissible_actions"]
        action = actions[int(rng.integers(len(actions)))] if actions else ""
        t0 = clock()
        obs, reward, terminated, truncated, info = env.step(action)
        step_s += clock() - t0
        num_steps += 1
        if terminated or truncated:
            num_episodes += 1
            obs, info = env.reset(seed=10_000 + num_episodes)
    env.close()
    return {
        "steps_per_s": num_steps / step_s,
        "step_us_mean": 1e6 * step_s / num_steps,
        "resets_per_s": len(reset_s) / sum(reset_s),
        "reset_ms_median": 1e3 * statistics.median(reset_s),
        "reset_ms_p90": 1e3 * float(np.percentile(reset_s, 90)),
        "num_steps": num_steps,
        "num_resets": len(reset_s),
    }


def run_env_bench(env_ids: list[str] | None = None, seconds: float = 2.0) -> dict[str, dict]:
    """Measure each env for `seconds` (half resets, half steps).

    Args:
        env_ids: ids to measure; default every built-in (non-`*Real-v0`) registered env.
        seconds: time budget per env.

    Returns:
        {env_id: {"steps_per_s", "step_us_mean", "resets_per_s", "reset_ms_median", "reset_ms_p90",
        "num_steps", "num_resets"}}, or {env_id: {"error": str}} when the env cannot be built.
    """
    results: dict[str, dict] = {}
    for env_id in env_ids or BUILTIN_ENV_IDS:
        try:
            results[env_id] = _bench_one(env_id, seconds)
        except Exception as err:  # an env still being written must not hide the others' numbers
            results[env_id] = {"error": f"{type(err).__name__}: {err}"}
    return results


def format_table(results: dict[str, dict]) -> str:
    header = f"{'env':<26} {'steps/s':>10} {'step us':>9} {'resets/s':>10} {'reset ms p50':>13} {'reset ms p90':>13}"
    lines = [header, "-" * len(header)]
    for env_id, r in results.items():
        if "error" in r:
            lines.append(f"{env_id:<26} error: {r['error']}")
        else:
            lines.append(
                f"{env_id:<26} {r['steps_per_s']:>10.0f} {r['step_us_mean']:>9.1f} {r['resets_per_s']:>10.0f} "
                f"{r['reset_ms_median']:>13.3f} {r['reset_ms_p90']:>13.3f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="himac-ray env throughput")
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per env")
    parser.add_argument("--env", action="append", dest="env_ids", help="env id (repeatable); default all built-in")
    args = parser.parse_args()
    print(format_table(run_env_bench(args.env_ids, seconds=args.seconds)))
