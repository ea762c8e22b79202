"""What the warm-start diagnostics in this folder share: the learning bench's full-size HiMAC config (plus any
`key=value` overrides on the command line), its cached warm start (or a model directory given on the command line),
an in-process vLLM engine on it, the run's rollout arguments, a room's expert plan and per-room outcomes.
Command line of every diagnostic: `[MODEL_DIR] [key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.learning_bench import SIZES, make_cfg, warm_start  # noqa: E402  (after the path insert)


def cli_model_dirs_and_overrides() -> tuple[list[str], list[str]]:
    """(model directories, `key=value` overrides) on the command line; an argument that is an existing directory
    is a model directory even if its name holds "=" (learning-bench run directories do). Exits with a message on
    an argument that is neither."""
    dirs = [a for a in sys.argv[1:] if Path(a).is_dir()]
    overrides = [a for a in sys.argv[1:] if a not in dirs and "=" in a]
    unknown = [a for a in sys.argv[1:] if a not in dirs and a not in overrides]
    if unknown:
        sys.exit(f"not a directory and not a key=value override: {' '.join(unknown)}")
    return dirs, overrides


def diag_model_and_config(name: str):
    """(model directory, TrainConfig) for a diagnostic called `name` (its run dir is /tmp/himac-<name>): the full
    recipe plus the command line's `key=value` overrides; the first model directory given, else the warm start."""
    dirs, overrides = cli_model_dirs_and_overrides()
    spec = dict(SIZES["full"], overrides=(*SIZES["full"]["overrides"], *overrides))
    model = dirs[0] if dirs else warm_start("himac", spec)
    print("model", model, "overrides", overrides, flush=True)
    return model, make_cfg(Path(f"/tmp/himac-{name}"), algo="himac", seed=0, spec=spec)


def diag_generator(model: str, cfg):
    """The recipe's vLLM engine on `model`, in this process."""
    from himac_ray.engines.vlm_engine import vllm_generator

    return vllm_generator(model, seed=0, max_model_len=cfg.model.max_model_len, in_process=True,
                          kv_cache_gb=cfg.sampler.kv_cache_gb, dtype=cfg.model.dtype, threads=cfg.sampler.threads,
                          prefix_caching=cfg.sampler.prefix_caching)


def diag_rollout_setup(name: str, rooms: int = 64):
    """(config, `run_rollout` arguments every rollout of the diagnostic shares — engine, env, held-out room seeds,
    the run's episode settings —, greedy planner params, greedy executor params) of a rollout diagnostic."""
    from himac_ray.evaluate import eval_params, eval_seeds
    from himac_ray.rollout_call import EpisodeSettings

    model, cfg = diag_model_and_config(name)
    planner, executor = eval_params(cfg)
    common = dict(generator=diag_generator(model, cfg), env_id=cfg.env.id, env_kwargs=cfg.env.kwargs,
                  seeds=eval_seeds(cfg, rooms), **EpisodeSettings.from_config(cfg).kwargs())
    return cfg, common, planner, executor


def expert_plan(env_cfg, seed: int) -> tuple[str, list[str], list[str]]:
    """(first observation, expert subgoals, expert actions) of room `seed` of the env `env_cfg` (a config's `env`)."""
    import gymnasium as gym

    import himac_ray.envs  # noqa: F401  (registers the env ids)

    env = gym.make(env_cfg.id, **env_cfg.kwargs)
    try:
        obs, _ = env.reset(seed=int(seed))
        return obs, list(env.unwrapped.expert_subgoals()), list(env.unwrapped.expert_actions())
    finally:
        env.close()


def room_outcomes(result) -> dict:
    """Per-room outcome of a rollout with one or more episodes per room: mean success, `any` (rooms won by at
    least one episode: pass@k), `mixed` (rooms with both outcomes) as fractions of rooms, and `won` (room seed ->
    1 if any episode won)."""
    rooms: dict[int, list] = {}
    for e in result.episodes:
        rooms.setdefault(int(e["seed"]), []).append(int(e["won"]))
    n = max(len(rooms), 1)
    return dict(success=sum(map(sum, rooms.values())) / max(sum(map(len, rooms.values())), 1),
                any=sum(max(v) for v in rooms.values()) / n,
                mixed=sum(max(v) != min(v) for v in rooms.values()) / n,
                won={s: max(v) for s, v in sorted(rooms.items())})
