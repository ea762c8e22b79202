"""`himac-ray sweep` end to end on the tiny model: real Ray Tune trials, each a real training run.

1. A 2-trial group-size sweep (1 iteration each, ASHA scheduler) runs to completion: table, PNG,
   summary, one run dir per trial.
2. A failing trial does not abort the sweep, and `--resume` reruns it: the second grid point's
   model folder does not exist yet (the trial fails twice, i.e. after its one retry, and the sweep
   exits 1 with the other trial done); once the folder exists, `--resume` runs only that trial.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from himac_ray.models import resolve_model

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "sweep_tiny_cpu.yaml")
ENV = {**os.environ, "RAY_ADDRESS": "", "TOKENIZERS_PARALLELISM": "false"}


def sweep(*argv, timeout=1100) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "himac_ray.cli", "sweep", *argv], cwd=ROOT, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,  # its local Ray too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"sweep did not finish in {timeout}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def table_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("trial ")]
    assert heads, f"the sweep printed no result table:\n{out[-4000:]}"
    start = heads[-1]
    rows = []
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("[", "error in ")):
            break
        rows.append(line.split())
    return rows


def test_group_size_sweep_runs_to_completion(tmp_path):
    res = sweep("--config", CONFIG, "--grid", "algorithm.group_size=2,4", "--set", "run.iterations=1",
                "--storage", str(tmp_path), "--name", "gs", "--scheduler", "asha")
    assert res.returncode == 0, res.stdout[-4000:]
    exp = tmp_path / "gs"
    rows = table_rows(res.stdout)
    assert [r[1] for r in rows] == ["2", "4"] and all(r[2] == "OK" and r[3] == "1" for r in rows), rows
    summary = json.loads((exp / "sweep_summary.json").read_text())
    assert [t["params"]["algorithm.group_size"] for t in summary] == [2, 4]
    for t in summary:
        assert t["status"] == "OK" and t["iterations"] == 1 and 0.0 <= t["best_success"] <= 1.0
        metrics = [json.loads(line) for line in (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert metrics[0]["iteration"] == 0 and t["env_steps_to_best"] == metrics[0]["charts/env_steps_total"] > 0
        config = json.loads((Path(t["run_dir"]) / "config.json").read_text())
        assert config["algorithm"]["group_size"] == t["params"]["algorithm.group_size"]
    # twice the group size, twice the episodes per iteration (max_steps each with the tiny model, or fewer)
    assert summary[1]["final_env_steps"] > summary[0]["final_env_steps"]
    png = (exp / "sweep_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (exp / "sweep_table.txt").read_text().startswith("trial")


def test_failed_trial_does_not_abort_and_resume_reruns_it(tmp_path):
    late = tmp_path / "late_model"  # the second point's model appears only before --resume
    args = ["--config", CONFIG, "--grid", f"model.path=tiny,{late}", "--set", "run.iterations=1",
            "--set", "env.eval_episodes=1", "--storage", str(tmp_path / "sweeps"), "--name", "flaky"]
    res = sweep(*args)
    assert res.returncode == 1, res.stdout[-4000:]
    rows = table_rows(res.stdout)
    assert [r[2] for r in rows] == ["OK", "ERROR"], rows
    assert "ModelUnavailableError" in res.stdout and "--resume" in res.stdout
    exp = tmp_path / "sweeps" / "flaky"
    ok_run = Path(json.loads((exp / "sweep_summary.json").read_text())[0]["run_dir"])
    ok_metrics = (ok_run / "metrics.jsonl").read_text()

    late.symlink_to(resolve_model("tiny"), target_is_directory=True)
    res = sweep("--resume", "--name", "flaky", "--storage", str(tmp_path / "sweeps"))
    assert res.returncode == 0, res.stdout[-4000:]
    rows = table_rows(res.stdout)
    assert [r[2] for r in rows] == ["OK", "OK"] and [r[3] for r in rows] == ["1", "1"], rows
    assert (ok_run / "metrics.jsonl").read_text() == ok_metrics  # the finished trial did not run again
    assert (exp / "sweep_curves.png").exists()
