"""GPU-cluster sizing model: tokens per iteration, sampler/learner split, weight sync, iteration time.

`himac-ray plan --config F [--gpus N] [--gpu H100-80GB]` prints, for one config, every sensible
way to lay the run out on N GPUs (colocated or split sampler/learner, engine tensor-parallel size),
the estimated rollout / learn / sync / iteration seconds, the GPU memory each side needs, and which
layout is fastest among those that fit. `python -m himac_ray.tools.sizing --paper` prints the table for
the paper's settings (docs/scaling.md embeds it; a test keeps the two equal).

The model is a roofline-style estimate, not a simulator. Every number it uses is in `GPUS`,
`MODELS`, `PROMPT_TOKENS` or `Assumptions`, each with its source (a datasheet, a published
measurement, or "assumption" when nobody publishes one). docs/scaling.md explains the formulas.

What one iteration costs (HiMAC, as `himac_ray.trainer` runs it):

- planner iteration: a macro rollout (one planner round: `num_groups` prompts sampled n=G, then up
  to `max_steps` executor rounds over the G x num_groups episodes, greedy), learn on the plan
  records, sync.
- executor iteration: a micro rollout, which first runs the same macro pass to pick each group's
  best blueprint z*, then G executions of z* per group; learn on the micro act records, sync.
- co-evolution off: one macro rollout, learn on plan + act records. Flat GRPO/GiGPO/RLOO: one flat
  rollout (max_steps rounds), learn on its act records.

Rollout round time on one engine holding b sequences of prompt length P (tokens), response cap C,
mean response length m:
    prefill  = prompts * P * (1 - prefix_hit) * flops_fwd(P) / (tp * peak * prefill_mfu)
    decode   = m * t_step(b) + (C - m) * t_step(1)          (the straggler tail: the batch call
                                                              ends with its longest response)
    t_step(b)= max((W/tp + b * ctx * kv_bytes/tp) / (hbm * decode_bw_eff),
                   b * flops_fwd(ctx) / (tp * peak * decode_mfu)) + tp_overhead
Learner: trained tokens * (6N + attention [+ 2N reference forward]) / (ranks * peak * train_mfu),
bounded below by ZeRO's per-micro-step collectives. Sync: bf16 weights over the layout's path.
Iteration: rollout + learn + sync (`iter s`, run.pipeline sync); async (`async s`, one rollout ahead):
max(rollout, learn) + sync on split layouts, the next rollout beside this learner step, the sync
overlapping nothing (`ASYNC_ASSUMPTION`); colocated layouts: no gain counted.

Pure Python (no Ray, no torch); `measure_prompt_tokens` imports the envs, prompts and a tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from himac_ray.tools.sizing_model import *  # noqa: F401,F403
from himac_ray.tools.sizing_model import (
    SYNC_PATHS,
    pipeline_of,
    plan,
    plan_from_config,
    sync_seconds,
)
from himac_ray.tools.sizing_specs import *  # noqa: F401,F403  (re-exported: one import for callers)
from himac_ray.tools.sizing_specs import (
    DEFAULT_GPU,
    FIGURES,
    GB,
    GPUS,
    MODELS,
    PROMPT_TOKENS,
    PROMPT_TOKENS_SOURCE,
    Assumptions,
    SizingError,
    measure_prompt_tokens,
    model_spec,
)
from himac_ray.tools.sizing_workload import *  # noqa: F401,F403
from himac_ray.tools.sizing_workload import Workload, tokens_per_iteration, workload_from_config

# ---------------------------------------------------------------------------------------------
# Paper settings
# ---------------------------------------------------------------------------------------------
PAPER_SETTINGS = (
    # label, env kind, model key, max steps, GPUs, groups
    ("ALFWorld 1.5B", "alfworld", "qwen2.5-1.5b", 50, 2, 16),
    ("WebShop 1.5B", "webshop", "qwen2.5-1.5b", 15, 2, 16),
    ("ALFWorld 7B", "alfworld", "qwen2.5-7b", 50, 4, 16),
    ("WebShop 7B", "webshop", "qwen2.5-7b", 15, 4, 16),
    ("Sokoban 7B", "sokoban", "qwen2.5-7b", 15, 4, 16),
    ("ALFWorld 7B", "alfworld", "qwen2.5-7b", 50, 64, 16),
    ("ALFWorld 7B, 128 groups", "alfworld", "qwen2.5-7b", 50, 64, 128),
)


def paper_workload(env_kind: str, max_steps: int, groups: int = 16, label: str = "", *, zero_stage: int = 2,
                   micro_batch: int = 8) -> Workload:
    """The paper's workload (16 x 8 groups, caps 512, prompt + response <= 2560) on `env_kind`."""
    plan_p, act_p, flat_p = PROMPT_TOKENS[env_kind]
    return Workload(env_kind, "himac", num_groups=groups, group_size=8, max_steps=max_steps, plan_prompt=plan_p,
                    act_prompt=act_p, flat_prompt=flat_p, plan_cap=512, act_cap=512, max_len=2560,
                    zero_stage=zero_stage, micro_batch=micro_batch, label=label)


