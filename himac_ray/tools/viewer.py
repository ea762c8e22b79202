"""`himac-ray view RUN_DIR`: a self-contained HTML report of a run's trajectories.

Reads `RUN_DIR/trajectories/iter_*.parquet` (`data.read_parquet` / `table_to_records`),
`metrics.jsonl` and `eval.jsonl`, and writes one HTML file with inline CSS, JS and SVG (no
network, no CDN): the learning curve on top, then per episode the task, the blueprint with each
subgoal, and every step's observation (the board PNG as a data: URI for visual envs, the text
otherwise), the model's output, validity, reward, `<sub_done>` and advantage. Filters (iteration,
phase, rollout mode, success) are plain JS over server-rendered HTML, so the page reads the same
without JS. Every text field is escaped (`html.escape`): model outputs are untrusted.

The task text and the executed blueprint come from the episode's first record (`Record.extra`, runs
since session 5); for older runs the task text is recovered by resetting the run's env with the episode's
seed (built-in envs only; "" otherwise) and an executor-phase (micro) episode, which has no `plan`
record, shows only its blueprint's size. `--serve` serves the page on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
from collections import defaultdict
from pathlib import Path

from himac_ray import metrics as M
from himac_ray.names import MODES

ESC = html.escape
_SHA_LINE = re.compile(r"\n\[image sha1:[0-9a-f]+\]$")


# ---------------------------------------------------------------- reading a run


def trajectory_files(run_dir: Path, iteration: int | None = None) -> list[tuple[int, Path]]:
    files = []
    for path in sorted((run_dir / "trajectories").glob("iter_*.parquet")):
        match = re.fullmatch(r"iter_(\d+)\.parquet", path.name)
        if match and (iteration is None or int(match.group(1)) == iteration):
            files.append((int(match.group(1)), path))
    return files


def _task_of(env_id: str, env_kwargs: dict, seed: int, cache: dict) -> str:
    """The episode's task text: the built-in env reset with the episode's seed ("" when it cannot be)."""
    key = (env_id, seed)
    if key not in cache:
        cache[key] = ""
        if "Real" not in env_id:  # adapters to the real packages may need data absent here
            try:
                import gymnasium as gym

                import himac_ray.envs  # noqa: F401  (registers the env ids)

                env = gym.make(env_id, **env_kwargs)
                try:
                    _, info = env.reset(seed=int(seed))
                    cache[key] = str(info.get("task", ""))
                finally:
                    env.close()
            except Exception:  # noqa: BLE001  (the report shows the episode without its task)
                pass
    return cache[key]


def load_episodes(run_dir: Path, *, iteration: int | None = None, max_episodes: int = 0) -> tuple[list[dict], int]:
    """(episodes, episodes in the Parquet files): one dict per episode with its plan and steps.

    `max_episodes` > 0 keeps at most that many per iteration (whole groups first)."""
    from himac_ray import parsers
    from himac_ray.data import read_parquet, table_to_records

    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    env_cfg, max_subgoals = config.get("env", {}), int(config.get("rollout", {}).get("max_subgoals", 16))
    phases = {r[M.ITERATION]: r.get(M.TRAINABLE, "") for r in M.MetricsLog(run_dir).rows()}
    tasks: dict = {}
    episodes, total = [], 0
    for it, path in trajectory_files(run_dir, iteration):
        by_traj: dict[str, list] = defaultdict(list)
        for r in table_to_records(read_parquet(path)):
            by_traj[r.traj_id].append(r)
        total += len(by_traj)
        kept = list(by_traj.items())[:max_episodes] if max_episodes > 0 else list(by_traj.items())
        for traj_id, records in kept:
            first = records[0]
            kwargs = env_cfg.get("kwargs", {}) if env_cfg.get("id") == first.env_id else {}
            # runs since session 5 store the task and the executed blueprint on the episode's first
            # record (`rollout.EPISODE_KEYS`); older runs: reset the env / parse the plan record
            task = next((str(r.extra["task"]) for r in records if "task" in r.extra), None)
            task = task if task is not None else _task_of(first.env_id, kwargs or {}, first.seed, tasks)
            plan = next((r for r in records if r.level == "plan"), None)
            subgoals = next(([str(x) for x in r.extra["subgoals"]] for r in records
                             if isinstance(r.extra.get("subgoals"), list)), None)
            if subgoals is None:
                subgoals = parsers.parse_plan(plan.response_text, max_subgoals, task=task)[0] if plan else []
            mode = first.group_id.split("-", 1)[0]
            episodes.append({
                "iteration": it, "traj_id": traj_id, "group_id": first.group_id, "seed": first.seed,
                "env_id": first.env_id, "mode": mode if mode in MODES else "other", "phase": phases.get(it, ""),
                "won": any(r.won for r in records), "return": records[-1].episode_return, "task": task,
                "plan": plan, "subgoals": subgoals, "num_subgoals": max((r.num_subgoals for r in records), default=0),
                "steps": sorted((r for r in records if r.level == "act"), key=lambda r: r.step),
                "task_type": first.extra.get("task_type", ""),
            })
    return episodes, total


# ---------------------------------------------------------------- rendering


def _fmt(x: float) -> str:
    return f"{x:+.3f}" if x else "0"


def _observation(r) -> str:
    text = _SHA_LINE.sub("", r.anchor)
    if r.image:
        img = base64.b64encode(r.image).decode("ascii")
        return f'<img class="board" alt="board at step {r.step}" src="data:image/png;base64,{img}">'
    return f"<pre>{ESC(text)}</pre>"


def render_episode(e: dict, *, expanded: bool = False) -> str:
    outcome = "won" if e["won"] else "lost"
    head = (f'<span class="badge {outcome}">{outcome}</span> iteration {e["iteration"]} · {ESC(e["phase"] or "?")} phase '
            f'· {ESC(e["mode"])} · <code>{ESC(e["traj_id"])}</code> · seed {e["seed"]} · return {e["return"]:+.2f} '
            f'· {len(e["steps"])} steps' + (f' · {ESC(e["task_type"])}' if e["task_type"] else ""))
    parts = [f'<details class="episode"{" open" if expanded else ""} data-iteration="{e["iteration"]}" data-phase="{ESC(e["phase"])}" '
             f'data-mode="{ESC(e["mode"])}" data-won="{int(e["won"])}"><summary>{head}</summary>',
             f'<p class="task"><b>Task</b> ({ESC(e["env_id"])}): {ESC(e["task"]) or "<i>not recoverable</i>"}</p>']
    plan = e["plan"]
    if plan is not None:
        items = "".join(f"<li>{ESC(s)}</li>" for s in e["subgoals"])
        parts.append(f'<div class="plan"><b>Blueprint</b> ({"valid" if plan.valid else "invalid: fallback"}, '
                     f'advantage {_fmt(plan.advantage)}, reward {_fmt(plan.reward)})<ol start="0">{items}</ol>'
                     f'<details><summary>planner output</summary><pre>{ESC(plan.response_text)}</pre></details></div>')
    elif e["mode"] != "flat" and e["subgoals"]:
        items = "".join(f"<li>{ESC(s)}</li>" for s in e["subgoals"])
        parts.append(f'<div class="plan"><b>Blueprint</b>: the group\'s best blueprint z*<ol start="0">{items}</ol></div>')
    elif e["mode"] != "flat":
        parts.append(f'<div class="plan"><b>Blueprint</b>: {e["num_subgoals"]} subgoals, the group\'s best blueprint z* '
                     f'(its text is not in this Parquet file)</div>')
    rows = []
    for r in e["steps"]:
        k = r.subgoal_index
        subgoal = f"{k}: {e['subgoals'][k]}" if 0 <= k < len(e["subgoals"]) else ("" if k < 0 else str(k))
        rows.append(f'<tr class="{"" if r.valid else "invalid"}"><td>{r.step}</td><td>{ESC(subgoal)}</td>'
                    f'<td>{_observation(r)}</td><td><pre>{ESC(r.response_text)}</pre></td>'
                    f'<td>{"✓" if r.valid else "✗ invalid"}</td><td>{_fmt(r.reward)}</td>'
                    f'<td>{"<b>sub_done</b>" if r.sub_done else ""}</td><td>{_fmt(r.advantage)}</td></tr>')
    parts.append('<table class="steps"><thead><tr><th>step</th><th>subgoal</th><th>observation</th><th>output</th>'
                 '<th>valid</th><th>reward</th><th>&lt;sub_done&gt;</th><th>advantage</th></tr></thead><tbody>'
                 + "".join(rows) + "</tbody></table></details>")
    return "\n".join(parts)


def _polyline(points: list[tuple[float, float]], color: str, *, dashed: bool = False) -> str:
    if not points:
        return ""
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in points)
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{path}"/>{dots}'


def render_curve(rows: list[dict], evals: list[dict], key: str, label: str, *, unit_range: bool) -> str:
    """One inline SVG chart of `key` against iterations (held-out success dashed, when unit_range)."""
    w, h, pad = 420, 180, 34
    series = [(r[M.ITERATION] + 1, r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    held = [(e[M.ITERATION], e["success_rate"]) for e in evals if unit_range and "success_rate" in e]
    ys = [y for _, y in series + held]
    if not ys:
        return f'<svg class="curve" width="{w}" height="{h}"><text x="10" y="20">no {ESC(label)} yet</text></svg>'
    lo, hi = (0.0, 1.0) if unit_range else (min(ys), max(ys))
    hi = hi if hi > lo else lo + 1.0
    x_max = max([x for x, _ in series + held] + [1])

    def pt(x: float, y: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * x / x_max, h - pad - (h - 2 * pad) * (y - lo) / (hi - lo)

    legend = f'<text x="{pad}" y="14" class="legend">{ESC(label)}' + (" · held-out (dashed)" if held else "") + "</text>"
    axes = (f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>'
            f'<text x="{pad - 4}" y="{h - pad}" text-anchor="end">{lo:g}</text>'
            f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{hi:.3g}</text>'
            f'<text x="{w - pad}" y="{h - pad + 16}" text-anchor="end">iterations done: {x_max}</text>')
    return (f'<svg class="curve" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{ESC(label)}">'
            f"{legend}{axes}{_polyline([pt(x, y) for x, y in series], '#6a3d9a')}"
            f"{_polyline([pt(x, y) for x, y in held], '#222', dashed=True)}</svg>")


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px} .curves{display:flex;gap:16px;flex-wrap:wrap}
.curve{background:#fff;border:1px solid #ddd} .curve text{font-size:11px;fill:#444} .legend{font-weight:bold}
.filters{margin:12px 0;padding:8px;background:#fff;border:1px solid #ddd} .filters label{margin-right:14px}
.episode{background:#fff;border:1px solid #ddd;margin:6px 0;padding:6px 10px} .episode>summary{cursor:pointer}
.badge{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-weight:bold}
.won{background:#2e7d32} .lost{background:#b23b3b}
.steps{border-collapse:collapse;margin-top:6px;width:100%} .steps td,.steps th{border:1px solid #e2e2e2;
padding:3px 6px;vertical-align:top;text-align:left} .steps tr.invalid{background:#fff1f1}
pre{margin:0;white-space:pre-wrap;word-break:break-word;font-size:12px;max-width:520px}
.board{width:96px;height:96px;image-rendering:pixelated} .task{margin:6px 0} .plan ol{margin:4px 0}
"""

