"""Visual Sokoban end to end through Ray: the local tiny VLM (Idefics3 around the tiny Llama) in
vLLM sampler actors, the DeepSpeed learner fed the records' pixels, SFT warm start on the
expert's image demonstrations, one HiMAC iteration, a checkpoint a VLM loader can open."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from himac_ray.config import load_config
from himac_ray.data import png_image, table_to_records
from himac_ray.train import start_local_head, train

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def local_ray():
    start_local_head(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def test_one_himac_iteration_on_visual_sokoban(local_ray, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "sokoban_visual_cpu.yaml", [
        f"run.dir={run}", "model.path=vlm-tiny", "run.iterations=1", "sft.episodes=2", "algorithm.num_groups=2",
        "algorithm.group_size=2", "env.kwargs.max_steps=4", "learner.lr=1e-3",
        "learner.skip_zero_advantage=false", "sft.cache=false"])  # the warm start goes to run/sft_model
    rows = train(cfg)
    assert [(r["iteration"], r["trainable"]) for r in rows] == [(0, "planner")]
    assert rows[0]["records"] > 0 and rows[0]["perf/weight_sync_seconds"] > 0
    assert rows[0]["perf/learner_tokens"] > 0 and np.isfinite(rows[0]["losses/pg_loss"])
    records = table_to_records(pq.read_table(run / "trajectories" / "iter_00000.parquet"))
    assert {r.level for r in records} == {"plan", "act"}
    for r in records:  # every response kept the board it saw
        assert np.asarray(png_image(r.image)).shape == (96, 96, 3)
    from transformers import AutoProcessor

    for folder in (run / "checkpoints" / "iter_00001" / "learner" / "policy", run / "sft_model"):
        assert "vision_config" in json.loads((folder / "config.json").read_text())
        assert AutoProcessor.from_pretrained(folder).image_processor is not None
