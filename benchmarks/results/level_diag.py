# ruff: noqa: E402  (imports follow the sys.path insert of the repo root)
"""Diagnostic (session 7): which level of the warm start fails? On held-out rooms 0-63: the greedy planner and
executor; the expert (A*) blueprint with the greedy executor; the expert blueprint with the executor sampled at
temperature 1.0, 4 per room. Then the first 8 rooms' greedy blueprints beside the expert's.
Usage: .venv/bin/python benchmarks/results/level_diag.py (the learning bench's cached warm start).
Output: one JSON line per setting (success, any of group, mixed-outcome rooms, per-room wins, rollout metrics)."""
import dataclasses
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from diag_common import diag_rollout_setup, expert_plan, room_outcomes

from himac_ray.rollout import run_rollout
from himac_ray.sft.expert import expert_blueprint

cfg, common, P, E = diag_rollout_setup("level-diag")
bps = {int(s): expert_blueprint(expert_plan(cfg.env, s)[1], cfg.rollout.max_subgoals) for s in common["seeds"]}
out = {}
for name, kw in [("greedy", dict(mode="macro", group_size=1, planner_params=P, executor_params=E)),
                 ("expert_bp_greedy_exec", dict(mode="micro", group_size=1, blueprints=bps, executor_params=E)),
                 ("expert_bp_exec1.0x4", dict(mode="micro", group_size=4, blueprints=bps, executor_params=dataclasses.replace(E, temperature=1.0))),
                 ]:
    t0 = time.time()
    res = run_rollout(**common, **kw)
    rooms = room_outcomes(res)
    out[name] = dict(success=rooms["success"], any=rooms["any"], mixed=rooms["mixed"], won=list(rooms["won"].values()),
                     metrics={k: round(v, 3) for k, v in res.metrics.items()}, secs=round(time.time()-t0))
    print(name, json.dumps(out[name]), flush=True)
    if name == "greedy":
        for e in res.episodes[:8]:
            print(e["seed"], e["won"], e.get("subgoals"), "| expert:", bps[e["seed"]], flush=True)
print(json.dumps({k: (v["success"], v["any"], v["mixed"]) for k, v in out.items()}))