JS = """
function applyFilters(){
  var f={};document.querySelectorAll('.filters select').forEach(function(s){f[s.name]=s.value;});
  var shown=0;document.querySelectorAll('details.episode').forEach(function(d){
    var ok=Object.keys(f).every(function(k){return f[k]==='all'||d.dataset[k]===f[k];});
    d.style.display=ok?'':'none';if(ok)shown++;});
  document.getElementById('shown').textContent=shown;
}
var sel=document.querySelectorAll('.filters select');
location.hash.slice(1).split('&').forEach(function(kv){var p=kv.split('=');sel.forEach(function(s){
  var v=decodeURIComponent(p[1]||'');
  if(s.name===p[0]&&Array.prototype.some.call(s.options,function(o){return o.value===v;}))s.value=v;});});
sel.forEach(function(s){s.addEventListener('change',function(){
  var h=[];sel.forEach(function(t){if(t.value!=='all')h.push(t.name+'='+t.value);});
  history.replaceState(null,'','#'+h.join('&'));applyFilters();});});
applyFilters();
"""
"""the filters start from the URL's #name=value&... (a link to a filtered view) and keep it updated"""


def _select(name: str, label: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{ESC(v)}">{ESC(t)}</option>' for v, t in [("all", "all")] + options)
    return f'<label>{label} <select name="{name}">{opts}</select></label>'


def render_report(run_dir: str | Path, *, iteration: int | None = None, max_episodes: int = 0) -> str:
    """The report's HTML text (see the module docstring)."""
    run_dir = Path(run_dir)
    episodes, total = load_episodes(run_dir, iteration=iteration, max_episodes=max_episodes)
    log = M.MetricsLog(run_dir)
    rows, evals = log.rows(), log.eval_rows()
    curves = (render_curve(rows, evals, M.SUCCESS_RATE, "success rate", unit_range=True)
              + render_curve(rows, evals, M.MEAN_RETURN, "mean return", unit_range=False))
    iterations = sorted({e["iteration"] for e in episodes})
    filters = "".join([
        _select("iteration", "iteration", [(str(i), str(i)) for i in iterations]),
        _select("phase", "phase", [(p, p) for p in sorted({e["phase"] for e in episodes if e["phase"]})]),
        _select("mode", "rollout mode", [(m, m) for m in MODES if any(e["mode"] == m for e in episodes)]),
        _select("won", "success", [("1", "won"), ("0", "lost")]),
    ])
    body = "\n".join(render_episode(e, expanded=n == 0) for n, e in enumerate(episodes)) or "<p>No trajectories in this run (run.save_trajectories?).</p>"
    title = f"himac-ray run {run_dir.name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{ESC(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{ESC(title)}</h1>"
            f'<p>{ESC(str(run_dir))} · {len(rows)} iterations in metrics.jsonl · {len(evals)} held-out evaluations · '
            f'{len(episodes)} of {total} episodes in the report</p>'
            f'<div class="curves">{curves}</div><div class="filters">{filters} '
            f'<span><b id="shown">{len(episodes)}</b> episodes shown</span></div>'
            f'<div id="episodes">{body}</div><script>{JS}</script></body></html>\n')


