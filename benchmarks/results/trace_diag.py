# ruff: noqa: E402  (imports follow the sys.path insert)
"""Diagnostic (session 9): what the greedy warm start does in the walk-around rooms. On held-out rooms 0-63, the
greedy planner and executor; for the first 8 rooms whose expert blueprint has more than one subgoal: the board, the
expert's subgoals and actions, the greedy blueprint, and each executor step as (subgoal index, answer, valid); then
success split by room class (one expert subgoal: a straight push; more: a walk-around).
Usage: .venv/bin/python benchmarks/results/trace_diag.py [MODEL_DIR] [key=value ...]."""
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from diag_common import diag_rollout_setup, expert_plan, room_outcomes

from himac_ray.rollout import run_rollout

cfg, common, P, E = diag_rollout_setup("trace-diag")
res = run_rollout(**common, mode="macro", group_size=1, planner_params=P, executor_params=E)
print("success", room_outcomes(res)["success"], "sub_done advances", res.metrics.get("sub_done_advances"))
acts: dict[int, list] = {}
for r in res.records:
    if r.level == "act":
        acts.setdefault(r.seed, []).append((r.subgoal_index, r.response_text.strip()[:40], r.valid))
shown = 0
for e in res.episodes:
    obs, subgoals, actions = expert_plan(cfg.env, e["seed"])
    if len(subgoals) > 1 and shown < 8:
        shown += 1
        print("=" * 20, "room", e["seed"], "won", e["won"])
        print(obs)
        print("expert:", subgoals, actions)
        print("greedy blueprint:", e.get("subgoals"))
        for a in acts.get(e["seed"], []):
            print("   ", a)
classes: dict[str, list[int]] = {"straight": [], "walk-around": []}
for e in res.episodes:
    classes["straight" if len(expert_plan(cfg.env, e["seed"])[1]) <= 1 else "walk-around"].append(int(e["won"]))
print("by class", {k: f"{sum(v)}/{len(v)}" for k, v in classes.items()})