def paper_rows(gpu: str = DEFAULT_GPU, a: Assumptions | None = None, *, split_only: bool = False) -> list[dict]:
    """The fastest layout that fits for each of the paper's settings (Qwen2.5-1.5B on 2 GPUs, 7B on
    4 and 64); `split_only` leaves out colocated layouts (the configs in configs/ are split).
    1.5B uses ZeRO-2 and micro-batches of 8, 7B ZeRO-3 and micro-batches of 2 on 4 GPUs (as the
    configs) and of 8 on 64 GPUs."""
    a = a or Assumptions()
    out = []
    for label, kind, key, steps, n, groups in PAPER_SETTINGS:
        m = MODELS[key]
        big = m.params > 3e9
        mb = 2 if big and n <= 8 else 8  # 64-way ZeRO-3 shards leave room for bigger micro-batches
        w = paper_workload(kind, steps, groups, label=f"{label} / {n} GPUs", zero_stage=3 if big else 2,
                           micro_batch=mb)
        rows = [r for r in plan(w, m, GPUS[gpu], n, a) if not (split_only and r["colocated"])]
        best = next((r for r in rows if r["fits"]), rows[0])
        out.append({**best, "best": False})
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
ASYNC_ASSUMPTION = ("async s = max(rollout, learn) + sync per iteration (run.pipeline=async: the next rollout runs "
                    "beside this learner step; samplers load new weights between generate calls, so the sync "
                    "overlaps nothing); colocated layouts: = iter s (the same GPUs do both)")
