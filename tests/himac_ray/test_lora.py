"""LoRA (`learner.lora`): config rules, and on the tiny model with real PEFT, DeepSpeed and vLLM
(no mocks): a step changes only adapter weights (ZeRO-2 and ZeRO-3); a planner-phase step of
per-level adapters leaves the executor adapter and the base bit-identical; a checkpoint restores
the adapters exactly and holds the merged HF model; after the adapter-only sync vLLM's logprobs
match the learner's.

Tolerances: merged checkpoint (plain HF model) vs the learner's PEFT forward 1e-4 nats (float32,
W + BA in another summation order); vLLM vs learner after the sync 1e-3 nats, as
tests/himac_ray/test_learner.py; weights exact everywhere else.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from himac_ray.config import AlgorithmConfig, ConfigError, LearnerConfig, LoraConfig, ModelConfig, load_config
from himac_ray.data import Record
from himac_ray.learner import Learner
from himac_ray.lora import OWNER_FILE
from tests.himac_ray.test_learner import PROMPTS, make_records, on_policy

LORA = ["learner.lora.rank=8"]


def test_lora_config_rules(monkeypatch):
    assert not load_config().learner.lora.enabled  # off by default
    assert not load_config(None, ["learner.lora.rank=null"]).learner.lora.enabled
    cfg = load_config(None, [*LORA, "learner.lora.per_level=true", "learner.lora.target_modules=[q_proj, v_proj]"])
    assert cfg.learner.lora.enabled and cfg.learner.lora.target_modules == ("q_proj", "v_proj")
    bad = {
        "learner.lora.rank=-1": "must be in \\[1, 512\\]",
        "learner.lora.rank=1024": "must be in \\[1, 512\\]",
        "learner.lora.alpha=0": "alpha=0.0 must be > 0",
        "learner.lora.dropout=1.0": "dropout=1.0 must be in",
        "learner.lora.target_modules=[]": "target_modules is empty",
        "learner.train_layers=2": "both choose what trains",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*LORA, override])
    for extra, message in {"model.planner_path=tiny": "two models already train apart",
                           "algorithm.name=grpo": "is flat",
                           "coevolution.enabled=false": "one joint step",
                           "learner.zero_stage=3": "zero_stage=3 cannot share"}.items():
        with pytest.raises(ConfigError, match=f"per_level=true does not apply: .*{message}"):
            load_config(None, [*LORA, "learner.lora.per_level=true", extra])
    with pytest.raises(ConfigError, match="weight_sync='nccl' with learner.lora"):
        load_config(None, [*LORA, "learner.weight_sync=nccl", "learner.gpus_per_rank=1", "sampler.gpus_per_engine=1"])
    import himac_ray.lora

    monkeypatch.setattr(himac_ray.lora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"learner.lora: LoRA needs the peft package.*himac-ray\[lora\]"):
        load_config(None, LORA)


def _marked(root, name, *, pid, host=None):
    """An adapter folder as `create_adapter_dir` leaves it, owned by `pid` on `host`."""
    from himac_ray import lora

    directory = root / f"{lora.ADAPTER_DIR_PREFIX}{name}"
    (directory / "executor-v3").mkdir(parents=True)
    (directory / "executor-v3" / lora.ADAPTER_CONFIG).write_text("{}")
    owner = {"program": lora.OWNER_PROGRAM, "pid": pid, "host": host or socket.gethostname()}
    (directory / lora.OWNER_FILE).write_text(json.dumps(owner))
    return directory


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_adapter_dirs_removed_only_when_marked_and_dead(tmp_path):
    from himac_ray import lora

    dead = _marked(tmp_path, "dead", pid=_dead_pid())
    live = _marked(tmp_path, "live", pid=os.getpid())
    elsewhere = _marked(tmp_path, "elsewhere", pid=_dead_pid(), host="another-host")  # its pid means nothing here
    unmarked = tmp_path / f"{lora.ADAPTER_DIR_PREFIX}unmarked"
    (unmarked / "policy-v1").mkdir(parents=True)
    foreign = tmp_path / f"{lora.ADAPTER_DIR_PREFIX}foreign"  # a marker file, but not ours
    foreign.mkdir()
    (foreign / lora.OWNER_FILE).write_text(json.dumps({"program": "other", "pid": _dead_pid(), "host": "x"}))
    other_name = tmp_path / "user-data"
    other_name.mkdir()
    (other_name / lora.OWNER_FILE).write_text((dead / lora.OWNER_FILE).read_text())  # marked, wrong name

    assert lora.remove_stale_adapter_dirs(tmp_path) == [dead]
    assert not dead.exists()
    for kept in (live, elsewhere, unmarked, foreign, other_name):
        assert kept.is_dir(), kept
    assert (live / "executor-v3" / lora.ADAPTER_CONFIG).is_file() and (unmarked / "policy-v1").is_dir()

    lora.remove_adapter_dir(unmarked)  # the shutdown path needs the marker, and this process's pid
    lora.remove_adapter_dir(elsewhere)
    assert unmarked.is_dir() and elsewhere.is_dir()
    lora.remove_adapter_dir(live)
    assert not live.exists()


def test_a_killed_processes_adapter_dir_is_removed_by_the_next_one(tmp_path):
    """A process that made its adapter folder and was killed (SIGKILL: no atexit) leaves it; the
    next `create_adapter_dir` on the host removes it and marks its own with its pid."""
    from himac_ray import lora

    code = ("import sys, time; from himac_ray.lora import create_adapter_dir; "
            f"print(create_adapter_dir({str(tmp_path)!r}), flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        left = Path(child.stdout.readline().strip())
        assert left.is_dir() and json.loads((left / lora.OWNER_FILE).read_text())["pid"] == child.pid
        first = lora.create_adapter_dir(tmp_path)
        assert first != left and left.is_dir()  # its owner is alive: kept
        lora.remove_adapter_dir(first)
    finally:
        child.kill()  # the child this test started, by its own handle
        child.wait()
    mine = lora.create_adapter_dir(tmp_path)
    assert not left.exists()
    assert json.loads((mine / lora.OWNER_FILE).read_text())["pid"] == os.getpid()
    lora.remove_adapter_dir(mine)
    assert not mine.exists()


def make_lora_learner(*, zero_stage=2, per_level=False, lr=1e-2, kl_coef=0.01) -> Learner:
    return Learner(model=ModelConfig(path="tiny", dtype="float32"),
                   learner=LearnerConfig(zero_stage=zero_stage, lr=lr, micro_batch_size=2, max_len=256,
                                         lora=LoraConfig(rank=8, alpha=16.0, per_level=per_level)),
                   algorithm=AlgorithmConfig(kl_coef=kl_coef), seed=0)


def weights(learner, policy="executor") -> dict[str, torch.Tensor]:
    """Every parameter of the policy's module (base and adapters), as CPU copies."""
    return {n: p.detach().clone() for n, p in learner.policies[policy][0].module.named_parameters()}


