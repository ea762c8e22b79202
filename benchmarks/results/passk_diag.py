# ruff: noqa: E402  (imports follow the sys.path insert of the repo root)
"""Diagnostic (session 8): how much can RL by sharpening gain from a warm start? On held-out rooms 0-63, the greedy
planner and executor (held-out greedy success) and the greedy planner with the executor sampled at temperature 1.0,
8 per room: mean sampled success, pass@8 (rooms solved by any of the 8) and mixed-outcome rooms. Group-relative RL
raises the probability of executions it samples and wins with, so pass@8 - greedy bounds what it can add at the
recipe's group size without new exploration.
Usage: .venv/bin/python benchmarks/results/passk_diag.py [key=value ...] — the learning bench's full recipe plus
these overrides (e.g. `sft.epochs=1`: a different, cached warm start, built on first use).
Output: one JSON line per setting."""
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.learning_bench import SIZES, make_cfg, warm_start
from himac_ray.evaluate import eval_params, eval_seeds, summarize
from himac_ray.rollout import run_rollout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag_common import diag_generator

spec = dict(SIZES["full"])
spec["overrides"] = (*spec["overrides"], *sys.argv[1:])
model = warm_start("himac", spec)
cfg = make_cfg(Path("/tmp/himac-passk-diag"), algo="himac", seed=0, spec=spec)
print("model", model, "overrides", sys.argv[1:], flush=True)
gen = diag_generator(model, cfg)
P, E = eval_params(cfg)
seeds = eval_seeds(cfg, 64)
r = cfg.rollout
common = dict(generator=gen, env_id=cfg.env.id, env_kwargs=cfg.env.kwargs, max_subgoals=r.max_subgoals,
              subgoal_step_budget=r.subgoal_step_budget, history_length=r.history_length,
              invalid_penalty=cfg.algorithm.invalid_penalty, prompt_format=r.prompt_format, seeds=seeds, mode="macro",
              planner_params=P)
out = {}
for name, group, executor in [("greedy", 1, E), ("exec_T1.0_x8", 8, dataclasses.replace(E, temperature=1.0))]:
    t0 = time.time()
    res = run_rollout(**common, group_size=group, executor_params=executor)
    rooms = {}
    for e in res.episodes:
        rooms.setdefault(e["seed"], []).append(e["won"])
    out[name] = dict(success=round(summarize(res)["success_rate"], 4),
                     pass_k=round(sum(max(v) for v in rooms.values()) / len(rooms), 4),
                     mixed=round(sum(max(v) != min(v) for v in rooms.values()) / len(rooms), 4),
                     invalid=round(res.metrics.get("invalid_action_rate", 0), 4),
                     sub_done_advances=res.metrics.get("sub_done_advances"), secs=round(time.time() - t0))
    print(name, json.dumps(out[name]), flush=True)
print(json.dumps({"overrides": sys.argv[1:], **out}))
