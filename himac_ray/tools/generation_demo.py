"""Side-by-side generation demo: the same agent prompts through vLLM and Hugging Face.

`himac-ray demo --generation` prints each backend's answer to a planner prompt per environment
and the generated tokens/s of each, so a new user sees both engines work on the local model.
"""

from __future__ import annotations

import time

import gymnasium as gym

from himac_ray.generation import SamplingParams
from himac_ray.prompts import planner_prompt

DEMO_ENVS = ("himac/Sokoban-v0", "himac/ALFWorld-v0", "himac/WebShop-v0")


def sample_agent_prompts(seed: int = 0, max_subgoals: int = 4) -> list[list[dict]]:
    """One planner prompt per built-in text environment (episode `seed`)."""
    import himac_ray.envs  # noqa: F401  (registers the envs)

    prompts = []
    for env_id in DEMO_ENVS:
        env = gym.make(env_id)
        obs, info = env.reset(seed=seed)
        prompts.append(planner_prompt(env_id, task=info["task"], observation=obs, max_subgoals=max_subgoals))
        env.close()
    return prompts


def _timed(generator, prompts, params):
    start = time.perf_counter()
    outputs = generator.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(s.token_ids) for samples in outputs for s in samples)
    return outputs, tokens / max(seconds, 1e-9)


def run_generation_demo(model_path, *, max_tokens: int = 96, print_fn=print) -> dict[str, float]:
    """Generate greedy answers with vLLM and HF side by side; returns tokens/s per backend."""
    from himac_ray.engines.hf_engine import HFGenerator
    from himac_ray.engines.vllm_engine import VLLMGenerator

    prompts = sample_agent_prompts()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    print_fn(f"loading vLLM engine for {model_path} ...")
    vllm_out, vllm_tps = _timed(VLLMGenerator(model_path, in_process=True), prompts, params)
    print_fn("loading Hugging Face model ...")
    hf_out, hf_tps = _timed(HFGenerator(model_path), prompts, params)
    for env_id, v, h in zip(DEMO_ENVS, vllm_out, hf_out):
        print_fn(f"\n=== {env_id}: planner prompt ===")
        print_fn(f"--- vLLM ---\n{v[0].text.strip()}")
        print_fn(f"--- HF   ---\n{h[0].text.strip()}")
        print_fn(f"(same tokens: {v[0].token_ids == h[0].token_ids})")
    print_fn(f"\ngenerated tokens/s  vLLM: {vllm_tps:.1f}   HF generate (batch 1): {hf_tps:.1f}")
    return {"vllm_tokens_per_s": vllm_tps, "hf_tokens_per_s": hf_tps}