"""the one-line statement of the async estimate `himac-ray plan` prints"""
COLUMNS = (
    ("setting", "setting", "{}"),
    ("layout", "layout", "{}"),
    ("rollout_s", "rollout s", "{:.0f}"),
    ("train_s", "learn s", "{:.0f}"),
    ("sync_path", "sync path", "{}"),
    ("sync_s", "sync s", "{:.1f}"),
    ("iter_s", "iter s", "{:.0f}"),
    ("async_iter_s", "async s", "{:.0f}"),
    ("gpu_busy", "GPU busy", "{:.0%}"),
    ("gen_tokens_per_s", "gen tok/s", "{:,.0f}"),
    ("sampler_mem_gb", "sampler GB", "{:.0f}"),
    ("learner_mem_gb", "learner GB", "{:.0f}"),
    ("fits", "fits", "{}"),
)
NOTE_COLUMN = ("notes", "notes", "{}")


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key, "")
    if key == "fits":
        return "yes" if value else "no"
    if key == "layout" and row.get("best"):
        value = f"* {value}"
    elif key == "layout" and row.get("origin") == "config":
        value = f"(config) {value}"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_plan_table(rows: list[dict], *, markdown: bool = False, columns=COLUMNS) -> str:
    """A text (or Markdown) table of sizing rows; `*` marks the best layout that fits.
    Columns whose values are all empty (e.g. `setting` for one config) are dropped."""
    cols = [c for c in columns if any(str(r.get(c[0], "")) for r in rows)]
    head = [c[1] for c in cols]
    body = [[_cell(r, key, fmt) for key, _, fmt in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt_row = lambda cells: "  ".join(c.ljust(wd) if i < 2 else c.rjust(wd) for i, (c, wd) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [fmt_row(head), "  ".join("-" * wd for wd in widths)]
    lines += [fmt_row(row) for row in body]
    return "\n".join(lines)


def format_tokens(w: Workload, a: Assumptions | None = None, *, markdown: bool = False) -> str:
    """Records and tokens per iteration kind."""
    rows = tokens_per_iteration(w, a)
    head = ["iteration", "share", "plan records", "act records", "prompt tokens", "generated tokens",
            "trained records", "trained tokens"]
    body = [[r["phase"], f"{r['share']:.0%}", f"{r['plan_records']:,.0f}", f"{r['act_records']:,.0f}",
             f"{r['prompt_tokens'] / 1e6:.2f}M", f"{r['generated_tokens'] / 1e6:.2f}M",
             f"{r['trained_records']:,.0f}", f"{r['trained_tokens'] / 1e6:.2f}M"] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                         + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    return "\n".join(["  ".join(h.rjust(wd) for h, wd in zip(head, widths))]
                     + ["  ".join(c.rjust(wd) for c, wd in zip(b, widths)) for b in body])


def sync_table(gpu: str = DEFAULT_GPU, a: Assumptions | None = None, *, markdown: bool = True) -> str:
    """Weight-sync seconds per path for the paper's model sizes (ZeRO-2 sender, 256 MB buckets)."""
    a = a or Assumptions()
    g = GPUS[gpu]
    head = ["model", "bf16 weights", *SYNC_PATHS]
    body = []
    for key in ("qwen2.5-1.5b", "qwen2.5-7b"):
        m = MODELS[key]
        cells = [m.name, f"{m.weight_bytes(2) / GB:.1f} GB"]
        cells += [f"{sync_seconds(p, m, g, a, receiver_nodes=7 if p == 'objstore' else 1):.2f} s" for p in SYNC_PATHS]
        body.append(cells)
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                         + ["| " + " | ".join(b) + " |" for b in body])
    return "\n".join("  ".join(c for c in row) for row in [head, *body])


def figures_table() -> str:
    """The published / measured figures behind the model, then the assumptions, as Markdown."""
    from himac_ray.tools.config_docs import field_docstrings

    lines = ["| figure | value | source |", "|---|---|---|"]
    lines += [f"| {f} | {v} | {s} |" for f, v, s in FIGURES]
    lines += ["", "| assumption (`--assume KEY=VALUE`) | default | meaning |", "|---|---|---|"]
    docs = field_docstrings(Assumptions)
    for f in dataclasses.fields(Assumptions):
        meaning = " ".join(docs.get(f.name, "").split()).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.default!r} | {meaning} |")
    lines += ["", "| GPU | source |", "|---|---|"]
    lines += [f"| {g.name} | {g.source} |" for g in GPUS.values()]
    lines += ["", f"Prompt lengths (`PROMPT_TOKENS`): {PROMPT_TOKENS_SOURCE}."]
    return "\n".join(lines)


def paper_report(gpus: tuple[str, ...] = ("H100-80GB", "A100-80GB")) -> str:
    """The generated block docs/scaling.md embeds (a test checks it is current)."""
    parts = []
    for gpu in gpus:
        parts.append(f"#### {gpu}: fastest layout that fits\n\n" + format_plan_table(paper_rows(gpu), markdown=True))
        parts.append(f"#### {gpu}: fastest split layout (sampler and learner on separate GPUs)\n\n"
                     + format_plan_table(paper_rows(gpu, split_only=True), markdown=True))
    parts.append("#### Records and tokens per iteration (ALFWorld, 16 x 8, 50 steps, caps 512)\n\n"
                 + format_tokens(paper_workload("alfworld", 50), markdown=True))
    parts.append("#### Weight sync, H100-80GB (one push of the bf16 policy; ZeRO-2 sender, 256 MB buckets; "
                 "objstore to 7 nodes)\n\n" + sync_table("H100-80GB"))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _parse_assume(items: list[str]) -> Assumptions:
    a = Assumptions()
    names = {f.name: f.type for f in dataclasses.fields(Assumptions)}
    changes = {}
    for item in items or []:
        key, _, raw = item.partition("=")
        if key not in names or not raw:
            raise SizingError(f"--assume {item!r}: use key=value with key one of {sorted(names)}")
        current = getattr(a, key)
        changes[key] = (raw.lower() in ("1", "true", "yes")) if isinstance(current, bool) else type(current)(raw)
    return dataclasses.replace(a, **changes)


def add_arguments(parser: argparse.ArgumentParser, *, config_args: bool = True) -> argparse.ArgumentParser:
    """The `plan` options (pass `config_args=False` when the parser already has --config/--set)."""
    if config_args:
        parser.add_argument("--config", help="YAML config file (see configs/)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override one config key (repeatable)")
    parser.add_argument("--gpus", type=int, help="GPUs to plan for (default: what the config's sampler/learner use)")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS), help="GPU type")
    parser.add_argument("--model", help="model for sizing (default: model.path), e.g. qwen2.5-7b")
    parser.add_argument("--assume", action="append", default=[], metavar="KEY=VALUE",
                        help="change an assumption, e.g. --assume mean_steps_fraction=0.6 (repeatable)")
    parser.add_argument("--measure-prompts", action="store_true",
                        help="measure prompt lengths with the model's tokenizer (local folder) instead of the table")
    parser.add_argument("--top", type=int, default=0, help="show only the N fastest layouts")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--paper", action="store_true", help="print the paper-settings report (docs/scaling.md)")
    parser.add_argument("--figures", action="store_true", help="print the published figures and their sources")
    return parser


