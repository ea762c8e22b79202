"""What the warm-start diagnostics in this folder share: the learning bench's full-size HiMAC config, its
cached warm start (or a model directory given as the first argument) and an in-process vLLM engine on it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.learning_bench import SIZES, make_cfg, warm_start  # noqa: E402  (after the path insert)


def diag_model_and_config(name: str):
    """(model directory, TrainConfig) for a diagnostic called `name` (its run dir is /tmp/himac-<name>)."""
    spec = SIZES["full"]
    model = sys.argv[1] if len(sys.argv) > 1 else warm_start("himac", spec)
    print("model", model, flush=True)
    return model, make_cfg(Path(f"/tmp/himac-{name}"), algo="himac", seed=0, spec=spec)


def diag_generator(model: str, cfg):
    """The recipe's vLLM engine on `model`, in this process."""
    from himac_ray.engines.vlm_engine import vllm_generator

    return vllm_generator(model, seed=0, max_model_len=cfg.model.max_model_len, in_process=True,
                          kv_cache_gb=cfg.sampler.kv_cache_gb, dtype=cfg.model.dtype, threads=cfg.sampler.threads,
                          prefix_caching=cfg.sampler.prefix_caching)


def diag_rollout_setup(name: str, rooms: int = 64):
    """(config, engine, greedy planner params, greedy executor params, held-out room seeds) of a rollout diagnostic."""
    from himac_ray.evaluate import eval_params, eval_seeds

    model, cfg = diag_model_and_config(name)
    planner, executor = eval_params(cfg)
    return cfg, diag_generator(model, cfg), planner, executor, eval_seeds(cfg, rooms)
