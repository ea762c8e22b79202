"""`ray job submit` to a local head with the dashboard runs a 1-iteration training job to SUCCEEDED."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = "6391", "8271"  # not Ray's defaults (6379, 8265)
# token auth on, as in deploy/: `ray start` in Ray 2.60 does not turn it on by itself (only a local
# ray.init does); head and job client both set RAY_AUTH_MODE=token (token in ~/.ray/auth_token)
AUTH = {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}


@pytest.fixture()
def ray_head():
    """A head of our own, stopped by signalling its `ray start --block` process: `ray stop` would
    kill every Ray process on the machine, including a user's training run."""
    env = {**os.environ, **AUTH}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    # every port chosen free: a Ray already running here (a user's training) holds the defaults
    ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port", "node-manager-port", "object-manager-port")]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", GCS_PORT, "--num-cpus", "4",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", DASHBOARD_PORT,
         "--temp-dir", temp_dir, *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{DASHBOARD_PORT}"
    try:
        deadline = time.time() + 180
        while not _dashboard_up(url):
            assert head.poll() is None, f"ray start exited with {head.returncode}"
            assert time.time() < deadline, "the Ray dashboard did not come up within 180 s"
            time.sleep(1)
        yield url
    finally:
        head.send_signal(signal.SIGTERM)  # `--block` then shuts down the processes it started
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=5):
            return True
    except urllib.error.HTTPError:  # it answers (token auth may refuse this call)
        return True
    except OSError:
        return False


def test_ray_job_submit_runs_training_to_succeeded(ray_head, tmp_path):
    run_dir = tmp_path / "job_run"
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(ROOT), "--",
        sys.executable, "-m", "himac_ray.train", "--config", "configs/sokoban_tiny.yaml",
        "--set", "run.iterations=1", "--set", f"run.dir={run_dir}", "--set", "run.save_trajectories=false",
    ]
    start = time.time()
    for _ in range(30):  # the dashboard answers before the head's job agent is up
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ, **AUTH})
        out = proc.stdout + proc.stderr
        if "No available agent to submit job" not in out:
            break
        time.sleep(2)
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"Job .raysubmit_\w+. succeeded", out), out[-4000:]  # status SUCCEEDED
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1
    print(f"job finished in {time.time() - start:.0f}s")