# ---------------------------------------------------------------- command


def make_server(page: bytes, port: int = 8000):
    """An HTTP server on 127.0.0.1:`port` (0 = any free port) answering `/` with `page`, 404 otherwise."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            if self.path.split("?", 1)[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):  # quiet: one line at start is enough
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds trajectories/iter_*.parquet)")
    p.add_argument("--iteration", type=int, help="only this iteration's trajectories (default: all)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/view.html)")
    p.add_argument("--max-episodes", type=int, default=64,
                   help="episodes per iteration in the report, 0 = all (default: 64)")
    p.add_argument("--serve", action="store_true", help="also serve the report on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (0 = any free port; default 8000)")


def run(args) -> int:
    from himac_ray.run_state import RunStateError

    run_dir = Path(args.run_dir)
    if not (run_dir / "trajectories").is_dir() and not (run_dir / "metrics.jsonl").exists():
        raise RunStateError(f"{run_dir} is not a run directory (no trajectories/ and no metrics.jsonl)")
    if args.iteration is not None and not trajectory_files(run_dir, args.iteration):
        raise RunStateError(f"{run_dir}: no trajectories/iter_{args.iteration:05d}.parquet")
    page = render_report(run_dir, iteration=args.iteration, max_episodes=args.max_episodes)
    out = Path(args.out) if args.out else run_dir / "view.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"[himac-ray] wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if args.serve:
        server = make_server(page.encode("utf-8"), args.port)
        print(f"[himac-ray] serving it on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0
