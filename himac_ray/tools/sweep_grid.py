"""`himac-ray sweep`'s grid and results, pure (no Ray): the `--grid` values and their combinations,
each trial's config, name and report keys, and after the run the per-trial summary, the table and
the curves PNG. The Tune trainable is in `sweep_trial.py`, the command and driver in `sweep.py`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import yaml

from himac_ray import metrics as M
from himac_ray.atomic import publish_file
from himac_ray.config import ConfigError, config_from_dict, config_to_dict

SUMMARY_FILE = "sweep_summary.json"
TABLE_FILE = "sweep_table.txt"
PLOT_FILE = "sweep_curves.png"
REPORT_KEYS = {
    "success_rate": M.SUCCESS_RATE,
    "mean_return": M.MEAN_RETURN,
    "env_steps": M.ENV_STEPS,
    "invalid_action_rate": M.INVALID_RATE,
    "mean_response_len": M.RESPONSE_LEN,
    "rollout_tokens_per_s": M.ROLLOUT_TOKENS_PER_S,
    "eval_success_rate": M.EVAL_SUCCESS,
}
"""name in a Tune report -> key in metrics.jsonl"""


# ------------------------------------------------------------------ grid


def split_values(text: str) -> list[str]:
    """`2,4,8` -> ['2', '4', '8']; commas inside [] or {} stay (`[6,6],[8,8]` -> two values)."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [v.strip() for v in out]


def parse_grid(items: list[str]) -> dict[str, list]:
    """`["algorithm.group_size=2,4,8"]` -> {"algorithm.group_size": [2, 4, 8]} (values parsed as YAML)."""
    grid: dict[str, list] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like key.sub=v1,v2,...")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in grid:
            raise ConfigError(f"--grid {key} given twice")
        if key == "run.dir":
            raise ConfigError("--grid run.dir: every trial gets its own run.dir inside the experiment directory")
        values = []
        for text in split_values(raw):
            if not text:
                raise ConfigError(f"--grid {item!r}: empty value")
            try:
                values.append(yaml.safe_load(text))
            except yaml.YAMLError as err:
                raise ConfigError(f"--grid {item!r}: cannot parse {text!r}: {err}") from None
        grid[key] = values
    return grid


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination, first key slowest: {"a": [1, 2], "b": [3]} -> [{a: 1, b: 3}, {a: 2, b: 3}]."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def set_dotted(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[parts[-1]] = value


def trial_config_dict(base: dict, params: dict, run_dir: str | Path) -> dict:
    """The base config with a trial's overrides and run.dir, validated."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    set_dotted(data, "run.dir", str(run_dir))
    return config_to_dict(config_from_dict(data))



def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def short_params(params: dict) -> str:
    """`algorithm.group_size=4,learner.lr=1e-06` -> `group_size=4,lr=1e-06` (last key part)."""
    return ",".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in params.items())


class TrialNamer:
    """Tune trial name / directory name: `<trial id>_<short params>` (picklable)."""

    def __init__(self, keys: list[str]):
        self.keys = list(keys)

    def __call__(self, trial) -> str:
        params = {k: trial.config[k] for k in self.keys if k in trial.config}
        name = f"{trial.trial_id}_{short_params(params)}" if params else trial.trial_id
        return "".join(c if c.isalnum() or c in "._=,-" else "-" for c in name)[:120]


# ------------------------------------------------------------------ results


def read_rows(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl rows; [] when it is missing or unreadable."""
    try:
        return M.MetricsLog(run_dir).rows()
    except (OSError, ValueError):
        return []


def summarize_rows(rows: list[dict]) -> dict:
    """Best training success rate, env steps when first reached, final values; rows in iteration order."""
    rows = sorted({r[M.ITERATION]: r for r in rows}.values(), key=lambda r: r[M.ITERATION])
    if not rows:
        return {"iterations": 0, "best_success": None, "env_steps_to_best": None, "iteration_of_best": None,
                "final_success": None, "final_env_steps": None, "final_mean_return": None}
    best = max(r.get(M.SUCCESS_RATE, 0.0) for r in rows)
    first = next(r for r in rows if r.get(M.SUCCESS_RATE, 0.0) >= best)
    return {
        "iterations": len(rows),
        "best_success": best,
        "env_steps_to_best": int(first.get(M.ENV_STEPS, 0)),
        "iteration_of_best": int(first[M.ITERATION]),
        "final_success": rows[-1].get(M.SUCCESS_RATE),
        "final_env_steps": int(rows[-1].get(M.ENV_STEPS, 0)),
        "final_mean_return": rows[-1].get(M.MEAN_RETURN),
    }


