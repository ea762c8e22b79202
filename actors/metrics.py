"""Ray metrics for a training run: `ray_himac_*` gauges for Prometheus / Grafana.

`RunMetrics(run_id)` lives in the coordinator. After every iteration the coordinator calls
`record_iteration(row, sampler_stats)` with the Trainer's metrics row and its samplers'
`stats()` dicts; the gauges then show the latest iteration until the next one. Ray exports them
through each node's metrics agent (`ray start --metrics-export-port`), prefixed with `ray_`:
the queries in `deploy/grafana/himac-ray.json` read `ray_himac_success_rate{run=...}` and so on.

| gauge (without `ray_`) | tags | value |
|---|---|---|
| himac_rollout_tokens_per_s | run, role | tokens the role's samplers generated / seconds they were generating, since the last call |
| himac_sampler_busy_fraction | run, role | mean over the role's samplers of generating seconds / wall seconds, since the last call |
| himac_response_length | run, role | mean generated tokens per response of the iteration (role `both`: plan and act responses together) |
| himac_env_steps_per_s | run | `perf/env_steps_per_s` |
| himac_weight_sync_seconds | run | `perf/weight_sync_seconds` |
| himac_learner_tokens_per_s | run | `perf/learner_tokens_per_s` (mean over levels when both are trained) |
| himac_phase_seconds | run, phase | `time/<phase>`: rollout, advantage, learn, sync, record |
| himac_success_rate, himac_mean_return, himac_invalid_action_rate | run | the `charts/*` values |
| himac_trainable_level | run | 0 planner, 1 executor, 2 both |

Sampler stats are cumulative counters (`generated_tokens`, `busy_seconds`); rates come from
the deltas between two calls, per sampler (keyed by `actor_id` when present, else by position),
so a restarted sampler (counters back at zero) starts a new baseline instead of a negative rate.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable

from himac_ray import metrics as M

PREFIX = "himac_"
LEARNER_TOKENS_PER_S = M.LEARNER_TOKENS_PER_S
TRAINABLE_LEVELS = {"planner": 0, "executor": 1, "both": 2}
RESPONSE_LENGTH_ROLE = "both"
"""role tag of `himac_response_length`: the row's mean covers the plan and act responses"""

# name -> (description, tag keys)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "rollout_tokens_per_s": ("Generated tokens per second of the samplers while generating, per role", ("run", "role")),
    "sampler_busy_fraction": ("Fraction of wall time the samplers spend generating, per role", ("run", "role")),
    "response_length": ("Mean generated tokens per response in the last iteration", ("run", "role")),
    "env_steps_per_s": ("Environment steps per second over the last rollout phase", ("run",)),
    "weight_sync_seconds": ("Seconds to push the trained weights to the samplers", ("run",)),
    "learner_tokens_per_s": ("Tokens trained per second by the learner ranks", ("run",)),
    "phase_seconds": ("Wall-clock seconds of each phase of the last iteration", ("run", "phase")),
    "success_rate": ("Training episodes won / episodes in the last iteration", ("run",)),
    "mean_return": ("Mean episode return in the last iteration", ("run",)),
    "invalid_action_rate": ("Executor responses that did not parse into a valid action", ("run",)),
    "trainable_level": ("Level trained in the last iteration: 0 planner, 1 executor, 2 both", ("run",)),
    "rollout_busy_fraction": ("Fraction of the last iteration's wall time a rollout was running", ("run",)),
    "learner_busy_fraction": ("Fraction of the last iteration's wall time the learner was stepping", ("run",)),
    "overlap_seconds": ("Seconds of the last iteration's rollout that ran beside other work (async)", ("run",)),
    "dropped_stale": ("Records of the last iteration not trained: staler than run.max_staleness", ("run",)),
    "staleness_records": ("Trained records of the last iteration by weights versions behind the learner",
                          ("run", "staleness")),
    "is_weight_mean": ("Mean importance weight pi_old / pi_sampler before truncation", ("run",)),
    "is_weight_max": ("Largest importance weight pi_old / pi_sampler before truncation", ("run",)),
    "is_truncated_fraction": ("Fraction of trained tokens whose importance weight hit algorithm.tis_cap", ("run",)),
}
ROW_GAUGES = {
    "env_steps_per_s": M.ENV_STEPS_PER_S,
    "weight_sync_seconds": M.SYNC_SECONDS,
    "success_rate": M.SUCCESS_RATE,
    "mean_return": M.MEAN_RETURN,
    "invalid_action_rate": M.INVALID_RATE,
    "rollout_busy_fraction": M.SAMPLER_BUSY,
    "learner_busy_fraction": M.LEARNER_BUSY,
    "overlap_seconds": M.OVERLAP_SECONDS,
    "dropped_stale": M.DROPPED_STALE,
    "is_weight_mean": M.IS_WEIGHT_MEAN,
    "is_weight_max": M.IS_WEIGHT_MAX,
    "is_truncated_fraction": M.IS_TRUNCATED,
}


