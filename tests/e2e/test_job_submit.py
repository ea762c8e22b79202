"""`ray job submit` to a local head with the dashboard runs a 1-iteration training job to SUCCEEDED."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = "6391", "8271"
# Ray 2.60 heads enable token auth (token in ~/.ray/auth_token); the job client must opt in too
AUTH = {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}


@pytest.fixture()
def ray_head():
    env = {**os.environ, **AUTH}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--port", GCS_PORT, "--num-cpus", "4",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", DASHBOARD_PORT,
         "--temp-dir", temp_dir],
        env=env, check=True, capture_output=True, timeout=180,
    )
    yield f"http://127.0.0.1:{DASHBOARD_PORT}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_training_to_succeeded(ray_head, tmp_path):
    run_dir = tmp_path / "job_run"
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(ROOT), "--",
        sys.executable, "-m", "himac_ray.train", "--config", "configs/sokoban_tiny.yaml",
        "--set", "run.iterations=1", "--set", f"run.dir={run_dir}", "--set", "run.save_trajectories=false",
    ]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ, **AUTH})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"Job .raysubmit_\w+. succeeded", out), out[-4000:]  # status SUCCEEDED
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1
    print(f"job finished in {time.time() - start:.0f}s")
