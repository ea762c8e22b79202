"""A real Prometheus scrapes the `ray_himac_*` gauges of a tiny training run on a real Ray head.

Ray head with `--metrics-export-port` (own temp dir and ports) -> Prometheus (Debian's
`prometheus` binary, config derived from deploy/prometheus/prometheus.yml, reading Ray's
service-discovery file, 2 s scrapes) -> `python -m himac_ray.train` connected to the head ->
Prometheus's HTTP API must return a plausible `ray_himac_rollout_tokens_per_s`, then every
metric the Grafana dashboard queries, with its labels. Everything listens on / talks to
127.0.0.1 (Ray advertises the host's address in the discovery file; the scrape config rewrites
it to 127.0.0.1 and keeps only this head's export port).

No `prometheus` binary: skipped locally, a failure under CI (`CI` set), where .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
SCRAPE_S = 2
SD_FILE = "prom_metrics_service_discovery.json"
# metric (without ray_) -> labels every sample must carry (deploy/grafana/himac-ray.json)
DASHBOARD_METRICS = {
    "himac_rollout_tokens_per_s": ("run", "role"),
    "himac_env_steps_per_s": ("run",),
    "himac_sampler_busy_fraction": ("run", "role"),
    "himac_weight_sync_seconds": ("run",),
    "himac_learner_tokens_per_s": ("run",),
    "himac_phase_seconds": ("run", "phase"),
    "himac_success_rate": ("run",),
    "himac_mean_return": ("run",),
    "himac_invalid_action_rate": ("run",),
    "himac_response_length": ("run", "role"),
    "himac_trainable_level": ("run",),
}


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    msg = "the `prometheus` binary is not installed (Debian: apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI must provide it (.ci/run installs it)")
    pytest.skip(msg)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group this test started (its own session), then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


def prometheus_config(sd_path: Path, export_port: int) -> dict:
    """deploy/prometheus/prometheus.yml with this head's discovery file, fast scrapes, loopback targets."""
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    for job in cfg["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(sd_path)]
            sd["refresh_interval"] = f"{SCRAPE_S}s"
        job["relabel_configs"] = [
            # the file may also list other local Ray instances' dashboard/autoscaler endpoints
            {"source_labels": ["__address__"], "regex": rf".+:{export_port}", "action": "keep"},
            {"source_labels": ["__address__"], "regex": r".+:(\d+)", "target_label": "__address__",
             "replacement": "127.0.0.1:${1}"},
        ]
    return cfg


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture()
def stack(tmp_path):
    """(ray head address, Prometheus base URL, ray temp dir); torn down afterwards."""
    prom_bin = prometheus_binary()
    temp_dir = Path(tempfile.mkdtemp(prefix="rayp", dir="/tmp"))  # Ray's socket paths must stay short
    (gcs, dashboard, agent_http, agent_grpc, runtime_env, node_manager, object_manager, client,
     export, prom_port) = free_ports(10)
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token",
           "RAY_metrics_report_interval_ms": "1000", "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    try:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--num-cpus", "4",
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
             "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
             "--runtime-env-agent-port", str(runtime_env), "--node-manager-port", str(node_manager),
             "--object-manager-port", str(object_manager), "--ray-client-server-port", str(client),
             "--metrics-export-port", str(export), "--temp-dir", str(temp_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        procs.append(head)  # its daemons stay in its process group after `ray start` returns
        out, _ = head.communicate(timeout=240)
        assert head.returncode == 0, f"ray start failed:\n{out[-3000:]}"
        sd_path = temp_dir / SD_FILE
        deadline = time.time() + 120
        while not (sd_path.exists() and f":{export}" in sd_path.read_text()):
            assert time.time() < deadline, f"Ray wrote no service-discovery file listing :{export} in {temp_dir}"
            time.sleep(1)

        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(sd_path, export)))
        prom_log = (prom_dir / "prometheus.log").open("w")
        prom = subprocess.Popen(
            [prom_bin, f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        procs.append(prom)
        base = f"http://127.0.0.1:{prom_port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert prom.poll() is None, f"prometheus exited:\n{(prom_dir / 'prometheus.log').read_text()[-3000:]}"
            assert time.time() < deadline, "prometheus did not become ready in 60s"
            time.sleep(1)
        yield f"127.0.0.1:{gcs}", base, temp_dir
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_prometheus_scrapes_himac_gauges(stack, tmp_path):
    address, prom, _ = stack
    run_dir = tmp_path / "run"
    log = (tmp_path / "train.log").open("w")
    train = subprocess.Popen(
        [sys.executable, "-m", "himac_ray.train", "--config", str(ROOT / "configs" / "sokoban_tiny.yaml"),
         "--set", "run.iterations=2", "--set", f"run.dir={run_dir}", "--set", "run.save_trajectories=false"],
        cwd=ROOT, env={**os.environ, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    expr = "ray_himac_rollout_tokens_per_s"
    found, start, ended = [], time.time(), None
    try:
        while not found:
            samples = query(prom, expr)
            if not samples and train.poll() is not None:
                # the run is over and its gauges may have gone stale: look back over the run
                samples = query(prom, f"last_over_time({expr}[30m])")
            found = [s for s in samples if 0 < float(s["value"][1]) < 1e6]
            if found:
                break
            if train.poll() is not None:
                ended = ended or time.time()
                if time.time() - ended > 30 + 3 * SCRAPE_S:
                    pytest.fail(f"no plausible {expr} sample (0 < v < 1e6) in Prometheus after training ended "
                                f"(exit {train.returncode}); last answer {samples}; training log:\n"
                                f"{(tmp_path / 'train.log').read_text()[-3000:]}")
            assert time.time() - start < 1000, f"no plausible {expr} sample within 1000s; last answer {samples}"
            time.sleep(SCRAPE_S)
        print(f"{expr} {found[0]['metric']} = {found[0]['value'][1]} after {time.time() - start:.0f}s")
        assert train.wait(timeout=max(60, 1100 - (time.time() - start))) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if train.poll() is None:
            stop_group(train)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run = found[0]["metric"]["run"]
    assert found[0]["metric"]["role"] == "both"  # one shared policy plays both levels
    time.sleep(2 * SCRAPE_S)  # the last iteration's values are scraped
    for metric, labels in DASHBOARD_METRICS.items():
        samples = query(prom, f'last_over_time(ray_{metric}{{run="{run}"}}[30m])')
        assert samples, f"Prometheus has no ray_{metric} for run {run} (the Grafana dashboard queries it)"
        for s in samples:
            assert set(labels) <= set(s["metric"]), (metric, s["metric"])
    phases = {s["metric"]["phase"] for s in query(prom, f'last_over_time(ray_himac_phase_seconds{{run="{run}"}}[30m])')}
    assert {"rollout", "advantage", "learn", "sync", "record"} <= phases
    level = query(prom, f'last_over_time(ray_himac_trainable_level{{run="{run}"}}[30m])')
    assert float(level[0]["value"][1]) in (0.0, 1.0, 2.0)
    success = float(query(prom, f'last_over_time(ray_himac_success_rate{{run="{run}"}}[30m])')[0]["value"][1])
    assert 0.0 <= success <= 1.0
    # Prometheus holds a success rate the run logged
    assert any(success == pytest.approx(r["charts/success_rate"]) for r in rows), (success, rows)
