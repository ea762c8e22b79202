"""The local VLM (Idefics3 around the tiny Llama / SmolLM2-135M) and the multimodal generators.

Real models and engines, no mocks. Tolerance for logprobs: vLLM's sampling logprobs and HF's
recomputation from `Sample.prompt_token_ids` + the same images (both float32 on CPU) agree
within LOGPROB_TOL = 1e-3 nats per token; observed differences are ~1e-5.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch

import himac_ray.envs  # noqa: F401  (registers the envs)
from himac_ray.engines import vision_chat
from himac_ray.generation import SamplingParams
from himac_ray.models import ModelUnavailableError, is_prepared, prepare_embedded_model
from himac_ray.models import vision as vlm
from himac_ray.prompts import executor_prompt, planner_prompt
from himac_ray.sft import vision as sft_vision
from himac_ray.sft.expert import expert_demonstrations

VISUAL = "himac/SokobanVisual-v0"
LOGPROB_TOL = 1e-3
GREEDY16 = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def tiny_path():
    return vlm.build_local_vlm(text_model="tiny")


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return vlm.load_vlm(tiny_path)


def visual_chats(seeds=(0, 1)):
    """Visual Sokoban planner prompts (one per seed) and one executor prompt, from prompts.py."""
    env = gym.make(VISUAL)
    chats = []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        chats.append(planner_prompt(VISUAL, task=info["task"], observation=obs["text"], max_subgoals=3, image=obs["image"]))
    chats.append(
        executor_prompt(
            VISUAL, task=info["task"], subgoals=["push the box onto the target"], subgoal_index=0, history=[],
            observation=obs["text"], admissible_actions=info["admissible_actions"], steps_in_subgoal=0, image=obs["image"],
        )
    )
    env.close()
    return chats


def room_image(seed, scale=1):
    env = gym.make(VISUAL, scale=scale)
    obs, _ = env.reset(seed=seed)
    env.close()
    return obs["image"]


# ------------------------------------------------------------------------------ building


def test_build_is_complete_and_cached(tiny_path):
    assert is_prepared(tiny_path) and vlm.is_vision_model(tiny_path)
    stamp = (tiny_path / "model.safetensors").stat().st_mtime_ns
    assert vlm.build_local_vlm(text_model="tiny") == tiny_path  # cached: not rebuilt
    assert (tiny_path / "model.safetensors").stat().st_mtime_ns == stamp


def test_model_layout(tiny):
    model, processor = tiny
    cfg = model.config
    assert cfg.vision_config.image_size == 96 and vlm.image_seq_len(cfg) == processor.image_seq_len == 36  # one per 16-px tile
    tok = processor.tokenizer
    for token in vlm.VLM_SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id
    assert cfg.image_token_id == tok.convert_tokens_to_ids(vlm.IMAGE_TOKEN)
    assert cfg.text_config.vocab_size == len(tok)
    assert processor.image_processor.do_image_splitting is False
    assert model.lm_head.weight.data_ptr() == model.model.text_model.embed_tokens.weight.data_ptr()  # tied


def test_same_seed_same_weights_other_seed_other_vision(tmp_path, tiny):
    model, _ = tiny
    again, _ = vlm.load_vlm(vlm.build_local_vlm(tmp_path / "a", text_model="tiny", seed=0))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        vlm.build_local_vlm(tmp_path / "x", text_model="embedded", text_init_range=0.02)  # pretrained: no redraw
    with pytest.raises(ValueError):
        vlm.build_local_vlm(tmp_path / "y", text_model="tiny", image_size=100)  # not a multiple of patch_size=16
    with pytest.raises(ValueError):
        vlm.build_local_vlm(tmp_path / "z", text_model="huge")
    assert vlm.default_vlm_path("tiny", 0, 96, 0.02).name == "vlm-tiny-seed0-img96-sf1-init0.02"


def test_embedded_vlm_keeps_the_language_model():
    path = vlm.build_local_vlm(text_model="embedded")
    model, processor = vlm.load_vlm(path)
    from safetensors.torch import load_file

    lm = load_file(str(prepare_embedded_model() / "model.safetensors"))
    ours = model.model.text_model.state_dict()
    assert torch.equal(ours["layers.3.mlp.down_proj.weight"], lm["model.layers.3.mlp.down_proj.weight"])
    old = lm["model.embed_tokens.weight"]
    assert torch.equal(ours["embed_tokens.weight"][: old.shape[0]], old)


def test_resolve_vlm_names(tiny_path):
    assert vlm.is_vlm_name("vlm-tiny") and vlm.is_vlm_name("vlm-embedded:3") and not vlm.is_vlm_name("tiny")
    assert vlm.resolve_vlm("vlm-tiny") == tiny_path == vlm.default_vlm_path("tiny", 0)
    with pytest.raises(ModelUnavailableError):
        vlm.resolve_vlm("vlm-huge")
    with pytest.raises(ModelUnavailableError):
        vlm.resolve_vlm("vlm-tiny:x")
    assert not vlm.is_vision_model(prepare_embedded_model())


# ------------------------------------------------------------------------------ rendering


def test_text_chats_render_like_the_text_model(tiny):
    from transformers import AutoTokenizer

    _, processor = tiny
    text_tok = AutoTokenizer.from_pretrained(prepare_embedded_model())
    for chat in ([{"role": "user", "content": "hi"}], [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]):
        assert vision_chat.render_vlm_chat(processor, chat) == text_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_image_prompt_expands_to_image_tokens(tiny):
    _, processor = tiny
    chat = visual_chats()[0]
    text = vision_chat.render_vlm_chat(processor, chat)
    assert text.count(vlm.IMAGE_TOKEN) == 1 and text.endswith("<|im_start|>assistant\n")
    inputs = vision_chat.processor_inputs(processor, text, vision_chat.chat_images(chat))
    ids = inputs["input_ids"][0].tolist()
    tok = processor.tokenizer
    fake, glob, image = (tok.convert_tokens_to_ids(t) for t in (vlm.FAKE_IMAGE_TOKEN, vlm.GLOBAL_IMAGE_TOKEN, vlm.IMAGE_TOKEN))
    start = ids.index(fake)
    n = processor.image_seq_len  # 36: one token per 16-px tile
    assert ids[start : start + n + 3] == [fake, glob] + [image] * n + [fake]
    assert inputs["pixel_values"].shape == (1, 1, 3, 96, 96)
    by_ids = vision_chat.processor_inputs(processor, ids, vision_chat.chat_images(chat))  # expanded ids + images
    assert torch.equal(by_ids["input_ids"], inputs["input_ids"])
    assert torch.equal(by_ids["pixel_values"], inputs["pixel_values"])


def test_scaled_images_give_the_same_pixels(tiny):
    _, processor = tiny
    small = vision_chat.processor_inputs(processor, "<image>", [room_image(3)])["pixel_values"]
    big = vision_chat.processor_inputs(processor, "<image>", [room_image(3, scale=2)])["pixel_values"]
    assert torch.equal(small, big)  # nearest-neighbour resize undoes integer scaling exactly


def test_the_image_reaches_the_logits(tiny):
    model, processor = tiny
    chat = visual_chats()[0]
    text = vision_chat.render_vlm_chat(processor, chat)
    outs = []
    for seed in (0, 5):
        with torch.no_grad():
            outs.append(model(**vision_chat.processor_inputs(processor, text, [room_image(seed)])).logits[0, -1])
    assert not torch.allclose(outs[0], outs[1])


# ------------------------------------------------------------------------------ SFT


def test_encode_example_masks_the_prompt(tiny):
    _, processor = tiny
    ex = expert_demonstrations(VISUAL, [0])[1]
    enc = sft_vision.encode_example(processor, ex)
    n = enc["prompt_len"]
    assert (enc["labels"][:n] == -100).all() and enc["labels"][-1].item() == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(enc["input_ids"][n:]) == ex["messages"][-1]["content"] + "<|im_end|>"


def test_sft_lowers_the_loss(tiny_path):
    examples = [e for e in expert_demonstrations(VISUAL, [0, 1]) if e["level"] == "act"][:4]
    res = sft_vision.train_vlm_sft(tiny_path, examples, epochs=6, batch_size=4, lr=1e-3, warmup_steps=1, log_fn=None)
    assert res["steps"] == 6 and res["losses"][-1] < 0.75 * res["losses"][0]
    acc = sft_vision.action_choice_accuracy(res["model"], res["processor"], examples)
    assert acc["n"] == 4 and 0.0 <= acc["accuracy"] <= 1.0 and sum(acc["counts"].values()) == 4


# ------------------------------------------------------------------------------ engines


@pytest.fixture(scope="module")
def engines(tiny_path):
    from himac_ray.engines.vlm_engine import HFVisionGenerator, VLLMVisionGenerator

    vllm = VLLMVisionGenerator(tiny_path, seed=0, max_model_len=2048, dtype="float32")
    hf = HFVisionGenerator(tiny_path)
    yield vllm, hf
    del vllm


def _greedy_agree(vllm, hf, chats):
    v_out, h_out = vllm.generate(chats, GREEDY16), hf.generate(chats, GREEDY16)
    for v, h in zip(v_out, h_out):
        assert v[0].prompt_token_ids == h[0].prompt_token_ids
        assert v[0].token_ids[:16] == h[0].token_ids[:16], (v[0].text, h[0].text)
        assert max(abs(a - b) for a, b in zip(v[0].logprobs, h[0].logprobs)) < LOGPROB_TOL
    return v_out


@pytest.mark.slow
def test_greedy_output_matches_hf_on_visual_prompts(engines):
    vllm, hf = engines
    chats = visual_chats() + [[{"role": "user", "content": "What is the capital of France?"}]]
    out = _greedy_agree(vllm, hf, chats)
    image_tokens = out[0][0].prompt_token_ids.count(hf.model.config.image_token_id)
    assert image_tokens == 36  # prompt_token_ids are the expanded prompt vLLM saw
    assert out[0][0].token_ids != out[1][0].token_ids  # two rooms, two answers


@pytest.mark.slow
def test_sampling_logprobs_match_hf_recompute(engines):
    vllm, hf = engines
    chats = visual_chats()[:2]
    worst = 0.0
    for chat, samples in zip(chats, vllm.generate(chats, SamplingParams(n=3, temperature=1.0, max_tokens=24))):
        assert len(samples) == 3
        for s in samples:
            assert len(s.logprobs) == len(s.token_ids) > 0
            ref = hf.score(s.prompt_token_ids, vision_chat.chat_images(chat), s.token_ids)  # learner-side recompute
            assert ref == pytest.approx(hf.score(chat, None, s.token_ids), abs=1e-5)
            worst = max(worst, max(abs(a - b) for a, b in zip(ref, s.logprobs)))
    assert worst < LOGPROB_TOL


@pytest.mark.slow
def test_weight_reload_changes_output_and_restores_it(engines):
    vllm, hf = engines
    chats = visual_chats()[:1]
    before = vllm.generate(chats, GREEDY16)[0][0]
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    vllm.reload_weights(noisy)
    assert vllm.generate(chats, GREEDY16)[0][0].token_ids != before.token_ids
    assert vllm.weights_version == 1
    # only the vision encoder + connector change: the image embeddings must be recomputed
    vision = {k: v + 0.5 * torch.randn(v.shape, generator=gen) if "vision" in k or "connector" in k else v for k, v in original.items()}
    vllm.reload_weights(vision)
    hf.model.load_state_dict(vision)
    try:
        changed = _greedy_agree(vllm, hf, chats)[0][0]
        assert changed.token_ids != before.token_ids
    finally:
        hf.model.load_state_dict(original)
    vllm.reload_weights(original, version=7)
    restored = vllm.generate(chats, GREEDY16)[0][0]
    assert restored.token_ids == before.token_ids
    # the same weights again: the same tokens, logprobs equal up to kernel rounding (seen: 3e-6 on
    # an AVX2 CPU, 0 on AVX-512 ones), not bit-exact on every CPU
    assert restored.logprobs == pytest.approx(before.logprobs, abs=1e-4)
    assert vllm.weights_version == 7


@pytest.mark.slow
def test_embedded_vlm_vllm_matches_hf():
    from himac_ray.engines.vlm_engine import HFVisionGenerator, VLLMVisionGenerator

    path = vlm.build_local_vlm(text_model="embedded")
    vllm = VLLMVisionGenerator(path, seed=0, max_model_len=2048, dtype="float32")
    hf = HFVisionGenerator(path)
    chats = visual_chats(seeds=(0,))[:1] + [[{"role": "user", "content": "What is the capital of France? Answer briefly."}]]
    out = _greedy_agree(vllm, hf, chats)
    assert "Paris" in out[1][0].text  # the language model survived the surgery
    del vllm


def test_image_free_vision_generator_inputs(tiny_path):
    from himac_ray.engines.vlm_engine import HFVisionGenerator

    hf = HFVisionGenerator(tiny_path)
    inputs = hf.inputs([{"role": "user", "content": "hi"}])
    assert "pixel_values" not in inputs
    sample = hf.generate([[{"role": "user", "content": "hi"}]], SamplingParams(temperature=0.0, max_tokens=4))[0][0]
    assert len(sample.token_ids) == len(sample.logprobs) <= 4
    assert np.allclose(hf.score(sample.prompt_token_ids, [], sample.token_ids), sample.logprobs, atol=LOGPROB_TOL)
