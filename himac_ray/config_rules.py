"""The rules a config must satisfy: allowed values, ranges and cross-field checks.

`validate(cfg)` runs when a `TrainConfig` is built (`config.TrainConfig.__post_init__`) and raises a
`ConfigError` naming the key, its value and what is allowed. `tools/config_docs.py` renders the
same tables into docs/configuration.md. No Ray here; imports nothing of himac_ray at module level
(the env registry and the trackers are looked up inside `validate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from himac_ray.names import ALGORITHMS, FLAT_ALGORITHMS, GROUP_GROWTH, LEVEL_MOMENTS, ROLES, STEP_WEIGHTINGS

if TYPE_CHECKING:
    from himac_ray.config import TrainConfig


class ConfigError(ValueError):
    """A config value or key is not acceptable; the message says which and what is allowed."""


CHOICES = {
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "rollout.prompt_style": ("verl", "compact"),
    "rollout.answer_format": ("think", "action"),
    "algorithm.name": ALGORITHMS,
    "algorithm.loss_aggregation": ("token-mean", "seq-mean-token-mean"),
    "algorithm.episode_score": ("return", "won"),
    "algorithm.auto_group.grow": GROUP_GROWTH,
    "algorithm.step_weighting": STEP_WEIGHTINGS,
    "learner.zero_stage": (2, 3),
    "learner.backend": ("auto", "gloo", "nccl"),
    "learner.level_moments": LEVEL_MOMENTS,
    "learner.weight_sync": ("auto", "shm_object_store", "nccl"),
    "sampler.placement_strategy": ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"),
    "learner.placement_strategy": ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"),
    "coevolution.start_with": ROLES,
    "coevolution.iteration": ("alternate", "paper"),
    "run.wandb_mode": ("offline", "online", "disabled"),
    "run.pipeline": ("sync", "async"),
}
POSITIVE = (
    "model.max_model_len", "algorithm.num_groups", "rollout.max_subgoals",
    "rollout.plan_max_tokens", "rollout.action_max_tokens", "rollout.num_env_pools", "sampler.num_engines",
    "sampler.tensor_parallel_size", "learner.num_ranks", "learner.micro_batch_size",
    "learner.mini_batches", "learner.ppo_epochs", "learner.max_len", "learner.sync_bucket_mb",
    "run.checkpoint_every", "run.keep_checkpoints", "sft.episodes", "sft.batch_size", "env.eval_episodes",
    "env.eval_samples",
)
NON_NEGATIVE = (
    "algorithm.min_informative_groups", "algorithm.max_extra_groups", "sampler.threads",
    "algorithm.eps", "algorithm.kl_coef", "algorithm.entropy_coef", "algorithm.clip_coef",
    "learner.train_layers", "learner.torch_threads", "sft.train_layers",
    "rollout.history_length", "rollout.planner_temperature", "rollout.executor_temperature",
    "rollout.scoring_temperature", "sampler.cpus_per_engine", "sampler.gpus_per_engine",
    "sampler.kv_cache_gb", "learner.cpus_per_rank", "learner.gpus_per_rank", "learner.lr",
    "learner.weight_decay", "learner.grad_clip", "learner.warmup_steps", "coevolution.planner_iters",
    "coevolution.executor_iters", "coevolution.executor_warmup", "run.eval_every", "sft.epochs", "sft.lr",
    "run.seed", "sampler.seed", "sft.seed", "sft.seed_start", "env.train_seed_start", "env.train_pool",
    "env.eval_seed_start",
    "env.eval_temperature", "sft.plan_episodes", "run.iterations",
    "run.max_restarts", "run.max_learner_restarts", "run.rollout_timeout_s", "run.generate_timeout_s",
    "run.learner_timeout_s", "run.sync_timeout_s", "run.max_staleness", "algorithm.tis_cap",
)
MAX_LORA_RANK = 512
"""the largest adapter rank vLLM serves (`max_lora_rank` choices end at 512)"""


def _get(cfg: TrainConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: TrainConfig) -> None:
    """Check allowed values and cross-field rules; raise ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not allowed; choose one of {list(allowed)}")
    for key in POSITIVE:
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key}={_get(cfg, key)!r} must be >= 1")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}={_get(cfg, key)!r} must be >= 0")
    for key in ("algorithm.clip_coef_high", "learner.planner_lr"):
        value = _get(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{key}={value!r} must be >= 0 or null")
    env = cfg.env
    if env.train_pool and (env.train_seed_start < env.eval_seed_start + env.eval_episodes
                           and env.eval_seed_start < env.train_seed_start + env.train_pool):
        raise ConfigError(f"env.train_pool={env.train_pool} from env.train_seed_start={env.train_seed_start} overlaps "
                          f"the held-out seeds {env.eval_seed_start}..{env.eval_seed_start + env.eval_episodes - 1}: "
                          "training tasks must stay disjoint from the evaluation's")
    if not 0 < cfg.algorithm.gamma <= 1:
        raise ConfigError(f"algorithm.gamma={cfg.algorithm.gamma!r} must be in (0, 1]")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p={cfg.rollout.top_p!r} must be in (0, 1]")
    if not 0 < cfg.sampler.gpu_memory_utilization <= 1:
        raise ConfigError(f"sampler.gpu_memory_utilization={cfg.sampler.gpu_memory_utilization!r} must be in (0, 1]")
    if not 0 < cfg.rollout.sub_done_threshold < 1:
        raise ConfigError(f"rollout.sub_done_threshold={cfg.rollout.sub_done_threshold!r} must be in (0, 1)")
    if cfg.rollout.subgoal_step_budget is not None and cfg.rollout.subgoal_step_budget < 1:
        raise ConfigError(f"rollout.subgoal_step_budget={cfg.rollout.subgoal_step_budget!r} must be >= 1 or null")
    if cfg.learner.weight_sync == "nccl" and (cfg.learner.gpus_per_rank < 1 or cfg.sampler.gpus_per_engine < 1):
        raise ConfigError(
            f"learner.weight_sync='nccl' needs whole GPUs on both sides (learner.gpus_per_rank="
            f"{cfg.learner.gpus_per_rank}, sampler.gpus_per_engine={cfg.sampler.gpus_per_engine}): NCCL cannot "
            "run without GPUs nor put two ranks on one GPU; use auto or shm_object_store")
    if 0 < cfg.algorithm.tis_cap < 1:
        raise ConfigError(f"algorithm.tis_cap={cfg.algorithm.tis_cap!r} must be 0 (off) or >= 1: a cap below 1 "
                          "would shrink every on-policy token's gradient")
    if cfg.coevolution.planner_iters + cfg.coevolution.executor_iters < 1:
        raise ConfigError("coevolution.planner_iters + coevolution.executor_iters must be >= 1")
    _validate_group_sizes(cfg.algorithm)
    _validate_lora(cfg)
    from himac_ray import trackers

    for name in cfg.run.loggers:
        if name not in trackers.LOGGERS:
            raise ConfigError(f"run.loggers: {name!r} is not a logger; choose from {list(trackers.LOGGERS)}")
        if (missing := trackers.missing_package(name)) is not None:
            raise ConfigError(f"run.loggers: {missing}")
    from himac_ray.envs import ENV_IDS

    if cfg.env.id not in ENV_IDS:
        raise ConfigError(f"env.id={cfg.env.id!r} is not a himac-ray env; choose one of {sorted(ENV_IDS)}")


def _validate_group_sizes(a) -> None:
    """`algorithm.group_size` (an int >= 2 or auto), the level sizes and `algorithm.auto_group`."""
    if isinstance(a.group_size, str):
        if a.group_size != "auto":
            raise ConfigError(f"algorithm.group_size={a.group_size!r} must be an integer >= 2 or 'auto'")
        for key in ("planner_group_size", "executor_group_size"):
            if getattr(a, key) is not None:
                raise ConfigError(f"algorithm.{key}={getattr(a, key)!r} must be null with algorithm.group_size=auto "
                                  "(auto sizes every level's groups)")
    elif a.group_size < 2:  # every algorithm (himac, grpo, gigpo, rloo) compares within groups
        raise ConfigError(f"algorithm.group_size={a.group_size} must be >= 2 for algorithm.name="
                          f"{a.name!r}: groups of one have no relative advantage")
    for key in ("planner_group_size", "executor_group_size"):
        if getattr(a, key) is not None and getattr(a, key) < 2:
            raise ConfigError(f"algorithm.{key}={getattr(a, key)!r} must be >= 2 or null: groups of one have no "
                              "relative advantage")
    g = a.auto_group
    if not 2 <= g.min <= g.start <= g.max:
        raise ConfigError(f"algorithm.auto_group: need 2 <= min <= start <= max, got min={g.min}, start={g.start}, "
                          f"max={g.max}")
    if g.shrink_std <= 0:
        raise ConfigError(f"algorithm.auto_group.shrink_std={g.shrink_std!r} must be > 0")
    if g.env_steps < 0:
        raise ConfigError(f"algorithm.auto_group.env_steps={g.env_steps!r} must be >= 0 (0 = the worst case of a "
                          "fixed-size iteration at the cap)")


def _validate_lora(cfg: TrainConfig) -> None:
    """`learner.lora`: ranges, the peft package, and the modes adapters do not combine with."""
    lora = cfg.learner.lora
    if lora.rank is None or lora.rank == 0:
        return
    if not 1 <= lora.rank <= MAX_LORA_RANK:
        raise ConfigError(f"learner.lora.rank={lora.rank!r} must be in [1, {MAX_LORA_RANK}] (vLLM's largest "
                          "max_lora_rank), or 0 / null for full fine-tuning")
    if not lora.alpha > 0:
        raise ConfigError(f"learner.lora.alpha={lora.alpha!r} must be > 0")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"learner.lora.dropout={lora.dropout!r} must be in [0, 1)")
    if not lora.target_modules:
        raise ConfigError("learner.lora.target_modules is empty: name the projections that get an adapter")
    from himac_ray.lora import missing_peft

    if (missing := missing_peft()) is not None:
        raise ConfigError(f"learner.lora: {missing}")
    if cfg.learner.train_layers:
        raise ConfigError(f"learner.train_layers={cfg.learner.train_layers} and learner.lora.rank={lora.rank} "
                          "both choose what trains: with LoRA only the adapters do; set learner.train_layers=0")
    if cfg.learner.weight_sync == "nccl":
        raise ConfigError("learner.weight_sync='nccl' with learner.lora: only the adapters are synced (a few MB), "
                          "through shared memory or the object store; use auto or shm_object_store")
    if lora.per_level:
        # two adapters on one module: each needs its own optimizer (its Adam moments must not move
        # while the other level trains), i.e. two DeepSpeed engines over one module, which ZeRO-3's
        # parameter partitioning cannot share
        why = None
        if cfg.model.planner_path is not None:
            why = "model.planner_path is set: two models already train apart (each gets its own adapter)"
        elif cfg.algorithm.name in FLAT_ALGORITHMS:
            why = f"algorithm.name={cfg.algorithm.name!r} is flat: it has no planner level"
        elif not cfg.coevolution.enabled:
            why = "coevolution.enabled=false trains both levels in one joint step of one shared policy"
        elif cfg.learner.zero_stage != 2:
            why = "learner.zero_stage=3 cannot share one module between the two adapters' engines; use 2"
        if why is not None:
            raise ConfigError(f"learner.lora.per_level=true does not apply: {why}")