def _number(value) -> float | None:
    """A finite float, or None (missing, non-numeric, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return None
    value = float(value)
    return value if math.isfinite(value) else None


def learner_tokens_per_s(row: dict) -> float | None:
    """`perf/learner_tokens_per_s`, or the mean of the per-level `plan/...` / `act/...` values."""
    if (value := _number(row.get(LEARNER_TOKENS_PER_S))) is not None:
        return value
    values = [v for k, raw in row.items() if k.endswith("/" + LEARNER_TOKENS_PER_S)
              if (v := _number(raw)) is not None]
    return sum(values) / len(values) if values else None


class SamplerRates:
    """Per-role generation rate and busy fraction from cumulative sampler stats."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last_time = clock()
        self.last: dict[object, dict] = {}

    def update(self, stats: list[dict]) -> dict[str, dict[str, float]]:
        """{role: {"tokens_per_s", "busy_fraction"}} since the previous call (or construction)."""
        now = self.clock()
        wall = max(now - self.last_time, 1e-9)
        tokens: dict[str, float] = defaultdict(float)
        busy: dict[str, list[float]] = defaultdict(list)
        current = {}
        for i, s in enumerate(stats):
            key = s.get("actor_id", i)
            prev = self.last.get(key)
            gen, secs = float(s.get("generated_tokens", 0)), float(s.get("busy_seconds", 0.0))
            if prev is None or gen < prev["generated_tokens"] or secs < prev["busy_seconds"]:
                prev = {"generated_tokens": 0.0, "busy_seconds": 0.0}  # new or restarted sampler
            role = s.get("role", "both")
            tokens[role] += gen - prev["generated_tokens"]
            busy[role].append(secs - prev["busy_seconds"])
            current[key] = {"generated_tokens": gen, "busy_seconds": secs}
        self.last, self.last_time = current, now
        out = {}
        for role, secs in busy.items():
            mean_busy = sum(secs) / len(secs)
            out[role] = {
                # the role's engines run side by side: their tokens over the time one of them was busy
                "tokens_per_s": tokens[role] / mean_busy if mean_busy > 0 else 0.0,
                "busy_fraction": min(1.0, max(0.0, mean_busy / wall)),
            }
        return out


def iteration_values(row: dict, rates: dict[str, dict[str, float]]) -> list[tuple[str, float, dict]]:
    """(gauge name, value, tags without `run`) for one iteration; missing values are left out."""
    out = []
    for role, r in sorted(rates.items()):
        out.append(("rollout_tokens_per_s", r["tokens_per_s"], {"role": role}))
        out.append(("sampler_busy_fraction", r["busy_fraction"], {"role": role}))
    for name, key in ROW_GAUGES.items():
        if (value := _number(row.get(key))) is not None:
            out.append((name, value, {}))
    if (value := _number(row.get(M.RESPONSE_LEN))) is not None:
        out.append(("response_length", value, {"role": RESPONSE_LENGTH_ROLE}))
    if (value := learner_tokens_per_s(row)) is not None:
        out.append(("learner_tokens_per_s", value, {}))
    for key, raw in row.items():
        if key.startswith(M.TIME_PREFIX) and (value := _number(raw)) is not None:
            out.append(("phase_seconds", value, {"phase": key[len(M.TIME_PREFIX):]}))
        suffix = key[len(M.STALENESS_PREFIX):]
        if key.startswith(M.STALENESS_PREFIX) and suffix.isdigit() and (value := _number(raw)) is not None:
            out.append(("staleness_records", value, {"staleness": suffix}))
    level = TRAINABLE_LEVELS.get(row.get(M.TRAINABLE))
    if level is not None:
        out.append(("trainable_level", float(level), {}))
    return out


class RunMetrics:
    """The `ray_himac_*` gauges of one run (tag `run=run_id`); create it inside a Ray worker."""

    def __init__(self, run_id: str, *, gauge_cls=None, clock: Callable[[], float] = time.monotonic):
        if gauge_cls is None:
            from ray.util.metrics import Gauge as gauge_cls
        self.run_id = str(run_id)
        self.gauges = {
            name: gauge_cls(PREFIX + name, description=desc, tag_keys=tags).set_default_tags({"run": self.run_id})
            for name, (desc, tags) in GAUGES.items()
        }
        self.rates = SamplerRates(clock)
        self.last: dict[tuple, float] = {}

    def record_iteration(self, row: dict, sampler_stats: list[dict]) -> dict[tuple, float]:
        """Set every gauge from one iteration's row and the samplers' cumulative stats.

        Returns {(gauge name, *tag values): value} of what was set (handy for logs and tests).
        """
        values = iteration_values(row, self.rates.update(list(sampler_stats or [])))
        self.last = {}
        for name, value, tags in values:
            self.gauges[name].set(float(value), tags=tags or None)
            self.last[(name, *tags.values())] = float(value)
        return dict(self.last)
