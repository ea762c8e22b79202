"""`ray job submit` to a local head with the dashboard runs a 1-iteration training job to SUCCEEDED."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = "6391", "8271"


@pytest.fixture()
def ray_head(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--port", GCS_PORT, "--num-cpus", "4",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", DASHBOARD_PORT,
         "--temp-dir", str(tmp_path / "ray")],
        env=env, check=True, capture_output=True, timeout=180,
    )
    yield f"http://127.0.0.1:{DASHBOARD_PORT}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_runs_training_to_succeeded(ray_head, tmp_path):
    run_dir = tmp_path / "job_run"
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(ROOT), "--",
        sys.executable, "-m", "himac_ray.train", "--config", "configs/sokoban_tiny.yaml",
        "--set", "run.iterations=1", "--set", f"run.dir={run_dir}", "--set", "run.save_trajectories=false",
    ]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ, "RAY_ADDRESS": ""})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "SUCCEEDED" in out, out[-4000:]
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1
    print(f"job finished in {time.time() - start:.0f}s")
