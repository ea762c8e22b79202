# ruff: noqa: E402  (imports follow the sys.path insert)
"""Diagnostic (session 14): which level did RL change for better or worse? Greedy planner and executor on held-out
rooms 0-63 in all four pairings of two policies — the warm start's and a learning run's final one (its
`final_policy` folder, see `benchmarks/learning_bench.keep_final_policy`): each policy writes its greedy blueprints
(macro rollout), then each executor carries out the other policy's blueprints (micro rollout on those blueprints).
Prints success per pairing, split by room class (straight pushes / walk-arounds), how often the two planners'
blueprints are identical, their mean length, and every changed blueprint with each planner's own outcome (0/1). One vLLM engine; the weights are swapped in place between rollouts.
Usage: .venv/bin/python benchmarks/results/level_swap_diag.py FINAL_DIR [WARM_DIR] [key=value ...] (WARM_DIR:
the learning bench's cached HiMAC warm start by default)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag_common import cli_model_dirs_and_overrides, diag_rollout_setup, room_outcomes

from benchmarks.learning_bench import SIZES, room_classes, warm_start
from himac_ray.rollout import run_rollout

dirs = cli_model_dirs_and_overrides()[0]
if not dirs:
    sys.exit(__doc__)
cfg, common, P, E = diag_rollout_setup("level-swap")  # the engine starts on FINAL_DIR
warm = dirs[1] if len(dirs) > 1 else warm_start("himac", dict(SIZES["full"]), build=False)
weights = {"final": Path(dirs[0]) / "model.safetensors", "warm": Path(warm) / "model.safetensors"}
gen = common["generator"]
classes = room_classes(cfg.env, [str(s) for s in common["seeds"]])


def by_class(won: dict) -> dict:
    """success overall and per room class of a {seed: 0/1} map"""
    out = {"all": sum(won.values()) / len(won)}
    for c in sorted(set(classes.values())):
        rooms = [s for s in won if classes[str(s)] == c]
        out[f"{c} ({len(rooms)})"] = sum(won[s] for s in rooms)
    return out


blueprints, results, own = {}, {}, {}
for name in ("final", "warm"):  # own blueprints and own execution
    gen.reload_weights(weights[name])
    res = run_rollout(**common, mode="macro", group_size=1, planner_params=P, executor_params=E)
    blueprints[name] = {int(e["seed"]): list(e.get("subgoals") or []) for e in res.episodes}
    own[name] = room_outcomes(res)["won"]
    results[f"planner {name} / executor {name}"] = by_class(own[name])
    if name == "warm":  # the warm executor on the final planner's blueprints (engine holds the warm weights now)
        res = run_rollout(**common, mode="micro", group_size=1, blueprints=blueprints["final"], executor_params=E)
        results["planner final / executor warm"] = by_class(room_outcomes(res)["won"])
gen.reload_weights(weights["final"])
res = run_rollout(**common, mode="micro", group_size=1, blueprints=blueprints["warm"], executor_params=E)
results["planner warm / executor final"] = by_class(room_outcomes(res)["won"])
same = sum(blueprints["final"][s] == blueprints["warm"][s] for s in blueprints["warm"])
for k, v in sorted(results.items()):
    print(f"{k:<34} {json.dumps(v)}", flush=True)
print(f"identical greedy blueprints: {same} of {len(blueprints['warm'])} rooms")
for name, plans in blueprints.items():
    lengths = [len(p) for p in plans.values()]
    print(f"{name} planner: mean subgoals per blueprint {sum(lengths) / len(lengths):.2f}, "
          f"by room class " + json.dumps({c: round(sum(len(plans[s]) for s in plans if classes[str(s)] == c)
                                                     / sum(classes[str(s)] == c for s in plans), 2)
                                          for c in sorted(set(classes.values()))}))
for s in sorted(blueprints["warm"]):  # every changed blueprint, with both planners' own outcomes
    if blueprints["final"][s] != blueprints["warm"][s]:
        print(f"room {s} ({classes[str(s)]}): warm {own['warm'][s]} {blueprints['warm'][s]}\n"
              f"{'':>{len(str(s)) + 5}} final {own['final'][s]} {blueprints['final'][s]}")
