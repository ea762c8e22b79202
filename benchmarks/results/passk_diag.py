# ruff: noqa: E402  (imports follow the sys.path insert)
"""Diagnostic (session 8): how much can RL by sharpening gain from a warm start? On held-out rooms 0-63, per setting:
mean success, pass@k (rooms solved by any of the k episodes) and mixed-outcome rooms. Group-relative RL raises the
probability of episodes it samples and wins with, so pass@k - greedy bounds what it can add at group size k without
new exploration.
Settings (env `PASSK_SETTINGS`, comma-separated; default `greedy,exec_T1.0_x8`): `greedy` (planner and executor
greedy) or `<level>_T<temperature>_x<k>` with level `exec` (greedy planner, executor sampled: the micro phase's
sampling), `plan` (planner sampled, greedy executor: the macro phase's) or `both` (both sampled), k episodes per room.
Usage: [PASSK_SETTINGS=...] .venv/bin/python benchmarks/results/passk_diag.py [MODEL_DIR] [key=value ...] — the
learning bench's full recipe plus these overrides (e.g. `sft.epochs=1`: a different, cached warm start, built on
first use).
Rooms: the held-out rooms 0-63, or any 64 consecutive env seeds with `env.eval_seed_start=N` (e.g. 1000: the
first training rooms of a learning-bench run, 16 per iteration).
Output: one JSON line per setting (with `won`: the rooms won by at least one episode), then one with all."""
import json
import os
import re
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from diag_common import cli_model_dirs_and_overrides, diag_rollout_setup, room_outcomes

from himac_ray.evaluate import eval_params
from himac_ray.rollout import run_rollout

SETTING = re.compile(r"(exec|plan|both)_T([0-9.]+)_x([0-9]+)")

names = os.environ.get("PASSK_SETTINGS", "greedy,exec_T1.0_x8").split(",")
bad = [n for n in names if n != "greedy" and not SETTING.fullmatch(n)]
if bad:
    sys.exit(f"PASSK_SETTINGS: not `greedy` nor <exec|plan|both>_T<temperature>_x<k>: {', '.join(bad)}")
cfg, common, P, E = diag_rollout_setup("passk-diag")
out = {}
for name in names:
    planner, executor, group = P, E, 1
    if name != "greedy":
        level, temperature, group = SETTING.fullmatch(name).groups()
        sampled_planner, sampled_executor = eval_params(cfg, float(temperature))
        planner = sampled_planner if level in ("plan", "both") else P
        executor = sampled_executor if level in ("exec", "both") else E
    t0 = time.time()
    res = run_rollout(**common, mode="macro", group_size=int(group), planner_params=planner, executor_params=executor)
    rooms = room_outcomes(res)
    out[name] = dict(success=round(rooms["success"], 4), pass_k=round(rooms["any"], 4), mixed=round(rooms["mixed"], 4),
                     invalid=round(res.metrics.get("invalid_action_rate", 0), 4),
                     sub_done_advances=res.metrics.get("sub_done_advances"), secs=round(time.time() - t0),
                     won=[seed for seed, w in rooms["won"].items() if w])
    print(name, json.dumps(out[name]), flush=True)
print(json.dumps({"overrides": cli_model_dirs_and_overrides()[1], **out}))