def changed(before, after) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3], ids=["zero2", "zero3"])
def test_a_step_changes_only_adapter_weights(zero_stage):
    import deepspeed

    learner = make_lora_learner(zero_stage=zero_stage)
    module = learner.policies["executor"][0].module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=zero_stage == 3):
        before = weights(learner)
    records = on_policy(learner, make_records(learner.tokenizer, 6))
    learner.train_step(records, trainable="executor")
    with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=zero_stage == 3):
        after = weights(learner)
    moved = changed(before, after)
    assert moved and all(".lora_B." in n for n in moved)  # A gets no gradient while B is 0 (PEFT init)
    assert all(".lora_" in n for n, p in module.named_parameters() if p.requires_grad)
    assert sum(p.numel() for n, p in before.items() if ".lora_" in n) < 0.05 * sum(p.numel() for p in before.values())
    new = learner.compute_logprobs(records)
    assert max(abs(a - b) for r, lp in zip(records, new) for a, b in zip(r.logprobs, lp)) > 1e-3


@pytest.mark.slow
def test_per_level_planner_step_leaves_the_executor_adapter_bit_identical():
    learner = make_lora_learner(per_level=True)
    (planner, _), (executor, _) = learner.policies["planner"], learner.policies["executor"]
    assert planner is not executor and planner.module is executor.module  # one base, two engines
    plan = on_policy(learner, make_records(learner.tokenizer, 4, level="plan", tag="p"))
    act = on_policy(learner, make_records(learner.tokenizer, 4, tag="a"))
    before = weights(learner)
    learner.train_step(plan + act, trainable="planner")
    after_plan = weights(learner)
    moved = changed(before, after_plan)
    assert moved and all(".lora_B.planner." in n for n in moved)
    learner.train_step(plan + act, trainable="executor")
    moved = changed(after_plan, weights(learner))
    assert moved and all(".lora_B.executor." in n for n in moved)
    # each level's records are scored with its own adapter
    lp_plan = learner.compute_logprobs(plan)
    lp_plan_as_executor = learner.compute_logprobs(plan, policy="executor")
    assert max(abs(a - b) for x, y in zip(lp_plan, lp_plan_as_executor) for a, b in zip(x, y)) > 1e-4


