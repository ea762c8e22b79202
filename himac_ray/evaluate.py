"""Held-out evaluation: greedy planner and executor on seeds disjoint from training, and optionally
a sampled evaluation beside it (`env.eval_temperature` > 0, `env.eval_samples` episodes per task).

Used by the trainer (`run.eval_every`) through its rollout service and by `himac-ray eval
--checkpoint DIR`, which loads a checkpoint's HF weights into a local vLLM engine.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

from himac_ray.config import TrainConfig, config_from_dict
from himac_ray.generation import SamplingParams
from himac_ray.names import FLAT_ALGORITHMS
from himac_ray.run_state import RunStateError, latest_checkpoint, safetensors_problem
from himac_ray.schedule import executor_params, planner_params

SAMPLED = "sampled"
"""key of the sampled evaluation's summary inside `run_eval`'s result"""


def eval_params(cfg: TrainConfig, temperature: float = 0.0) -> tuple[SamplingParams, SamplingParams]:
    """(planner, executor) sampling for evaluation: greedy by default."""
    return planner_params(cfg, temperature), executor_params(cfg, temperature)


def eval_seeds(cfg: TrainConfig, episodes: int | None = None) -> list[int]:
    n = episodes or cfg.env.eval_episodes
    return list(range(cfg.env.eval_seed_start, cfg.env.eval_seed_start + n))


def summarize(result) -> dict:
    """Success and return overall and by task type (from the records' `extra["task_type"]`).

    `won_by_seed`: task seed (str) -> 1 / 0 with one episode per task, else the fraction of its
    episodes won (several sampled episodes per task); `task_type_by_seed`: task seed (str) -> its
    task type, so a paired comparison can be split by type."""
    task_type = {r.traj_id: r.extra.get("task_type", "all") for r in result.records}
    by_type = defaultdict(list)
    by_seed = defaultdict(list)
    type_of_seed = {}
    for e in result.episodes:
        t = task_type.get(e["traj_id"], "all")
        by_type[t].append(e)
        by_seed[e["seed"]].append(int(e["won"]))
        type_of_seed[str(e["seed"])] = t
    n = max(len(result.episodes), 1)
    return {
        "success_rate": sum(e["won"] for e in result.episodes) / n,
        "won_by_seed": {str(seed): won[0] if len(won) == 1 else sum(won) / len(won)
                        for seed, won in sorted(by_seed.items())},
        "task_type_by_seed": dict(sorted(type_of_seed.items(), key=lambda kv: int(kv[0]))),
        "mean_return": sum(e["return"] for e in result.episodes) / n,
        "episodes": len(result.episodes),
        "by_task_type": {
            t: {"success_rate": sum(e["won"] for e in es) / len(es), "episodes": len(es)}
            for t, es in sorted(by_type.items())
        },
    }


def paired_interval(before: dict[str, int], after: dict[str, int], *, level: float = 0.95,
                    resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean paired difference in success (after - before) over the rooms both evaluated, with a
    percentile-bootstrap `level` interval (rooms resampled with replacement; seeded).

    Args:
        before, after: room (env seed, as str) -> 1 if solved else 0, or the fraction of its sampled
            episodes solved (`won_by_seed` of two evaluations).

    Returns:
        (mean difference, lower bound, upper bound).
    """
    import numpy as np

    rooms = sorted(set(before) & set(after))
    if not rooms:
        raise ValueError("the two evaluations share no room")
    diff = np.array([after[r] - before[r] for r in rooms], dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(diff.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def run_eval(cfg: TrainConfig, rollout: Callable, *, episodes: int | None = None) -> dict:
    """Evaluate through a rollout service (`rollout(*, seeds, mode, group_size, planner_params, executor_params)`).

    Returns the greedy evaluation's `summarize` dict; with `env.eval_temperature` > 0 it also holds
    the sampled one under `SAMPLED` (plus its `temperature` and `samples` per task)."""
    mode = "flat" if cfg.algorithm.name in FLAT_ALGORITHMS else "macro"
    seeds = eval_seeds(cfg, episodes)
    planner, executor = eval_params(cfg)
    out = summarize(rollout(seeds=seeds, mode=mode, group_size=1, planner_params=planner, executor_params=executor))
    temperature = cfg.env.eval_temperature
    if temperature > 0:
        planner, executor = eval_params(cfg, temperature)
        sampled = rollout(seeds=seeds, mode=mode, group_size=cfg.env.eval_samples,
                          planner_params=planner, executor_params=executor)
        out[SAMPLED] = {**summarize(sampled), "temperature": temperature, "samples": cfg.env.eval_samples}
    return out


def find_policy_folder(checkpoint: str | Path) -> tuple[Path, Path | None]:
    """(policy model folder, run dir) for a run dir, a checkpoint dir or an HF model folder; a missing
    or unusable path raises RunStateError naming it."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise RunStateError(f"--checkpoint {checkpoint}: {'is not a directory' if path.exists() else 'does not exist'}")
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return _checked_model_folder(path), None
    run_dir = None
    if (path / "checkpoints").exists():
        run_dir, path = path, latest_checkpoint(path)
        if path is None:
            raise RunStateError(f"--checkpoint {checkpoint} holds no complete checkpoint")
    learner = path / "learner"
    for name in ("policy", "executor"):
        if (learner / name / "config.json").exists():
            return _checked_model_folder(learner / name), run_dir or path.parent.parent
    raise RunStateError(f"--checkpoint {checkpoint} is neither a run dir, a checkpoint dir nor an HF model folder")


def _checked_model_folder(path: Path) -> Path:
    """`path` if its config.json is an HF config and its model.safetensors is complete, else RunStateError."""
    try:
        config = json.loads((path / "config.json").read_text())
        problem = None if isinstance(config, dict) and "model_type" in config else "config.json is not an HF model config"
        problem = problem or safetensors_problem(path / "model.safetensors")
    except (OSError, ValueError) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem:
        raise RunStateError(f"{path} is not a usable model folder: {problem}")
    return path


def evaluate_checkpoint(checkpoint: str | Path, *, episodes: int, cfg: TrainConfig | None = None) -> dict:
    """Load a checkpoint's policy into vLLM and evaluate it on held-out seeds."""
    policy, run_dir = find_policy_folder(checkpoint)  # a bad path fails before vLLM is imported
    from himac_ray.engines.vlm_engine import vllm_generator
    from himac_ray.rollout_call import EpisodeSettings, RolloutCall

    if cfg is None:
        saved = run_dir / "config.json" if run_dir else None
        if not (saved and saved.exists()):
            raise RunStateError(f"no config.json next to {checkpoint}; pass --config")
        try:
            cfg = config_from_dict(json.loads(saved.read_text()))
        except (OSError, ValueError) as err:  # ConfigError is a ValueError too
            raise RunStateError(f"cannot use the run's config {saved}: {err}") from None
    gen = vllm_generator(policy, seed=cfg.run.seed, max_model_len=cfg.model.max_model_len, in_process=True,
                         kv_cache_gb=cfg.sampler.kv_cache_gb, dtype=cfg.model.dtype, threads=cfg.sampler.threads,
                         prefix_caching=cfg.sampler.prefix_caching)

    settings = EpisodeSettings.from_config(cfg)

    def rollout(**kw):
        return RolloutCall(settings=settings, **kw).run(generator=gen, env_id=cfg.env.id, env_kwargs=cfg.env.kwargs)

    out = run_eval(cfg, rollout, episodes=episodes)
    out["checkpoint"] = str(policy)
    return out