def _tokenizer_for(path: str):
    from transformers import AutoTokenizer

    from himac_ray.models import resolve_model

    try:
        folder = resolve_model(path)
    except Exception:  # noqa: BLE001  (unknown / missing model: fall back to the embedded tokenizer)
        folder = resolve_model("embedded")
    return AutoTokenizer.from_pretrained(str(folder))


def run(args) -> int:
    """Execute parsed `plan` arguments; returns the exit code."""
    try:
        a = _parse_assume(args.assume)
        if args.figures:
            print(figures_table())
            return 0
        if args.paper:
            print(paper_report(), end="")
            return 0
        from himac_ray.config import ConfigError, load_config

        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as err:
            print(f"himac-ray plan: config error: {err}", file=sys.stderr)
            return 2
        prompt_tokens = None
        if args.measure_prompts:
            r = cfg.rollout
            prompt_tokens = measure_prompt_tokens(cfg.env.id, _tokenizer_for(cfg.model.path),
                                                  env_kwargs=dict(cfg.env.kwargs), max_subgoals=r.max_subgoals,
                                                  history_length=r.history_length)
        rows = plan_from_config(cfg, gpus=args.gpus, gpu=args.gpu, assumptions=a, model=args.model,
                                prompt_tokens=prompt_tokens)
    except SizingError as err:
        print(f"himac-ray plan: {err}", file=sys.stderr)
        return 2
    if args.top:
        rows = rows[: args.top] + [r for r in rows[args.top:] if r["origin"] == "config"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = workload_from_config(cfg, prompt_tokens=prompt_tokens)
    m = model_spec(args.model or cfg.model.path)
    print(f"{m.name} ({m.params / 1e9:.2f}B), {w.env_kind}, {w.algorithm}: {w.num_groups} groups x {w.group_size}, "
          f"max {w.max_steps} steps, prompts plan/act {w.plan_prompt}/{w.act_prompt} tokens, "
          f"caps {w.plan_cap}/{w.act_cap}; {args.gpu}; mean_steps_fraction={a.mean_steps_fraction}, "
          f"response_fill={a.response_fill}")
    print()
    print(format_tokens(w, a, markdown=args.markdown))
    print()
    print(format_plan_table(rows, markdown=args.markdown, columns=COLUMNS + (NOTE_COLUMN,)))
    mode = "async s" if pipeline_of(cfg) == "async" else "iter s"
    print(f"\n* = fastest layout that fits in memory (by {mode}: the config's run.pipeline). "
          "Estimates; see docs/scaling.md for the model and its sources.")
    print(ASYNC_ASSUMPTION + ".")
    for r in rows:
        if (r["best"] or r["origin"] == "config") and r["advice"]:
            print(f"{r['layout']}: " + "; ".join(r["advice"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m himac_ray.tools.sizing --config F [--gpus N] ...` (also `himac-ray plan`)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="himac-ray plan", description="Estimate GPU layout, weight-sync and iteration time for a config."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
