"""`himac-ray view`: the HTML report of a real small run's Parquet (scripted rollouts on the built-in
Sokoban, text and visual; no Ray, no vLLM), its escaping of model output, `--serve` on loopback,
and the page in a real browser (headless Chromium, Debian's `chromium`; skipped where missing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from himac_ray import metrics as M
from himac_ray.cli import main
from himac_ray.config import config_to_dict, load_config
from himac_ray.data import write_parquet
from himac_ray.generation import ScriptedGenerator
from himac_ray.rollout import run_rollout
from himac_ray.tools import viewer
from tests.himac_ray.test_rollout import SOKOBAN2, ExpertGenerator

K = 4
EVIL = "<script>window.HACKED=1</script><img src=x onerror=alert(1)>"
"""a hostile model output: it must show as text, never run"""


def build_run(run_dir: Path, env_id: str, env_kwargs: dict) -> Path:
    """A 2-iteration run directory as the trainer writes it: config.json, metrics.jsonl, eval.jsonl and
    trajectories/iter_*.parquet. Iteration 0 (planner phase, macro mode): the expert plays, so episodes
    are won and blueprints have several subgoals; iteration 1 (executor phase, micro mode): a policy
    that answers with markup and walks into walls, so episodes are lost."""
    cfg = load_config(None, [f"run.dir={run_dir}", f"env.id={env_id}", f"env.kwargs={json.dumps(env_kwargs)}",
                             f"rollout.max_subgoals={K}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    log = M.MetricsLog(run_dir)
    expert = ExpertGenerator(K)
    macro = run_rollout(generator=expert, env_id=env_id, env_kwargs=env_kwargs, seeds=[0, 1], mode="macro",
                        group_size=2, max_subgoals=K, env_factory=expert.factory)
    bad = ScriptedGenerator(lambda chat, i: f"{EVIL}<action>up</action><sub_done>")
    micro = run_rollout(generator=bad, env_id=env_id, env_kwargs={**env_kwargs, "max_steps": 3}, seeds=[5],
                        mode="micro", group_size=2, max_subgoals=K, blueprints={5: ["push the box", "rest"]})
    for i, (result, phase) in enumerate(((macro, "planner"), (micro, "executor"))):
        for n, r in enumerate(result.records):
            r.advantage = 0.25 * (n % 3 - 1)
        write_parquet(result.records, run_dir / "trajectories" / f"iter_{i:05d}.parquet")
        log.append({M.ITERATION: i, M.TRAINABLE: phase, M.SUCCESS_RATE: result.metrics["success_rate"],
                    M.MEAN_RETURN: result.metrics["mean_return"]})
    log.append_eval({M.ITERATION: 2, "success_rate": 0.5, "mean_return": 0.1, "episodes": 2})
    return run_dir


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("view") / "text", "himac/Sokoban-v0", SOKOBAN2)


@pytest.fixture(scope="module")
def visual_run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("view") / "visual", "himac/SokobanVisual-v0", {})


def test_the_report_shows_each_episode_blueprint_and_step(text_run):
    page = viewer.render_report(text_run)
    episodes, total = viewer.load_episodes(text_run)
    assert total == len(episodes) == 6 and page.count('<details class="episode"') == 6
    won = [e for e in episodes if e["won"]]
    assert len(won) == 4 and all(e["mode"] == "macro" and e["phase"] == "planner" for e in won)
    # the blueprint with each subgoal, and each step's subgoal, observation, output, flags, advantage
    first = won[0]
    assert len(first["subgoals"]) > 1 and all(f"<li>{viewer.ESC(s)}</li>" in page for s in first["subgoals"])
    assert first["task"] and viewer.ESC(first["task"]) in page
    step = first["steps"][0]
    assert viewer.ESC(step.response_text) in page and viewer.ESC(step.anchor) in page
    assert "<b>sub_done</b>" in page
    assert page.count("<tr") - page.count("<tr>") == sum(len(e["steps"]) for e in episodes)
    # the executor-phase episodes: lost, micro mode, z*'s text from the episode's first record
    lost = [e for e in episodes if not e["won"]]
    assert {e["mode"] for e in lost} == {"micro"} and "the group's best blueprint z*<ol" in page
    assert all(len(e["subgoals"]) == 2 and f"<li>{viewer.ESC(e['subgoals'][0])}</li>" in page for e in lost)
    # filters and the learning curve
    for value in ('value="0"', 'value="1"', 'value="planner"', 'value="executor"', 'value="micro"', 'value="macro"'):
        assert value in page
    assert page.count("<svg") == 2 and "<polyline" in page and "held-out (dashed)" in page


def test_model_output_is_escaped_and_the_page_needs_no_network(text_run):
    page = viewer.render_report(text_run)
    assert EVIL not in page and viewer.ESC(EVIL) in page
    assert page.count("<script>") == 1  # the report's own filter script only
    for needle in ("http://", "https://", "//cdn", "<link", "src=\"http"):
        assert needle not in page


def test_the_visual_report_embeds_each_board_png(visual_run):
    page = viewer.render_report(visual_run)
    episodes, _ = viewer.load_episodes(visual_run)
    steps = sum(len(e["steps"]) for e in episodes)
    assert steps > 0 and page.count('src="data:image/png;base64,') == steps
    assert "[image sha1:" not in page


def test_the_command_writes_the_file_filters_an_iteration_and_refuses_a_bad_dir(text_run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["view", str(text_run), "--iteration", "1", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count('<details class="episode"') == 2 and 'data-iteration="0"' not in page
    assert main(["view", str(text_run), "--iteration", "7", "--out", str(out)]) == 2
    assert "iter_00007.parquet" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "nothing")]) == 2


def test_serve_answers_on_loopback_only(text_run):
    page = viewer.render_report(text_run).encode()
    server = viewer.make_server(page, 0)
    host, port = server.server_address
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.read() == page
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={cwd / 'profile'}", *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium; .ci/run does it)")
@pytest.mark.parametrize("kind", ["text", "visual"])
def test_the_report_renders_in_headless_chromium(kind, text_run, visual_run, tmp_path):
    run_dir = text_run if kind == "text" else visual_run
    html_file = tmp_path / "view.html"
    html_file.write_text(viewer.render_report(run_dir))
    shot = tmp_path / "shot.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1200,900", html_file.as_uri(), cwd=tmp_path)
    assert shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert shot.stat().st_size > 10_000 and colors and len(colors) > 20, "the screenshot looks blank"
    dom = _chromium("--dump-dom", html_file.as_uri(), cwd=tmp_path).stdout
    episodes, _ = viewer.load_episodes(run_dir)
    assert dom.count('class="episode"') == len(episodes)
    assert f'<b id="shown">{len(episodes)}</b>' in dom  # the filter script ran and counted every episode
    assert viewer.ESC(EVIL) in dom and '<img src="x"' not in dom  # shown as text, not parsed as markup
    assert ("data:image/png;base64," in dom) == (kind == "visual")
    # the filters run in the browser: a link to the lost episodes of iteration 1 hides all others
    lost = [e for e in episodes if not e["won"] and e["iteration"] == 1]
    dom = _chromium("--dump-dom", html_file.as_uri() + "#iteration=1&won=0", cwd=tmp_path).stdout
    assert lost and f'<b id="shown">{len(lost)}</b>' in dom
    assert dom.count('style="display: none;"') == len(episodes) - len(lost)