@pytest.mark.slow
def test_checkpoint_restores_the_adapters_and_holds_the_merged_model(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    learner = make_lora_learner(per_level=True)
    plan = on_policy(learner, make_records(learner.tokenizer, 4, level="plan", tag="p"))
    act = on_policy(learner, make_records(learner.tokenizer, 4, tag="a"))
    learner.train_step(plan, trainable="planner")
    learner.train_step(act, trainable="executor")
    ckpt = learner.save_checkpoint(tmp_path / "ckpt")
    assert {p.name for p in ckpt.iterdir() if p.is_dir()} == {"planner", "executor"}
    assert (ckpt / "planner" / "adapter" / "adapter_model.safetensors").exists()
    learner.train_step(act, trainable="executor")  # the step after the checkpoint, twice
    want = weights(learner)

    resumed = make_lora_learner(per_level=True)
    resumed.load_checkpoint(ckpt)
    resumed.train_step(act, trainable="executor")
    assert changed(want, weights(resumed)) == set()

    # the checkpoint's merged model is a plain HF model computing the policy's logprobs
    merged = AutoModelForCausalLM.from_pretrained(ckpt / "planner", dtype=torch.float32).eval()
    saved = load_file(str(ckpt / "planner" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in saved)
    want_lp = make_lora_learner(per_level=True)
    want_lp.load_checkpoint(ckpt)
    lp = want_lp.compute_logprobs(plan)
    with torch.no_grad():
        for r, row in zip(plan, lp):
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            logits = merged(input_ids=ids).logits.log_softmax(-1)[0]
            P = len(r.prompt_ids)
            got = [float(logits[P + j - 1, t]) for j, t in enumerate(r.response_ids)]
            assert max(abs(a - b) for a, b in zip(got, row)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("per_level", [False, True], ids=["shared", "per_level"])
def test_vllm_serves_the_synced_adapter_like_the_learner(tmp_path, per_level):
    from himac_ray.engines.vllm_engine import VLLMGenerator
    from himac_ray.generation import SamplingParams
    from himac_ray.models import resolve_model

    vllm = VLLMGenerator(resolve_model("tiny"), seed=0, max_model_len=512, dtype="float32", max_lora_rank=8,
                         max_loras=2 if per_level else 1)
    learner = make_lora_learner(per_level=per_level)
    policies = ("planner", "executor") if per_level else ("executor",)
    for policy in policies:
        level = "plan" if policy == "planner" else "act"
        for _ in range(2):
            recs = on_policy(learner, make_records(learner.tokenizer, 6, level=level, tag=policy))
            learner.train_step(recs, trainable=policy)
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    params = SamplingParams(temperature=1.0, max_tokens=12)

    def worst_gap(policy):
        adapter = learner.adapters[policy]
        samples = [s[0] for s in vllm.generate(chat, params, adapter=adapter)]
        recs = [Record(group_id="g", traj_id=f"t{i}", level="act", env_id="e", seed=0, step=0, subgoal_index=0,
                       prompt_ids=s.prompt_token_ids, response_ids=s.token_ids, logprobs=s.logprobs)
                for i, s in enumerate(samples)]
        lp = learner.compute_logprobs(recs, policy=policy)
        return max(abs(a - b) for r, row in zip(recs, lp) for a, b in zip(r.logprobs, row))

    for policy in policies:
        assert worst_gap(policy) > 1e-2  # the engine still serves the base
    for version, policy in enumerate(policies, start=1):
        path = learner.save_adapter(tmp_path / f"{policy}-adapter", policy=policy)
        bytes_sent = sum(f.stat().st_size for f in path.iterdir())
        assert bytes_sent < sum(p.numel() * 4 for p in learner.policies[policy][0].module.parameters()) / 20
        vllm.load_adapter(path, name=learner.adapters[policy], version=version)
    for policy in policies:
        assert worst_gap(policy) < 1e-3
        # teacher-forced scoring (the coordinator's sync check) of several pairs under the adapter
        recs = make_records(learner.tokenizer, 3, tag="s")
        scored = vllm.score([(r.prompt_ids, r.response_ids) for r in recs], adapter=learner.adapters[policy])
        lp = learner.compute_logprobs(recs, policy=policy)
        assert max(abs(a - b) for x, y in zip(scored, lp) for a, b in zip(x, y)) < 1e-3
    # the engine's adapter copies live in its own marked folder, removed when it closes
    folder = vllm.adapter_dir
    assert json.loads((folder / OWNER_FILE).read_text())["pid"] == os.getpid()
    assert {p.name for p in folder.iterdir()} >= {f"{learner.adapters[p]}-v{v}" for v, p in enumerate(policies, 1)}
    vllm.close()
    assert not folder.exists()
