"""A short real rollout: the tiny random Llama on vLLM plays Sokoban in macro mode (slow)."""

from __future__ import annotations

import pytest

from himac_ray.data import read_parquet, table_to_records, write_parquet
from himac_ray.generation import SamplingParams
from himac_ray.rollout import run_rollout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_generator():
    pytest.importorskip("vllm")
    from himac_ray.engines.vllm_engine import VLLMGenerator
    from himac_ray.models import build_tiny_llama

    return VLLMGenerator(build_tiny_llama(), seed=0, max_model_len=2048, kv_cache_gb=1.0)


def test_macro_rollout_on_vllm_round_trips_through_parquet(vllm_generator, tmp_path):
    seeds, G, max_steps = [0, 1], 2, 3
    res = run_rollout(
        generator=vllm_generator, env_id="himac/Sokoban-v0", env_kwargs={"max_steps": max_steps}, seeds=seeds,
        mode="macro", group_size=G, planner_params=SamplingParams(temperature=1.0, max_tokens=48),
        executor_params=SamplingParams(temperature=0.0, max_tokens=24),
    )
    n = len(seeds) * G
    plans = [r for r in res.records if r.level == "plan"]
    acts = [r for r in res.records if r.level == "act"]
    assert len(plans) == n and len(acts) == n * max_steps == res.metrics["env_steps"]
    assert res.metrics["gen_calls"] == 1 + max_steps  # one planner call, then one call per round
    assert res.metrics["gen_tokens"] > 0 and res.metrics["gen_seconds"] > 0
    for r in res.records:
        assert r.prompt_ids and r.response_ids and len(r.logprobs) == len(r.response_ids)
        assert all(lp <= 0.0 for lp in r.logprobs)
    # a random model almost never follows the format: invalid output is penalised, never fatal
    assert 0.0 <= res.metrics["invalid_action_rate"] <= 1.0

    path = tmp_path / "rollout.parquet"
    write_parquet(res.records, path)
    back = table_to_records(read_parquet(path))
    assert back == res.records
