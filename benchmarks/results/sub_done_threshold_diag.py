# ruff: noqa: E402  (imports follow the sys.path insert)
"""Diagnostic (session 10): the greedy executor never says `<sub_done>` (RESULTS 19.1), so each subgoal stays open for
its whole step budget. `rollout.sub_done_threshold` t makes greedy decoding take `<sub_done>` when its probability
against ending the answer exceeds t. Per t: greedy held-out success, `<sub_done>` advances and budget advances on 64
rooms of the learning bench's full recipe (warm start cached as in passk_diag.py).
Usage: .venv/bin/python benchmarks/results/sub_done_threshold_diag.py [key=value ...] — e.g. `env.eval_seed_start=1000`
picks t on RL training rooms instead of the held-out ones; `rollout.sub_done_threshold=t` runs that t only.
Output: one JSON line per threshold."""
import dataclasses
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from diag_common import diag_rollout_setup, room_outcomes

from himac_ray.rollout import run_rollout
from himac_ray.schedule import executor_params

cfg, common, P, _ = diag_rollout_setup("sub-done-threshold")
given = any(a.startswith("rollout.sub_done_threshold=") for a in sys.argv[1:])
for t in (cfg.rollout.sub_done_threshold,) if given else (0.5, 0.4, 0.3, 0.2, 0.1, 0.05):
    t_cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, sub_done_threshold=t))
    t0 = time.time()
    res = run_rollout(**common, mode="macro", group_size=1, planner_params=P, executor_params=executor_params(t_cfg, 0.0))
    print(json.dumps(dict(threshold=t, rooms=len(common["seeds"]), first_room=common["seeds"][0],
                          success=round(room_outcomes(res)["success"], 4),
                          sub_done_advances=res.metrics.get("sub_done_advances"),
                          budget_advances=res.metrics.get("budget_advances"),
                          invalid=round(res.metrics.get("invalid_action_rate", 0), 4), secs=round(time.time() - t0))),
          flush=True)
