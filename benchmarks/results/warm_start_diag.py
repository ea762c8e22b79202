"""Diagnostic (session 5): a warm start's held-out success on rooms 0-63, greedy vs sampled, with its plan and
action metrics. Usage: .venv/bin/python benchmarks/results/warm_start_diag.py [WARM_START_DIR] [key=value ...] (default: build/reuse
the learning bench's warm start). Output: one JSON line per setting (name, success, any_of_group, metrics)."""
import dataclasses
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from diag_common import diag_rollout_setup, room_outcomes  # noqa: E402  (after the path insert)

from himac_ray.rollout import run_rollout  # noqa: E402

cfg, common, P, E = diag_rollout_setup("warm-start-diag")
out = {}
for name, pt, et, g in [("greedy", 0, 0, 1), ("both0.4", 0.4, 0.4, 4), ("exec1.0", 0, 1.0, 4), ("both1.0", 1.0, 1.0, 4)]:
    t0 = time.time()
    res = run_rollout(**common, mode="macro", group_size=g, planner_params=dataclasses.replace(P, temperature=pt),
                      executor_params=dataclasses.replace(E, temperature=et))
    rooms = room_outcomes(res)
    out[name] = dict(success=rooms["success"], any_of_group=rooms["any"], metrics={k: round(v, 3) for k, v in res.metrics.items()}, secs=time.time() - t0)
    print(name, json.dumps(out[name]), flush=True)
    if name == "greedy":
        for e in res.episodes[:6]:
            print(e["seed"], e["won"], e.get("subgoals"), flush=True)
        for rec in [x for x in res.records if x.level == "plan"][:4]:
            print(repr(rec.response_text), flush=True)
        acts = [rec for rec in res.records if rec.level == "act"][:12]
        for rec in acts:
            print(rec.traj_id, repr(rec.response_text)[:80], rec.reward, flush=True)
print(json.dumps(out))
