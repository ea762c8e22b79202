"""Weight sync: seconds per learner -> sampler sync and its share of the iteration (embedded model).

Runs real training iterations of `configs/sokoban_embedded_cpu.yaml` (SmolLM2-135M, Sokoban
6x6 / 1 box, the config's groups x G=4; no SFT warm start, every record trained) on the driver-side
`benchmarks.harness.Stack`, the coordinator's exact wiring. A sync is the coordinator's: the
DeepSpeed learner writes the HF-named weights to one safetensors file in /dev/shm, every vLLM
sampler streams it into its running model in place, the file is deleted.

Quick mode: planner-phase iterations only, with 2 groups instead of 4 (the cheapest HiMAC
iteration, so the largest sync share): one warm-up iteration, one measured, then two more timed
syncs. Full mode alternates planner and executor phases of the full config as training does and
reports each. Goal: sync <= 5% of the iteration.

Usage: `himac-ray bench sync [--full] [--json]`.
"""

from __future__ import annotations

import statistics

from benchmarks.common import machine, opt, script_main

GOAL = 0.05


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench sync`: options `size` (smoke | quick | full), `iterations` (measured, after one warm-up)."""
    from benchmarks.profile_bench import collect

    size = opt(args, "size", "quick" if quick else "full")
    measured = int(opt(args, "iterations", {"smoke": 1, "quick": 1, "full": 2}[size]))
    overrides = {"smoke": ["coevolution.planner_iters=1000", "algorithm.num_groups=1", "algorithm.group_size=2",
                           "env.kwargs.max_steps=3"],
                 "quick": ["coevolution.planner_iters=1000", "algorithm.num_groups=2"], "full": []}[size]
    out = {"bench": "sync", "size": size, "machine": machine(),
           **collect(overrides, measured, extra_syncs=0 if size == "full" else 2)}
    return summarize(out)


def summarize(out: dict) -> dict:
    """Sync figures from `profile_bench.collect` output (also used on a full profile run)."""
    its = out["iterations"]
    for s in its:
        s["sync_share"] = s["sync_seconds"] / s["wall"]
    syncs = [{"seconds": s["sync_seconds"], "save_seconds": s["save_seconds"], "reload_seconds": s["reload_seconds"]}
             for s in its] + list(out.get("extra_syncs", []))
    out["syncs_timed"] = len(syncs)
    out["sync_seconds"] = statistics.mean(s["seconds"] for s in syncs)
    out["save_seconds"] = statistics.mean(s["save_seconds"] for s in syncs)
    out["reload_seconds"] = statistics.mean(s["reload_seconds"] for s in syncs)
    out["iteration_seconds"] = statistics.mean(s["wall"] for s in its)
    out["sync_share"] = sum(s["sync_seconds"] for s in its) / sum(s["wall"] for s in its)
    out["sync_share_max"] = max(s["sync_share"] for s in its)
    out["weights_mb"] = its[-1]["weights_mb"]
    out["goal_met"] = out["sync_share_max"] <= GOAL
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    lines = [f"sync bench ({out['config']} {' '.join(out['overrides'])}): {out['weights_mb']:.0f} MB of weights per sync",
             f"  {'iter':>4} {'trainable':>9} {'iteration s':>11} {'sync s':>7} {'save s':>7} {'reload s':>8} {'share':>6}"]
    for s in out["iterations"]:
        lines.append(f"  {s['iteration']:>4} {s['trainable']:>9} {s['wall']:>11.1f} {s['sync_seconds']:>7.2f} "
                     f"{s['save_seconds']:>7.2f} {s['reload_seconds']:>8.2f} {100 * s['sync_share']:>5.1f}%")
    lines.append(f"  mean of {out['syncs_timed']} syncs: {out['sync_seconds']:.2f}s (export {out['save_seconds']:.2f}s + reload "
                 f"{out['reload_seconds']:.2f}s); in the iterations: {100 * out['sync_share']:.1f}% of the iteration "
                 f"(worst {100 * out['sync_share_max']:.1f}%; goal <= {100 * GOAL:.0f}%: "
                 f"{'met' if out['goal_met'] else 'NOT met'})")
    return "\n".join(lines)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], iterations={"type": int})
