# ruff: noqa: E402  (imports follow the sys.path insert of the repo root)
"""Held-out greedy wins of learning-bench runs split by room class (session 8): the held-out 6x6 / 1-box rooms are
either straight pushes (the expert's blueprint is one subgoal: 1-2 steps) or need a walk around the box (3+ subgoals:
4-7 steps). Usage: .venv/bin/python benchmarks/results/room_classes.py [substring of run keys ...] — reads
results/learning_recipe_full.json; prints, per matching run, each evaluation's wins in both classes."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.learning_bench import SIZES, make_cfg, room_classes

results = json.loads((Path(__file__).resolve().parent / "learning_recipe_full.json").read_text())
wanted = sys.argv[1:] or [""]
env_cfg = make_cfg(Path("/tmp/himac-room-classes"), algo="himac", seed=0, spec=SIZES["full"]).env


runs = {key: run for key, run in results["runs"].items() if any(w in key for w in wanted) and "evals" in run}
seeds = sorted({s for run in runs.values() for ev in run["evals"] for s in ev["won_by_seed"]})
classes = {s: c == "straight push" for s, c in room_classes(env_cfg, seeds).items()}
print(f"rooms: {sum(classes.values())} straight pushes, {len(seeds) - sum(classes.values())} walk-arounds")


def split(won_by_seed: dict) -> str:
    a = sum(w for s, w in won_by_seed.items() if classes[s])
    b = sum(w for s, w in won_by_seed.items() if not classes[s])
    return f"straight {a:g}, walk-around {b:g}"


for key, run in runs.items():
    print(key)
    for ev in run["evals"]:  # env_steps 0 = the warm start
        print(f"  {ev['env_steps']:>10}: greedy {ev['success']:.3f} ({split(ev['won_by_seed'])})")
