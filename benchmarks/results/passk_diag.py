# ruff: noqa: E402  (imports follow the sys.path insert)
"""Diagnostic (session 8): how much can RL by sharpening gain from a warm start? On held-out rooms 0-63, the greedy
planner and executor (held-out greedy success) and the greedy planner with the executor sampled at temperature 1.0,
8 per room: mean sampled success, pass@8 (rooms solved by any of the 8) and mixed-outcome rooms. Group-relative RL
raises the probability of executions it samples and wins with, so pass@8 - greedy bounds what it can add at the
recipe's group size without new exploration.
Usage: .venv/bin/python benchmarks/results/passk_diag.py [key=value ...] — the learning bench's full recipe plus
these overrides (e.g. `sft.epochs=1`: a different, cached warm start, built on first use).
Output: one JSON line per setting, then one with all."""
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from diag_common import cli_model_dirs_and_overrides, diag_rollout_setup, room_outcomes

from himac_ray.evaluate import eval_params
from himac_ray.rollout import run_rollout

cfg, common, P, E = diag_rollout_setup("passk-diag")
out = {}
for name, group, executor in [("greedy", 1, E), ("exec_T1.0_x8", 8, eval_params(cfg, 1.0)[1])]:
    t0 = time.time()
    res = run_rollout(**common, mode="macro", group_size=group, planner_params=P, executor_params=executor)
    rooms = room_outcomes(res)
    out[name] = dict(success=round(rooms["success"], 4), pass_k=round(rooms["any"], 4), mixed=round(rooms["mixed"], 4),
                     invalid=round(res.metrics.get("invalid_action_rate", 0), 4),
                     sub_done_advances=res.metrics.get("sub_done_advances"), secs=round(time.time() - t0))
    print(name, json.dumps(out[name]), flush=True)
print(json.dumps({"overrides": cli_model_dirs_and_overrides()[1], **out}))
