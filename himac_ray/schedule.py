"""What iteration i rolls out: the co-evolution schedule as a rollout mode, the env seeds of its tasks
(and of dynamic sampling's extra tasks), and its sampling parameters. Pure functions of the config
and the iteration, so a resumed run sees the same tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from himac_ray.coevolution import trainable_level
from himac_ray.config import TrainConfig
from himac_ray.generation import SamplingParams
from himac_ray.names import FLAT_ALGORITHMS
from himac_ray.prompts import ACTION_CLOSE, PLAN_CLOSE, SUB_DONE


@dataclass(frozen=True)
class Phase:
    """What iteration i does."""

    trainable: str | None
    """planner | executor | None (both levels: co-evolution disabled)"""
    mode: str
    """rollout mode: macro | micro | flat"""


def phase_of(cfg: TrainConfig, iteration: int) -> Phase:
    """The co-evolution schedule turned into a rollout mode (docs/algorithm.md)."""
    if cfg.algorithm.name in FLAT_ALGORITHMS:
        return Phase("executor", "flat")
    co = cfg.coevolution
    if not co.enabled:  # both levels train on one rollout of both phases (greedy scoring, z* kept)
        return Phase(None, "micro")
    level = trainable_level(
        iteration, algorithm=cfg.algorithm.name, planner_iters=co.planner_iters,
        executor_iters=co.executor_iters, executor_warmup=co.executor_warmup, start_with=co.start_with,
    )
    # both phases on the same tasks (paper) = a micro rollout with its macro pre-pass
    return Phase(level, "micro" if both_phases(cfg) or level == "executor" else "macro")


def both_phases(cfg: TrainConfig) -> bool:
    """Whether a HiMAC iteration keeps its macro phase (`coevolution.iteration: paper`, or co-evolution
    off): the micro rollout's pre-pass is then the macro phase proper, its records trained or
    written, not dropped."""
    co = cfg.coevolution
    return cfg.algorithm.name not in FLAT_ALGORITHMS and (co.iteration == "paper" or not co.enabled)


EXTRA_SEED_OFFSET = 10_000_000
"""extra groups (dynamic sampling) draw env seeds from train_seed_start + this + a cursor kept in
the checkpoint, disjoint from the iterations' own seeds"""


def iteration_seeds(cfg: TrainConfig, iteration: int) -> list[int]:
    """Env seeds of iteration i: a fixed function of i, so resumed runs see the same tasks."""
    first = iteration * cfg.algorithm.num_groups
    return [_pool_seed(cfg, first + j) for j in range(cfg.algorithm.num_groups)]


def extra_seeds(cfg: TrainConfig, cursor: int, count: int) -> list[int]:
    """Env seeds of the next `count` extra groups, from `cursor` extra groups drawn so far: fresh
    seeds past EXTRA_SEED_OFFSET, or with `env.train_pool` the pool's tasks from the cursor on."""
    if cfg.env.train_pool:
        return [_pool_seed(cfg, cursor + k) for k in range(count)]
    start = cfg.env.train_seed_start + EXTRA_SEED_OFFSET + cursor
    return list(range(start, start + count))


def _pool_seed(cfg: TrainConfig, index: int) -> int:
    """The env seed of the index-th training task drawn (cycling over `env.train_pool` tasks if set)."""
    pool = cfg.env.train_pool
    return cfg.env.train_seed_start + (index % pool if pool else index)


def sampling_params(cfg: TrainConfig, phase: Phase) -> tuple[SamplingParams, SamplingParams]:
    """(planner, executor) sampling for a phase; blueprints are scored by a greedy executor."""
    r = cfg.rollout
    scoring = phase.mode == "macro" and phase.trainable == "planner"
    return (planner_params(cfg, r.planner_temperature),
            executor_params(cfg, r.scoring_temperature if scoring else r.executor_temperature))


def planner_params(cfg: TrainConfig, temperature: float) -> SamplingParams:
    """Blueprint sampling at `temperature` (0 = greedy), ending at `</plan>`."""
    r = cfg.rollout
    return SamplingParams(temperature=temperature, top_p=r.top_p, max_tokens=r.plan_max_tokens, stop=(PLAN_CLOSE,))


def executor_params(cfg: TrainConfig, temperature: float) -> SamplingParams:
    """Executor (or flat agent) sampling at `temperature`, ending at `<sub_done>`; a greedy
    hierarchical executor says `<sub_done>` above `rollout.sub_done_threshold` t (a logit bias of
    ln((1 - t) / t) on its first token after `</action>`: taken iff P(sub_done) / (P(sub_done) +
    P(end)) > t)."""
    r = cfg.rollout
    t = r.sub_done_threshold
    biased = temperature == 0 and t != 0.5 and r.sub_done and cfg.algorithm.name not in FLAT_ALGORITHMS
    bias = ((ACTION_CLOSE, SUB_DONE, math.log((1 - t) / t)),) if biased else ()
    return SamplingParams(temperature=temperature, top_p=r.top_p, max_tokens=r.action_max_tokens, stop=(SUB_DONE,),
                          token_bias=bias)