def _rows_from_tune(result) -> list[dict]:
    """Metrics rows rebuilt from Tune's reported results (when the run dir is not readable here)."""
    df = result.metrics_dataframe
    if df is None or "iteration" not in df:
        return []
    rows = []
    for rec in df.to_dict("records"):
        if rec.get("iteration") is None or (isinstance(rec["iteration"], float) and math.isnan(rec["iteration"])):
            continue
        row = {M.ITERATION: int(rec["iteration"]), M.TRAINABLE: rec.get("trainable", "")}
        row.update({key: rec[name] for name, key in REPORT_KEYS.items() if name in rec})
        rows.append(row)
    return rows


def _trial_params(result, run_dir: Path, keys: list[str]) -> dict:
    """The trial's grid values: from Tune, or (a trial that never reported) from its run's config.json."""
    if result.config:
        return {k: result.config.get(k) for k in keys}
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {k: None for k in keys}
    out = {}
    for k in keys:
        node = cfg
        for part in k.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[k] = node
    return out


def collect(result_grid, exp_dir: Path, keys: list[str], points: list[dict]) -> list[dict]:
    """One entry per trial, in grid order: name, params, status, error, summary and metrics rows."""
    trials = []
    for result in result_grid:
        name = Path(result.path).name
        rows = read_rows(exp_dir / name / "run") or _rows_from_tune(result)
        rows = sorted({r[M.ITERATION]: r for r in rows}.values(), key=lambda r: r[M.ITERATION])
        error = result.error
        last_line = str(error).strip().splitlines()[-1] if error and str(error).strip() else ""
        trials.append({
            "trial": name,
            "params": _trial_params(result, exp_dir / name / "run", keys),
            "status": "ERROR" if error else "OK",
            "error": f"{type(error).__name__}: {last_line}" if error else None,
            "run_dir": str(exp_dir / name / "run"),
            **summarize_rows(rows),
            "rows": rows,
        })
    order = [json.dumps(p, sort_keys=True, default=str) for p in points]

    def position(t):
        key = json.dumps(t["params"], sort_keys=True, default=str)
        return (order.index(key) if key in order else len(order), t["trial"])

    return sorted(trials, key=position)


def trial_id(name: str) -> str:
    """`27938_00001_group_size=4` -> `27938_00001` (Tune's trial id)."""
    return "_".join(name.split("_", 2)[:2])


def format_table(trials: list[dict], keys: list[str]) -> str:
    headers = ["trial", *[k.rsplit(".", 1)[-1] for k in keys], "status", "iters", "best success",
               "env steps to best", "final success"]
    lines = []
    best = max((t["best_success"] for t in trials if t["best_success"] is not None), default=None)
    for t in trials:
        cells = [trial_id(t["trial"]), *[format_value(t["params"].get(k)) for k in keys], t["status"],
                 str(t["iterations"]),
                 "-" if t["best_success"] is None else f"{t['best_success']:.3f}"
                 + (" *" if best is not None and t["best_success"] == best and best > 0 else ""),
                 "-" if t["env_steps_to_best"] is None else str(t["env_steps_to_best"]),
                 "-" if t["final_success"] is None else f"{t['final_success']:.3f}"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)] if lines else [len(h) for h in headers]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*c) for c in lines]
    for t in trials:
        if t["error"]:
            out.append(f"error in {trial_id(t['trial'])}: {t['error']}")
    return "\n".join(out)


def plot_trials(trials: list[dict], path: Path, *, title: str = "") -> Path | None:
    """Success rate and mean return against env steps, one curve per trial."""
    if not any(t["rows"] for t in trials):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for t in trials:
        if not t["rows"]:
            continue
        label = short_params(t["params"]) or t["trial"]
        if t["status"] != "OK":
            label += " (error)"
        x = [r.get(M.ENV_STEPS, r[M.ITERATION]) for r in t["rows"]]
        ax1.plot(x, [r.get(M.SUCCESS_RATE, float("nan")) for r in t["rows"]], marker="o", ms=3, label=label)
        ax2.plot(x, [r.get(M.MEAN_RETURN, float("nan")) for r in t["rows"]], marker="o", ms=3, label=label)
    for ax, ylabel in ((ax1, "train success rate"), (ax2, "mean return")):
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax1.set_ylim(-0.05, 1.05)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    publish_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_results(trials: list[dict], exp_dir: Path, keys: list[str], *, title: str = "") -> str:
    table = format_table(trials, keys)
    (exp_dir / TABLE_FILE).write_text(table + "\n")
    summary = [{k: v for k, v in t.items() if k != "rows"} for t in trials]
    (exp_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    plot_trials(trials, exp_dir / PLOT_FILE, title=title)
    return table

