"""SFT warm start on the tiny random Llama (real torch / transformers, no mocks).

Demonstrations come from the real Sokoban expert (`himac_ray.sft.expert`). The tiny model shares the
embedded model's tokenizer and chat template, so tokenization checks hold for both.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from himac_ray.config import config_from_dict
from himac_ray.engines.chat import render_chat
from himac_ray.generation import ScriptedGenerator, text_of
from himac_ray.models import build_tiny_llama
from himac_ray.sft import trainer as sft_train
from himac_ray.sft.expert import expert_demonstrations
from himac_ray.sft.trainer import (
    IGNORE_INDEX,
    action_accuracy,
    sft_from_config,
    sft_loss,
    tokenize_example,
    train_sft,
)

SOKOBAN = "himac/Sokoban-v0"
SOKOBAN6 = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 15}
K, HISTORY = 3, 2


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def demos():
    """8 examples: 2 plans, 6 executor steps."""
    return expert_demonstrations(SOKOBAN, [0, 1], env_kwargs=SOKOBAN6, max_subgoals=K, history_length=HISTORY)


def _weights(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def _train(tiny, examples, out, **kw):
    args = dict(model_path=tiny, examples=examples, out_dir=out, lr=1e-3, epochs=1, batch_size=4, progress=False)
    return train_sft(**{**args, **kw})


# ------------------------------------------------------------------------------- tokenization


def test_labels_only_on_assistant_tokens_and_prompt_is_render_chat(tokenizer, demos):
    for ex in (demos[0], demos[1]):  # a plan and an act example
        ids, labels = tokenize_example(tokenizer, ex)
        prompt = render_chat(tokenizer, ex["messages"][:-1])
        response = tokenizer.encode(ex["messages"][-1]["content"], add_special_tokens=False) + [tokenizer.eos_token_id]
        assert ids == prompt + response
        assert labels == [IGNORE_INDEX] * len(prompt) + response
        # the trained sequence is the chat template's own rendering of the full conversation
        # (up to the newline it puts after the end-of-turn token)
        full = tokenizer.apply_chat_template(
            [{"role": m["role"], "content": text_of(m["content"])} for m in ex["messages"]], tokenize=False
        )
        assert tokenizer.decode(ids) == full.rstrip("\n")
        assert tokenizer.decode(response) == ex["messages"][-1]["content"] + tokenizer.eos_token


def test_truncation_keeps_prompt_tail_and_whole_response(tokenizer, demos):
    ex = demos[1]
    ids, labels = tokenize_example(tokenizer, ex)
    n_prompt = labels.count(IGNORE_INDEX)
    cut_ids, cut_labels = tokenize_example(tokenizer, ex, max_len=len(ids) - 50)
    assert len(cut_ids) == len(ids) - 50
    assert cut_ids == ids[50:] and cut_labels == labels[50:]
    assert cut_labels.count(IGNORE_INDEX) == n_prompt - 50


def test_shared_prefix_gives_the_same_loss_and_gradients(tiny, tokenizer, demos):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    rows = [tokenize_example(tokenizer, ex) for ex in demos[:4]]

    def run(share):
        model.zero_grad()
        loss_sum, n = sft_train._loss_sum(model, rows, tokenizer.pad_token_id, share)
        (loss_sum / n).backward()
        return loss_sum.item() / n, {k: p.grad.clone() for k, p in model.named_parameters()}

    plain, g_plain = run(False)
    shared, g_shared = run(True)
    # reference: HF's own shifted loss, one unpadded row at a time
    ref_sum = ref_n = 0
    with torch.no_grad():
        for ids, labels in rows:
            n = sum(t != IGNORE_INDEX for t in labels[1:])
            ref_sum += model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item() * n
            ref_n += n
    assert sft_train._common_prefix([ids for ids, _ in rows]) > 100  # system + task text
    assert plain == pytest.approx(ref_sum / ref_n, rel=1e-5)
    assert shared == pytest.approx(plain, rel=1e-5)
    for k in g_plain:
        torch.testing.assert_close(g_shared[k], g_plain[k], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- training


def test_sft_lowers_loss_and_saved_folder_reloads_identically(tiny, demos, tmp_path, monkeypatch):
    trained = {}
    save = sft_train._save_atomic

    def spy(model, tokenizer, out_dir, metrics):
        trained.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return save(model, tokenizer, out_dir, metrics)

    monkeypatch.setattr(sft_train, "_save_atomic", spy)
    out = tmp_path / "sft"
    metrics = _train(tiny, demos, out, epochs=3)
    assert metrics[sft_train.FINAL_LOSS] < metrics[sft_train.INITIAL_LOSS]
    assert metrics[sft_train.STEPS] == 3 * -(-len(demos) // 4)
    assert metrics["sft/examples_plan"] == 2 and metrics["sft/examples_act"] == len(demos) - 2
    assert metrics[sft_train.TOKENS] > metrics[sft_train.TARGET_TOKENS] > 0
    assert metrics[sft_train.TRUNCATED] == 0
    # loss on the demonstrations, recomputed from the saved folder, is well below the start
    assert sft_loss(model_path=out, examples=demos) < 0.7 * sft_loss(model_path=tiny, examples=demos)
    # reload: same tensors as the trained model, float32 safetensors, tokenizer and metrics alongside
    reloaded = _weights(out)
    assert reloaded.keys() == trained.keys()
    for k, v in trained.items():
        assert torch.equal(reloaded[k], v), k
    assert (out / "model.safetensors").exists() and (out / sft_train.METRICS_FILE).exists()
    assert all(t.dtype == torch.float32 for t in load_file(out / "model.safetensors").values())
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(tiny).chat_template
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # no temporary folders left


def test_deterministic_by_seed_and_out_dir_replaced(tiny, demos, tmp_path):
    a = _train(tiny, demos, tmp_path / "a", seed=1)
    b = _train(tiny, demos, tmp_path / "b", seed=1)
    assert a[sft_train.INITIAL_LOSS] == b[sft_train.INITIAL_LOSS] and a[sft_train.FINAL_LOSS] == b[sft_train.FINAL_LOSS]
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # another seed shuffles differently; training again into "b" replaces it
    _train(tiny, demos, tmp_path / "b", seed=2)
    wc = load_file(tmp_path / "b" / "model.safetensors")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_micro_batches_accumulate_to_the_full_batch(tiny, demos, tmp_path):
    _train(tiny, demos, tmp_path / "full", batch_size=8)
    _train(tiny, demos, tmp_path / "micro", batch_size=8, micro_batch_size=3)
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "micro" / "model.safetensors")
    # one Adam step moves each weight by about lr = 1e-3 whatever its gradient, so rounding in a
    # near-zero gradient (a rarely seen token's embedding) can show up as a fraction of lr
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=3e-4, rtol=0)
        assert (wa[k] - wb[k]).abs().mean() < 1e-6


def test_train_layers_freezes_everything_below_the_top_blocks(tiny, demos, tmp_path):
    _train(tiny, demos, tmp_path / "top1", train_layers=1)
    before, after = _weights(tiny), _weights(tmp_path / "top1")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.norm.")) for k in changed), changed
    with pytest.raises(ValueError, match="train_layers"):
        _train(tiny, demos, tmp_path / "bad", train_layers=-1)
    _train(tiny, demos, tmp_path / "all", train_layers=3)  # more than the model's 2 blocks: every block
    changed = {k for k in before if not torch.equal(before[k], _weights(tmp_path / "all")[k])}
    assert any(k.startswith("model.layers.0.") for k in changed) and "model.embed_tokens.weight" not in changed


def test_sft_from_config_uses_the_config(tiny, tmp_path):
    cfg = config_from_dict({
        "model": {"path": str(tiny)},
        "env": {"id": SOKOBAN, "kwargs": SOKOBAN6},
        "rollout": {"max_subgoals": K, "history_length": HISTORY},
        "sft": {"episodes": 2, "epochs": 1, "batch_size": 4, "lr": 1e-3, "seed_start": 7},
    })
    out = sft_from_config(cfg, tmp_path / "warm")
    assert out == tmp_path / "warm" and (out / "config.json").exists()
    import json

    metrics = json.loads((out / sft_train.METRICS_FILE).read_text())
    expected = expert_demonstrations(SOKOBAN, [7, 8], env_kwargs=SOKOBAN6, max_subgoals=K, history_length=HISTORY)
    assert metrics[sft_train.EXAMPLES] == len(expected) and metrics["sft/examples_plan"] == 2


# ------------------------------------------------------------------------------- evaluation


def _answers(examples) -> dict[str, str]:
    return {repr(ex["messages"][:-1]): ex["messages"][-1]["content"] for ex in examples}


def test_action_accuracy_scores_the_expert_perfectly_and_a_constant_policy_partially():
    seeds = [20, 21, 22]
    held_out = expert_demonstrations(SOKOBAN, seeds, env_kwargs=SOKOBAN6, max_subgoals=K, history_length=HISTORY)
    answers = _answers(held_out)
    kw = dict(env_kwargs=SOKOBAN6, max_subgoals=K, history_length=HISTORY)
    expert = action_accuracy(ScriptedGenerator(lambda chat, i: answers[repr(list(chat))]), SOKOBAN, seeds, **kw)
    acts = [ex for ex in held_out if ex["level"] == "act"]
    assert expert == {
        sft_train.ACT_PROMPTS: len(acts), sft_train.PLAN_PROMPTS: 3, sft_train.ACT_ACCURACY: 1.0,
        sft_train.ACT_VALID_RATE: 1.0, sft_train.SUB_DONE_ACCURACY: 1.0, sft_train.PLAN_VALID_RATE: 1.0,
        sft_train.PLAN_EXACT_MATCH: 1.0,
    }
    # always "Up" (a valid spelling of up), never <sub_done>, plans without tags
    const = action_accuracy(ScriptedGenerator(lambda chat, i: "<think>.</think><action>Up</action>"), SOKOBAN, seeds, **kw)
    ups = sum("<action>up</action>" in ex["messages"][-1]["content"] for ex in acts)
    dones = sum("<sub_done>" in ex["messages"][-1]["content"] for ex in acts)
    assert const[sft_train.ACT_ACCURACY] == pytest.approx(ups / len(acts))
    assert const[sft_train.ACT_VALID_RATE] == 1.0
    assert const[sft_train.SUB_DONE_ACCURACY] == pytest.approx(1 - dones / len(acts))
    assert const[sft_train.PLAN_VALID_RATE] == 0.0 and const[sft_train.PLAN_EXACT_MATCH] == 0.0


@pytest.mark.slow
def test_overfit_tiny_model_reproduces_the_expert_in_vllm(tiny, tmp_path):
    """SFT output loads in vLLM, and greedy sampling there follows what was trained (same prompt ids)."""
    pytest.importorskip("vllm")
    from himac_ray.engines.vllm_engine import VLLMGenerator

    seeds = [0]  # a plan and two executor steps
    examples = expert_demonstrations(SOKOBAN, seeds, env_kwargs=SOKOBAN6, max_subgoals=K, history_length=HISTORY)
    out = tmp_path / "overfit"
    metrics = _train(tiny, examples, out, lr=3e-3, epochs=30, batch_size=len(examples))
    assert metrics[sft_train.FINAL_LOSS] < 0.05
    gen = VLLMGenerator(out, seed=0, max_model_len=2048)
    acc = action_accuracy(gen, SOKOBAN, seeds, env_kwargs=SOKOBAN6, max_subgoals=K, history_length=HISTORY)
    assert acc[sft_train.ACT_ACCURACY] == 1.0 and acc[sft_train.PLAN_EXACT_MATCH] == 1.0
