"""Single-process DeepSpeed learner on the tiny model (real DeepSpeed, gloo, CPU; no mocks).

The process joins a 1-rank torch.distributed group on first use; later learners reuse it.
Only the core update test runs in `make test-fast`; each Learner costs a few seconds, so the
rest are marked slow. Tolerances: micro-batch split (1 vs 4 records) loss and grad norm rtol
1e-5; ZeRO-3 vs ZeRO-2 weights after one lr=1e-3 step atol 1e-5; learner vs vLLM logprobs after
a weight reload 1e-3 nats (as tests/himac_ray/test_engines.py); checkpoint round trips exact.
"""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from himac_ray import metrics as M
from himac_ray.config import AlgorithmConfig, LearnerConfig, ModelConfig
from himac_ray.data import Record
from himac_ray.learner import Learner, _split, stable_order
from himac_ray.models import resolve_model
from himac_ray.optim_state import from_plain, to_plain

PROMPTS = ["Push the box onto the target.", "Go to the kitchen and find a mug.", "Buy a red shirt under $20."]


def make_records(tokenizer, n: int, *, level: str = "act", seed: int = 0, tag: str = "") -> list[Record]:
    """Hand-built records: real prompt ids, random response ids, advantages +1/-1 alternating."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        prompt = tokenizer(PROMPTS[i % len(PROMPTS)] + f" Step {i}.")["input_ids"]
        response = rng.integers(100, 40000, size=int(rng.integers(3, 9))).tolist()
        records.append(Record(
            group_id=f"g{i // 4}", traj_id=f"{tag}t{i}", level=level, env_id="himac/Sokoban-v0", seed=seed,
            step=-1 if level == "plan" else i, subgoal_index=-1 if level == "plan" else 0,
            prompt_ids=prompt, response_ids=response, logprobs=[0.0] * len(response),
            advantage=1.0 if i % 2 == 0 else -1.0))
    return records


def on_policy(learner_or_group, records):
    """Set each record's sampling logprobs to the current policy's (ratio 1 at the first step)."""
    for r, lp in zip(records, learner_or_group.compute_logprobs(records)):
        r.logprobs = lp
    return records


def make_learner(*, zero_stage=2, lr=1e-3, kl_coef=0.01, micro=2, planner_path=None, dtype="float32", **kw) -> Learner:
    # float32 (not auto): these tests compare updates, exports and logprobs exactly
    return Learner(model=ModelConfig(path="tiny", planner_path=planner_path, dtype=dtype),
                   learner=LearnerConfig(zero_stage=zero_stage, lr=lr, micro_batch_size=micro, max_len=256, **kw),
                   algorithm=AlgorithmConfig(kl_coef=kl_coef), seed=0)


def exported(learner, policy="executor"):
    return {k: v for b in learner.export_weights(policy=policy, bucket_mb=64) for k, v in b.items()}


def test_stable_order_and_split_do_not_depend_on_input_order():
    recs = make_records(_tokenizer(), 7) + make_records(_tokenizer(), 2, level="plan", tag="p")
    shuffled = [recs[i] for i in (3, 8, 0, 6, 1, 5, 7, 2, 4)]
    traj = [[r.traj_id for r in [x[i] for i in stable_order(x)]] for x in (recs, shuffled)]
    assert traj[0] == traj[1] and traj[0][:7] == [f"t{i}" for i in range(7)]  # "act" < "plan"
    assert [len(p) for p in _split(list(range(7)), 3)] == [3, 2, 2]
    assert _split([], 2) == [[], []]


def test_optimizer_state_round_trips_without_pickled_objects(tmp_path):
    class Opaque:
        pass

    marker = Opaque()
    state = {"t": torch.arange(3.0), "groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}], "obj": marker, "n": None}
    torch.save(to_plain(state), tmp_path / "s.pt")
    back = from_plain(torch.load(tmp_path / "s.pt", weights_only=True), state)
    assert back["obj"] is marker and torch.equal(back["t"], state["t"]) and back["groups"] == state["groups"]


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("tiny"))


def test_train_step_moves_logprobs_with_advantage_sign():
    learner = make_learner()
    records = on_policy(learner, make_records(learner.tokenizer, 6))
    before = learner.compute_logprobs(records)
    metrics = learner.train_step(records, trainable="executor")
    after = learner.compute_logprobs(records)
    for r, b, a in zip(records, before, after):
        assert r.advantage * (sum(a) - sum(b)) > 0, (r.traj_id, r.advantage, sum(b), sum(a))
    # first step is on-policy: ratio 1, nothing clipped, reference == policy
    assert metrics[M.CLIPFRAC] == 0.0
    assert abs(metrics[M.APPROX_KL]) < 1e-6 and abs(metrics[M.KL]) < 1e-6
    assert metrics[M.LEARNER_TOKENS] == sum(len(r.prompt_ids) + len(r.response_ids) for r in records)
    assert np.isfinite(metrics[M.GRAD_NORM]) and metrics[M.GRAD_NORM] > 0
    # the second step is off-policy: the KL to the reference is now positive
    assert learner.train_step(records, trainable="executor")[M.KL] > 0


@pytest.mark.slow
def test_joint_update_trains_both_levels_of_the_shared_policy_in_one_step():
    learner = make_learner()
    records = on_policy(learner, make_records(learner.tokenizer, 4) + make_records(learner.tokenizer, 4, level="plan", tag="p"))
    before = learner.compute_logprobs(records)
    metrics = learner.train_step(records, trainable="both")
    after = learner.compute_logprobs(records)
    assert metrics[M.LEARNER_TOKENS] == sum(len(r.prompt_ids) + len(r.response_ids) for r in records)
    assert learner.steps == 1
    for r, b, a in zip(records, before, after):  # plan and act responses both move with their advantage
        assert r.advantage * (sum(a) - sum(b)) > 0, (r.level, r.traj_id)
    two = make_learner(planner_path="tiny:1")
    with pytest.raises(ValueError, match="one shared policy"):
        two.train_step(records, trainable="both")


@pytest.mark.slow
def test_ppo_epochs_pass_over_the_batch_several_times():
    one, three = make_learner(lr=1e-4), make_learner(lr=1e-4, ppo_epochs=3, mini_batches=2)
    records = on_policy(one, make_records(one.tokenizer, 6))
    before = one.compute_logprobs(records)
    m1, m3 = one.train_step(records, trainable="executor"), three.train_step(records, trainable="executor")
    total = sum(len(r.prompt_ids) + len(r.response_ids) for r in records)
    assert m1[M.LEARNER_TOKENS] == total and m3[M.LEARNER_TOKENS] == 3 * total  # 3 passes of 2 optimizer steps
    moved = [sum(abs(sum(a) - sum(b)) for a, b in zip(learner.compute_logprobs(records), before))
             for learner in (one, three)]
    assert moved[1] > 2 * moved[0] > 0


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_train_layers_updates_only_the_top_blocks(zero_stage):
    threads = torch.get_num_threads()
    try:
        learner = make_learner(zero_stage=zero_stage, train_layers=1, torch_threads=1, kl_coef=0.0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    records = on_policy(learner, make_records(learner.tokenizer, 4))
    before = exported(learner)
    learner.train_step(records, trainable="executor")
    after = exported(learner)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    top = {k for k in before if k.startswith("model.layers.1.") or k == "model.norm.weight"}  # the tiny model has 2 blocks
    assert changed and changed <= top, sorted(changed - top)
    assert any(k.startswith("model.layers.1.mlp") for k in changed)


@pytest.mark.slow
def test_other_level_records_do_not_change_the_update():
    a, b = make_learner(), make_learner()
    acts = on_policy(a, make_records(a.tokenizer, 5))
    plans = on_policy(a, make_records(a.tokenizer, 4, level="plan", seed=1, tag="p"))
    mixed = [x for pair in zip(plans, acts) for x in pair] + acts[len(plans):]
    m_a = a.train_step(acts, trainable="executor")
    m_b = b.train_step(mixed, trainable="executor")
    assert m_a[M.PG_LOSS] == m_b[M.PG_LOSS] and m_a[M.GRAD_NORM] == m_b[M.GRAD_NORM]
    wa, wb = exported(a), exported(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # training the planner on a batch without plan records is a no-op
    assert b.train_step(acts, trainable="planner")[M.LEARNER_TOKENS] == 0
    assert all(torch.equal(wb[k], v) for k, v in exported(b).items())


@pytest.mark.slow
def test_micro_batch_split_does_not_change_loss_or_gradient():
    a, b = make_learner(micro=1, kl_coef=0.0), make_learner(micro=4, kl_coef=0.0)
    records = on_policy(a, make_records(a.tokenizer, 7))
    m1, m4 = a.train_step(records, trainable="executor"), b.train_step(records, trainable="executor")
    for key in (M.PG_LOSS, M.GRAD_NORM):
        assert m1[key] == pytest.approx(m4[key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_two_policy_mode_trains_only_the_chosen_policy():
    learner = make_learner(planner_path="tiny:1", kl_coef=0.0)
    plans = make_records(learner.tokenizer, 4, level="plan")
    acts = make_records(learner.tokenizer, 4, tag="a")
    planner_lp = learner.compute_logprobs(plans, policy="planner")
    assert learner.compute_logprobs(plans) == planner_lp  # routed by level
    assert learner.compute_logprobs(plans, policy="executor") != planner_lp  # a different model
    on_policy(learner, plans + acts)
    exec_before, plan_before = exported(learner, "executor"), exported(learner, "planner")
    learner.train_step(plans + acts, trainable="planner")
    assert all(torch.equal(exec_before[k], v) for k, v in exported(learner, "executor").items())
    assert any(not torch.equal(plan_before[k], v) for k, v in exported(learner, "planner").items())


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_save_weights_writes_hf_names_and_the_model_weights(tmp_path, zero_stage):
    learner = make_learner(zero_stage=zero_stage)
    learner.train_step(on_policy(learner, make_records(learner.tokenizer, 4)), trainable="executor")
    path = learner.save_weights(tmp_path / "w.safetensors", policy="executor")
    saved = load_file(str(path))
    with safe_open(str(resolve_model("tiny") / "model.safetensors"), "pt") as f:
        # the HF checkpoint's names plus the tied head, which vLLM's in-place reload needs
        assert set(saved) == set(f.keys()) | {"lm_head.weight"}
    assert torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    buckets = list(learner.export_weights(policy="executor", bucket_mb=1))
    assert len(buckets) > 1 and sum(len(b) for b in buckets) == len(saved)
    assert all(torch.equal(saved[k], v) for b in buckets for k, v in b.items())
    if zero_stage == 2:  # unpartitioned: compare with the module itself
        state = learner.policies["executor"][0].module.state_dict()
        assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)
    else:  # partitioned: the same step under ZeRO-2 gives the same weights
        ref = make_learner(zero_stage=2)
        ref.train_step(on_policy(ref, make_records(ref.tokenizer, 4)), trainable="executor")
        for k, v in exported(ref).items():
            torch.testing.assert_close(saved[k], v, rtol=0, atol=1e-5)  # 1% of one lr=1e-3 Adam step
    # a bfloat16-serving policy syncs bfloat16 tensors (half the bytes): the float32 weights, rounded
    half = make_learner(zero_stage=zero_stage, dtype="bfloat16")
    path = half.save_weights(tmp_path / "half.safetensors", policy="executor")
    saved_half = load_file(str(path))
    assert all(v.dtype == torch.bfloat16 for v in saved_half.values())
    assert all(torch.equal(saved_half[k], v.to(torch.bfloat16)) for k, v in exported(half).items())


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_checkpoint_round_trip_restores_training_exactly(tmp_path, zero_stage):
    from transformers import AutoModelForCausalLM

    learner = make_learner(zero_stage=zero_stage)
    records = on_policy(learner, make_records(learner.tokenizer, 5))
    learner.train_step(records, trainable="executor")  # non-trivial Adam moments
    learner.save_checkpoint(tmp_path / "ckpt")
    saved_weights = exported(learner)
    m1, w1 = learner.train_step(records, trainable="executor"), exported(learner)
    learner.load_checkpoint(tmp_path / "ckpt")
    assert all(torch.equal(saved_weights[k], v) for k, v in exported(learner).items())
    m2, w2 = learner.train_step(records, trainable="executor"), exported(learner)
    assert {k: m1[k] for k in (M.PG_LOSS, M.KL, M.GRAD_NORM)} == {k: m2[k] for k in (M.PG_LOSS, M.KL, M.GRAD_NORM)}
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "policy", dtype=torch.float32)
    assert all(torch.equal(hf.state_dict()[k], v) for k, v in saved_weights.items())
    assert learner.steps == 2


@pytest.mark.slow
def test_a_new_lr_reaches_the_optimizer_after_load_checkpoint(tmp_path):
    """`--resume --allow-config-change` with a new learner.lr: DeepSpeed restores the saved param
    groups (old lr), then the config's lr and weight decay are put back."""
    learner = make_learner(lr=1e-3)
    learner.train_step(on_policy(learner, make_records(learner.tokenizer, 3)), trainable="executor")
    learner.save_checkpoint(tmp_path / "ckpt")
    resumed = make_learner(lr=5e-4, weight_decay=0.1)
    resumed.load_checkpoint(tmp_path / "ckpt")
    engine = resumed.policies["executor"][0]
    assert {(g["lr"], g["weight_decay"]) for g in engine.optimizer.param_groups} == {(5e-4, 0.1)}
    assert resumed.steps == 1


