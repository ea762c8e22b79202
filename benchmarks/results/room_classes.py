# ruff: noqa: E402  (imports follow the sys.path insert of the repo root)
"""Held-out greedy wins of learning-bench runs split by room class (session 8): the 64 held-out 6x6 / 1-box rooms are
either straight pushes (the expert's blueprint is one subgoal: 1-2 steps) or need a walk around the box (3+ subgoals:
4-7 steps). Usage: .venv/bin/python benchmarks/results/room_classes.py [substring of run keys ...] — reads
results/learning_recipe_full.json; prints, per matching run, each evaluation's wins in both classes."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import gymnasium as gym

import himac_ray.envs  # noqa: F401  (registers the env ids)

results = json.loads((Path(__file__).resolve().parent / "learning_recipe_full.json").read_text())
wanted = sys.argv[1:] or [""]


def straight(seed: int) -> bool:
    env = gym.make("himac/Sokoban-v0", dim_room=(6, 6), num_boxes=1, max_steps=10)
    env.reset(seed=seed)
    one = len(env.unwrapped.expert_subgoals()) == 1
    env.close()
    return one


classes = {s: straight(s) for s in range(64)}
print(f"rooms: {sum(classes.values())} straight pushes, {64 - sum(classes.values())} walk-arounds")


def split(won_by_seed: dict) -> str:
    wins = {int(s): w for s, w in won_by_seed.items()}
    a = sum(w for s, w in wins.items() if classes[s])
    b = sum(w for s, w in wins.items() if not classes[s])
    return f"straight {a:g}, walk-around {b:g}"


for key, run in results["runs"].items():
    if not any(w in key for w in wanted) or "evals" not in run:
        continue
    print(key)
    for ev in run["evals"]:  # env_steps 0 = the warm start
        print(f"  {ev['env_steps']:>10}: greedy {ev['success']:.3f} ({split(ev['won_by_seed'])})")
