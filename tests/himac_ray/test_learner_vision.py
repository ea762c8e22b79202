"""The DeepSpeed learner on a vision-language policy (the local tiny VLM; real vLLM + DeepSpeed, CPU).

Records come from a real visual-Sokoban rollout through vLLM; the learner recomputes their
logprobs from the PNG in each record and the expanded prompt ids. Tolerance: 2e-3 nats per
token (float32 on both sides, as the text end-to-end test).
"""

import dataclasses

import pytest

from himac_ray import metrics as M
from himac_ray.config import AlgorithmConfig, LearnerConfig, ModelConfig
from himac_ray.generation import SamplingParams
from himac_ray.learner import Learner
from himac_ray.models import resolve_model

pytestmark = pytest.mark.slow
TOL = 2e-3


@pytest.fixture(scope="module")
def visual_records():
    from himac_ray.engines.vlm_engine import VLLMVisionGenerator
    from himac_ray.rollout import run_rollout

    gen = VLLMVisionGenerator(resolve_model("vlm-tiny"), seed=0, max_model_len=2048, dtype="float32")
    result = run_rollout(generator=gen, env_id="himac/SokobanVisual-v0", env_kwargs={"max_steps": 3}, seeds=[0, 1],
                         mode="macro", group_size=2, planner_params=SamplingParams(temperature=1.0, max_tokens=32),
                         executor_params=SamplingParams(temperature=1.0, max_tokens=16), max_subgoals=2)
    return [r for r in result.records if r.response_ids]


def test_learner_recomputes_the_samplers_logprobs_from_the_record_images(visual_records):
    learner = Learner(model=ModelConfig(path="vlm-tiny", dtype="float32"),
                      learner=LearnerConfig(zero_stage=2, lr=1e-3, micro_batch_size=3, max_len=1024),
                      algorithm=AlgorithmConfig(kl_coef=0.01), seed=0)
    records = visual_records
    assert {r.level for r in records} == {"plan", "act"} and all(r.image for r in records)
    recomputed = learner.compute_logprobs(records)
    worst = max(abs(a - b) for r, lp in zip(records, recomputed) for a, b in zip(r.logprobs, lp))
    assert worst < TOL
    # the pixels matter: another room's image gives other logprobs
    swapped = [dataclasses.replace(r, image=records[-1 - i].image) for i, r in enumerate(records)]
    moved = max(abs(a - b) for r, s, lp in zip(records, swapped, learner.compute_logprobs(swapped))
                if s.image != r.image for a, b in zip(r.logprobs, lp))
    assert moved > 10 * TOL
    records = [dataclasses.replace(r, advantage=1.0 if i % 2 else -1.0) for i, r in enumerate(records)]
    metrics = learner.train_step(records, trainable="executor")
    assert metrics[M.PG_LOSS] == metrics[M.PG_LOSS] and metrics["perf/learner_tokens"] > 0
    after = learner.compute_logprobs(records)
    assert max(abs(a - b) for x, y in zip(recomputed, after) for a, b in zip(x, y)) > TOL  # the update moved it