@pytest.mark.slow
def test_vllm_reloads_saved_weights_and_agrees_with_learner(tmp_path):
    from himac_ray.engines.vllm_engine import VLLMGenerator
    from himac_ray.generation import SamplingParams

    vllm = VLLMGenerator(resolve_model("tiny"), seed=0, max_model_len=512, dtype="float32")
    learner = make_learner(lr=1e-2)
    learner.train_step(on_policy(learner, make_records(learner.tokenizer, 6)), trainable="executor")
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    params = SamplingParams(temperature=1.0, max_tokens=12)

    def worst_gap(samples):
        recs = [Record(group_id="g", traj_id=f"t{i}", level="act", env_id="e", seed=0, step=0, subgoal_index=0,
                       prompt_ids=s.prompt_token_ids, response_ids=s.token_ids, logprobs=s.logprobs)
                for i, s in enumerate(x[0] for x in samples)]
        return max(abs(a - b) for r, lp in zip(recs, learner.compute_logprobs(recs)) for a, b in zip(r.logprobs, lp))

    assert worst_gap(vllm.generate(chat, params)) > 1e-2  # old sampler weights
    vllm.reload_weights(learner.save_weights(tmp_path / "w.safetensors", policy="executor"))
    assert worst_gap(vllm.generate(chat, params)) < 1e-3  # same tolerance as tests/himac_ray/test_engines.py


