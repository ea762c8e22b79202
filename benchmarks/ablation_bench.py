"""The HiMAC paper's ablation table at CPU scale, plus adaptive vs fixed group size (issue #19).

Every variant is a config switch (docs/algorithm.md, "The paper's ablations as switches") on the
learning bench's recipe and machinery (`benchmarks.learning_bench`: the fast CPU recipe
`configs/sokoban_embedded_cpu.yaml`, its cached SFT warm start, the real stack, RL until the run's
env-step budget, greedy and sampled held-out success with paired 95% intervals):

- full HiMAC (the recipe: G = N = 4), without co-evolution (`coevolution.enabled=false`), without
  `<sub_done>` (`rollout.sub_done=false`, its own warm start: the SFT targets differ), without
  hierarchy (`algorithm.name=grpo`), prompting only (`run.iterations=0`: the warm start evaluated, no RL);
- fixed G = 2 and 8 (G = 4 is full HiMAC) against `algorithm.group_size=auto` (start 4, cap 8).

Every RL variant runs until the same env-step budget (every env step counts), so the held-out success
is compared at equal env steps; each variant is also compared with full HiMAC of the same seed, paired
over the same held-out rooms. The paper's ALFWorld figures at 7B (as issue #19 lists them) stand
beside the table: at CPU scale the ordering, not the values, is what can be compared.

Usage: `himac-ray bench ablations [--size smoke|quick|full] [--seeds 0,1,2] [--budget N] [--minutes M]
[--variants himac,G=auto] [--set key=value ...]` (`--set`: on every variant, after the recipe's
overrides); results go to `benchmarks/results/ablations_<size>.json` (smoke: into
bench_out/, so a smoke run never touches the results; finished runs are skipped when the same
command runs again; a file from another budget or other overrides stops the command, never overwritten).
"""

from __future__ import annotations

import json
import statistics

from benchmarks import learning_bench as L
from benchmarks.common import RESULTS_DIR, ROOT, local_ray, log, machine, opt, save_json, script_main
from himac_ray import metrics as M

WORK_DIR = ROOT / "bench_out" / "ablations"
BASELINE = "himac"
VARIANTS = {
    "himac": ("himac", ()),
    "no_coevolution": ("himac", ("coevolution.enabled=false",)),
    "no_sub_done": ("himac", ("rollout.sub_done=false",)),
    "no_hierarchy": ("grpo", ()),
    "prompting_only": ("himac", ("run.iterations=0",)),
    "G=2": ("himac", ("algorithm.group_size=2",)),
    "G=8": ("himac", ("algorithm.group_size=8",)),
    "G=auto": ("himac", ("algorithm.group_size=auto", "algorithm.auto_group.start=4", "algorithm.auto_group.max=8")),
}
"""variant -> (algorithm.name, config overrides on the recipe)"""
LABELS = {"himac": "full HiMAC (G=4)", "no_coevolution": "w/o co-evolution", "no_sub_done": "w/o <sub_done>",
          "no_hierarchy": "w/o hierarchy (GRPO)", "prompting_only": "prompting only (no RL)", "G=2": "fixed G=2",
          "G=8": "fixed G=8", "G=auto": "adaptive G (auto)"}
PAPER_ALFWORLD_7B = {"himac": 92.1, "no_coevolution": 85.3, "no_sub_done": 88.2, "no_hierarchy": 77.6}
"""the HiMAC paper's ALFWorld success (%) at 7B, as issue #19 lists them"""
SIZES = {size: {**spec, "seeds": [0, 1, 2] if size == "full" else spec["seeds"]} for size, spec in L.SIZES.items()}
"""the learning bench's sizes (smoke: tiny model, seconds; quick: one seed; full: three seeds)"""


def variant_spec(spec: dict, name: str) -> dict:
    algo, overrides = VARIANTS[name]
    return {**spec, "overrides": (*spec.get("overrides", ()), *overrides), "algo": algo}


def run_variant(name: str, seed: int, spec: dict, start_evals: dict) -> dict:
    """One variant and seed: RL from its warm start until the budget (prompting only: the warm
    start's evaluation). Caches the warm start's evaluation in `start_evals`."""
    vspec = variant_spec(spec, name)
    algo = vspec["algo"]
    model = L.warm_start(algo, vspec)
    key = L.start_eval_key(model, algo, vspec)
    if name == "prompting_only":
        if key not in start_evals:
            from benchmarks.harness import Stack

            cfg = L.make_cfg(WORK_DIR / "prompting_only", algo=algo, seed=seed, spec=vspec)
            with local_ray():
                stack = Stack(cfg, model_path=model)
                try:
                    start_evals[key] = L.evaluate(stack, cfg)
                finally:
                    stack.shutdown()
        ev = start_evals[key]
        return {"variant": name, "algo": algo, "seed": seed, "warm_start": key, "start_success": ev["success"],
                "final_success": ev["success"], "final_eval": ev, "env_steps": 0, "seconds": ev["seconds"],
                "rise": 0.0, "rise_ci95": [0.0, 0.0], "sampled": L.sampled_rise(ev, ev)}
    with local_ray():
        res = L.run_one(algo, seed, vspec, model, WORK_DIR / spec["size"] / f"{name}-seed{seed}", start_evals.get(key))
    start_evals.setdefault(key, res.pop("start_eval"))
    res.pop("start_eval", None)
    res.update(variant=name, warm_start=key, final_eval=res["evals"][-1])
    return res


