"""vLLM and Hugging Face generators on the tiny and the embedded model (real engines, no mocks).

Tolerance for logprobs: vLLM's sampling logprobs and HF's recomputed ones (both float32 on CPU)
agree within 1e-3 nats per token; observed differences are ~1e-5.
"""

import logging

import pytest
import torch

from himac_ray.engines.chat import marker_token
from himac_ray.engines.hf_engine import HFGenerator
from himac_ray.engines.vllm_engine import NARROWING_WARNING, VLLMGenerator
from himac_ray.generation import SamplingParams
from himac_ray.models import build_tiny_llama, prepare_embedded_model
from himac_ray.prompts import ACTION_CLOSE, SUB_DONE
from himac_ray.tools.generation_demo import sample_agent_prompts

pytestmark = pytest.mark.slow
LOGPROB_TOL = 1e-3
GREEDY16 = SamplingParams(temperature=0.0, max_tokens=16)
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France? Answer briefly."}],
    *sample_agent_prompts(seed=0)[:2],
]


@pytest.fixture(scope="module", params=["tiny", "embedded"])
def engines(request):
    path = build_tiny_llama() if request.param == "tiny" else prepare_embedded_model()
    vllm = VLLMGenerator(path, seed=0, max_model_len=2048, dtype="float32")  # the HF reference is float32
    hf = HFGenerator(path)
    yield request.param, vllm, hf
    del vllm


def test_models_load_in_both_backends(engines):
    _, vllm, hf = engines
    assert vllm.tokenizer.eos_token_id == hf.tokenizer.eos_token_id
    assert hf.model.config.num_hidden_layers >= 2


def test_greedy_output_matches_hf_first_16_tokens(engines):
    name, vllm, hf = engines
    v_out = vllm.generate(PROMPTS, GREEDY16)
    h_out = hf.generate(PROMPTS, GREEDY16)
    for v, h in zip(v_out, h_out):
        assert v[0].prompt_token_ids == h[0].prompt_token_ids
        assert v[0].token_ids[:16] == h[0].token_ids[:16], (name, v[0].text, h[0].text)
    if name == "embedded":
        assert "Paris" in v_out[0][0].text


def test_greedy_with_several_samples_per_prompt(engines):
    # vLLM itself refuses n > 1 with temperature 0; the generator sends each prompt n times
    _, vllm, _ = engines
    out = vllm.generate(PROMPTS[:2], SamplingParams(temperature=0.0, max_tokens=8, n=3))
    one = vllm.generate(PROMPTS[:2], SamplingParams(temperature=0.0, max_tokens=8))
    assert [len(samples) for samples in out] == [3, 3]
    for samples, ref in zip(out, one):
        assert {s.text for s in samples} == {ref[0].text}
        assert all(s.prompt_token_ids == ref[0].prompt_token_ids for s in samples)


def test_sampling_logprobs_match_hf_recompute(engines):
    _, vllm, hf = engines
    params = SamplingParams(n=3, temperature=1.0, max_tokens=24)
    worst = 0.0
    for samples in vllm.generate(PROMPTS[:2], params):
        assert len(samples) == 3
        for s in samples:
            assert len(s.logprobs) == len(s.token_ids) > 0
            ref = hf.score(s.prompt_token_ids, s.token_ids)
            worst = max(worst, max(abs(a - b) for a, b in zip(ref, s.logprobs)))
    assert worst < LOGPROB_TOL


def test_weight_reload_changes_output_and_restores_it(engines):
    _, vllm, hf = engines
    before = vllm.generate(PROMPTS[:1], GREEDY16)[0][0]
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    vllm.reload_weights(noisy)
    changed = vllm.generate(PROMPTS[:1], GREEDY16)[0][0]
    assert changed.token_ids != before.token_ids
    assert vllm.weights_version == 1
    vllm.reload_weights(original, version=7)
    restored = vllm.generate(PROMPTS[:1], GREEDY16)[0][0]
    assert restored.token_ids == before.token_ids
    # the same weights again: the same tokens, logprobs equal up to kernel rounding (as in test_vlm)
    assert restored.logprobs == pytest.approx(before.logprobs, abs=1e-4)
    assert vllm.weights_version == 7


def test_reload_from_missing_file_is_a_clear_error(engines):
    _, vllm, _ = engines
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vllm.reload_weights("/nonexistent/weights.safetensors")


def test_sampling_params_validate():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="n must be"):
        SamplingParams(n=0)


def test_reload_of_tied_checkpoint_without_lm_head_matches_hf(engines):
    """HF drops lm_head.weight from tied checkpoints; the reload must still refresh the head."""
    _, vllm, hf = engines
    original = {k: v.clone() for k, v in hf.model.state_dict().items()}
    sample = vllm.generate(PROMPTS[:1], SamplingParams(temperature=1.0, max_tokens=12))[0][0]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    if hf.model.config.tie_word_embeddings:
        state = {k: v for k, v in hf.model.state_dict().items() if k != "lm_head.weight"}
    else:
        state = dict(hf.model.state_dict())
    try:
        vllm.reload_weights(state)
        got = vllm.score([(sample.prompt_token_ids, sample.token_ids)])[0]
        want = hf.score(sample.prompt_token_ids, sample.token_ids)
        assert max(abs(a - b) for a, b in zip(got, want)) < LOGPROB_TOL
    finally:
        hf.model.load_state_dict(original)
        vllm.reload_weights(original)


def test_token_bias_moves_greedy_choice_and_leaves_logprobs_raw(engines):
    """`SamplingParams.token_bias` (the greedy `<sub_done>` threshold) biases the choice in both backends; the
    recorded logprobs stay the model's own (unbiased), as the learner recomputes them."""
    _, vllm, hf = engines
    after, marker = ACTION_CLOSE, SUB_DONE
    tid = marker_token(vllm.tokenizer, after, marker)
    alone = vllm.tokenizer.encode(after, add_special_tokens=False)
    joined = vllm.tokenizer.encode(after + marker, add_special_tokens=False)
    assert tid in joined and tid not in alone and vllm.tokenizer.decode(joined) == after + marker
    plain = SamplingParams(temperature=0.0, max_tokens=3)
    biased = SamplingParams(temperature=0.0, max_tokens=3, token_bias=((after, marker, 100.0),))
    for gen in (vllm, hf):
        base = gen.generate(PROMPTS[:1], plain)[0][0]
        s = gen.generate(PROMPTS[:1], biased)[0][0]
        assert base.token_ids[0] != tid and s.token_ids[0] == tid
        raw = hf.score(s.prompt_token_ids, s.token_ids)
        assert abs(raw[0] - s.logprobs[0]) < LOGPROB_TOL and s.logprobs[0] < -1.0  # not the biased ~0


def test_vllm_narrowing_warning_is_dropped_and_other_warnings_kept():
    """vLLM warns once per weight it narrows (a float32 folder into a bfloat16 engine); the engine module drops
    exactly that message on its logger."""
    logger = logging.getLogger("vllm.model_executor.models.utils")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger.addHandler(handler)
    try:
        logger.warning(NARROWING_WARNING, "layers.0.mlp.up_proj.weight", torch.float32, torch.bfloat16)
        logger.warning("Ignoring weight %s", "x")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["Ignoring weight x"]