@pytest.mark.slow
def test_planner_lr_sets_the_step_size_of_planner_updates_only():
    """`learner.planner_lr` = 0: a planner update leaves the shared weights bit-identical, an executor
    update (at `learner.lr`) moves them; the optimizer holds the rate of the last update."""
    learner = make_learner(planner_lr=0.0, kl_coef=0.0)
    plans = on_policy(learner, make_records(learner.tokenizer, 4, level="plan"))
    acts = on_policy(learner, make_records(learner.tokenizer, 4, tag="a"))
    before = exported(learner)
    assert learner.train_step(plans, trainable="planner")[M.LEARNER_TOKENS] > 0
    assert all(torch.equal(before[k], v) for k, v in exported(learner).items())
    learner.train_step(acts, trainable="executor")
    assert any(not torch.equal(before[k], v) for k, v in exported(learner).items())
    assert {g["lr"] for g in learner.policies["executor"][0].optimizer.param_groups} == {1e-3}


@pytest.mark.slow
def test_per_level_moments_keep_one_levels_momentum_out_of_the_other_levels_update():
    """A planner update at lr 0 leaves the weights as they were but fills Adam's moments with plan
    gradients. With `level_moments: per_level` the executor update that follows is bit-identical to a
    fresh learner's; with `shared` the planner's momentum moves it too."""
    def after_executor(level_moments: str, planner_first: bool) -> dict:
        learner = make_learner(planner_lr=0.0, kl_coef=0.0, level_moments=level_moments)
        plans = on_policy(learner, make_records(learner.tokenizer, 4, level="plan"))
        acts = on_policy(learner, make_records(learner.tokenizer, 4, tag="a"))
        if planner_first:
            learner.train_step(plans, trainable="planner")
        learner.train_step(acts, trainable="executor")
        return exported(learner)

    fresh = after_executor("per_level", planner_first=False)
    per_level, shared = after_executor("per_level", planner_first=True), after_executor("shared", planner_first=True)
    assert all(torch.equal(fresh[k], v) for k, v in per_level.items())
    assert any(not torch.equal(fresh[k], v) for k, v in shared.items())


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_checkpoint_keeps_the_stashed_levels_moments(tmp_path, zero_stage):
    learner = make_learner(zero_stage=zero_stage, kl_coef=0.0)
    plans = on_policy(learner, make_records(learner.tokenizer, 4, level="plan"))
    acts = on_policy(learner, make_records(learner.tokenizer, 4, tag="a"))
    learner.train_step(plans, trainable="planner")
    learner.train_step(acts, trainable="executor")  # the planner's moments are stashed now
    learner.save_checkpoint(tmp_path / "ckpt")
    learner.train_step(plans, trainable="planner")
    w1 = exported(learner)
    resumed = make_learner(zero_stage=zero_stage, kl_coef=0.0)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.level_moments.active == "executor" and set(resumed.level_moments.stash) == {"planner"}
    resumed.train_step(plans, trainable="planner")
    assert all(torch.equal(w1[k], v) for k, v in exported(resumed).items())


@pytest.mark.slow
def test_warmup_ramps_the_rate_over_the_first_optimizer_steps():
    """Adam's first step moves every trained weight by the full rate (a sign step): with
    `warmup_steps: 4` it moves them by a quarter of it, and the rate reaches `lr` at the 4th step."""
    def first_step_moves(**kw) -> tuple:
        learner = make_learner(kl_coef=0.0, **kw)
        records = on_policy(learner, make_records(learner.tokenizer, 4))
        before = exported(learner)
        rates = []
        for _ in range(4):
            learner.train_step(records, trainable="executor")
            rates.append(learner.policies["executor"][0].optimizer.param_groups[0]["lr"])
            if len(rates) == 1:
                moved = max(float((v - before[k]).abs().max()) for k, v in exported(learner).items())
        return moved, rates

    full, _ = first_step_moves()
    warm, rates = first_step_moves(warmup_steps=4)
    assert full == pytest.approx(1e-3, rel=1e-3) and warm == pytest.approx(2.5e-4, rel=1e-3)
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