def compare(out: dict) -> None:
    """Per variant: means over its seeds, and the paired difference from full HiMAC of each seed."""
    from himac_ray.evaluate import SAMPLED, paired_interval

    runs = out["runs"]
    out["table"] = {}
    for name in out["spec"]["variants"]:
        rs = [runs[f"{name}-seed{s}"] for s in out["spec"]["seeds"] if f"{name}-seed{s}" in runs]
        if not rs:
            continue
        row = {"label": LABELS[name], "seeds": [r["seed"] for r in rs],
               "greedy": statistics.mean(r["final_success"] for r in rs),
               "env_steps": statistics.mean(r["env_steps"] for r in rs), "paper_alfworld_7b": PAPER_ALFWORLD_7B.get(name)}
        if all(SAMPLED in r["final_eval"] for r in rs):
            row["sampled"] = statistics.mean(r["final_eval"][SAMPLED]["success"] for r in rs)
        vs = []
        for r in rs:
            base = runs.get(f"{BASELINE}-seed{r['seed']}")
            if base is not None and name != BASELINE:
                mean, lo, hi = paired_interval(base["final_eval"]["won_by_seed"], r["final_eval"]["won_by_seed"])
                vs.append({"seed": r["seed"], "diff": mean, "ci95": [lo, hi]})
        if vs:
            row["vs_himac"] = vs
            row["vs_himac_mean"] = statistics.mean(v["diff"] for v in vs)
        sizes = [it.get(key) for r in rs for it in r.get("iterations", []) for key in M.GROUP_SIZE_MEAN.values()]
        sizes = [x for x in sizes if x is not None]
        if sizes:
            row["mean_group_size"] = statistics.mean(sizes)
        out["table"][name] = row


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench ablations`: options `size` (smoke | quick | full), `seeds`, `budget`, `minutes`
    (wall-clock cap per run), `variants`, `overrides` (`--set`, on every variant). Finished runs are
    kept and skipped; a results file of another budget or other overrides is an error, never overwritten."""
    size = opt(args, "size", "quick" if quick else "full")
    spec = L.with_run_options(dict(SIZES[size], size=size, variants=list(VARIANTS)), args)
    if opt(args, "variants"):
        spec["variants"] = str(opt(args, "variants")).split(",")
        unknown = sorted(set(spec["variants"]) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown ablation variant(s) {unknown}; choose from {list(VARIANTS)}")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = (WORK_DIR if size == "smoke" else RESULTS_DIR) / f"ablations_{size}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"bench": "ablations", "size": size, "machine": machine(), "config": str(L.CONFIG.relative_to(ROOT)),
           "runs": {}, "start_evals": {}}
    if size != "smoke" and path.exists():
        saved = json.loads(path.read_text())
        was = saved.get("spec", {})
        if [was.get("budget"), list(was.get("overrides", []))] != [spec["budget"], list(spec.get("overrides", ()))]:
            raise ValueError(f"{path} holds runs of budget {was.get('budget')} with overrides {was.get('overrides')}; "
                             f"this command asks for budget {spec['budget']} with {list(spec.get('overrides', ()))}: "
                             "rerun with those, or move the file aside to start a new table")
        out["runs"], out["start_evals"] = saved.get("runs", {}), saved.get("start_evals", {})
    out["spec"] = spec
    # full HiMAC first: every other variant is compared with it, and prompting only reuses its warm start's eval
    for name in sorted(spec["variants"], key=lambda v: v != BASELINE):
        for seed in spec["seeds"]:
            key = f"{name}-seed{seed}"
            if key in out["runs"]:
                continue
            log(f"ablations: {key} ({LABELS[name]})")
            out["runs"][key] = run_variant(name, seed, spec, out["start_evals"])
            r = out["runs"][key]
            log(f"ablations: {key}: held-out greedy {r['final_success']:.3f} after {r['env_steps']} env steps")
            compare(out)
            save_json(path, out)
    compare(out)
    save_json(path, out)
    out["path"] = str(path)
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    spec = out["spec"]
    lines = [f"ablations bench ({out['size']}): {spec['model']} + SFT warm start, Sokoban 6x6/1 box, RL until "
             f"{spec['budget']} env steps, held-out success on {spec['eval_episodes']} rooms, seeds {spec['seeds']}",
             f"  {'variant':<24} {'greedy':>6} {'sampled':>7} {'env steps':>9} {'mean G':>6}  "
             f"{'vs full HiMAC (paired, per seed, 95%)':<40} {'paper ALFWorld 7B':>17}"]
    for row in out.get("table", {}).values():
        vs = "  ".join(f"{v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for v in row.get("vs_himac", []))
        sampled = f"{row['sampled']:.3f}" if "sampled" in row else "-"
        size = f"{row['mean_group_size']:.1f}" if "mean_group_size" in row else "-"
        paper = f"{row['paper_alfworld_7b']:.1f}" if row.get("paper_alfworld_7b") is not None else "-"
        lines.append(f"  {row['label']:<24} {row['greedy']:>6.3f} {sampled:>7} {row['env_steps']:>9.0f} {size:>6}  "
                     f"{vs or '-':<40} {paper:>17}")
    return "\n".join(lines)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], seeds={}, budget={"type": int}, minutes={"type": float}, variants={})
