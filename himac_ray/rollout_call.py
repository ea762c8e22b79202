"""The typed rollout call: what one `rollout.run_rollout` call is asked to do, without its engines
and its env. No Ray, no torch.

`EpisodeSettings` holds the arguments a run's config fixes for every rollout of the run;
`EpisodeSettings.from_config` is the one place they are read from a `TrainConfig`. `RolloutCall`
adds what one call asks for (seeds, mode, group size, sampling, ...). Both are frozen and
picklable: the Ray rollout service hands each env pool a `RolloutCall` of its seed slice
(`actors/env_pool.py`), and `RolloutCall.run` runs one in-process with the generators and env
given there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from himac_ray import prompts
from himac_ray.generation import Generator, SamplingParams
from himac_ray.rollout import EXECUTOR_PARAMS, PLANNER_PARAMS, run_rollout
from himac_ray.rollout_result import RolloutResult

if TYPE_CHECKING:
    from himac_ray.config import TrainConfig


@dataclass(frozen=True)
class EpisodeSettings:
    """The `run_rollout` arguments a config fixes for every rollout of a run (defaults: those of
    `run_rollout`)."""

    max_subgoals: int = 4
    """K, the most subgoals a blueprint may hold (`rollout.max_subgoals`)"""
    subgoal_step_budget: int | None = None
    """steps per subgoal before advancing without `<sub_done>`; None -> ceil(max_steps / len(blueprint))"""
    history_length: int = 2
    """past steps shown in each executor / flat prompt"""
    invalid_penalty: float = -0.1
    """added to the reward of an invalid action or blueprint (`algorithm.invalid_penalty`)"""
    prompt_format: prompts.PromptFormat = prompts.VERL
    """prompt style and answer format (`rollout.prompt_style`, `rollout.answer_format`, `rollout.sub_done`)"""
    episode_score: str = "return"
    """what makes a blueprint best for z* (`algorithm.episode_score`)"""

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> EpisodeSettings:
        """The settings of `cfg`'s run (`rollout` and `algorithm` sections)."""
        r = cfg.rollout
        return cls(max_subgoals=r.max_subgoals, subgoal_step_budget=r.subgoal_step_budget,
                   history_length=r.history_length, invalid_penalty=cfg.algorithm.invalid_penalty,
                   prompt_format=r.prompt_format, episode_score=cfg.algorithm.episode_score)

    def kwargs(self) -> dict[str, Any]:
        """These settings as `run_rollout` keyword arguments (not `dataclasses.asdict`, which would
        turn `prompt_format` into a dict)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class RolloutCall:
    """One `run_rollout` call minus the generators, the env and the callbacks; the fields are the
    `run_rollout` arguments of the same names (see there)."""

    seeds: Sequence[int]
    mode: str
    group_size: int
    planner_params: SamplingParams = PLANNER_PARAMS
    executor_params: SamplingParams = EXECUTOR_PARAMS
    plan_group_size: int | None = None
    blueprints: dict[int, list[str]] | None = None
    group_ids: dict[int, str] | None = None
    first_member: int = 0
    settings: EpisodeSettings = field(default_factory=EpisodeSettings)

    def with_seeds(self, seeds: Sequence[int]) -> RolloutCall:
        """The same call over `seeds` (an env pool's slice)."""
        return dataclasses.replace(self, seeds=seeds)

    def run(self, *, generator: Generator, env_id: str, env_kwargs: dict | None = None,
            planner_generator: Generator | None = None, env_factory: Callable[..., Any] | None = None,
            progress: Callable[[dict], None] | None = None) -> RolloutResult:
        """`run_rollout` of this call, in this process."""
        return run_rollout(
            generator=generator, planner_generator=planner_generator, env_id=env_id, env_kwargs=env_kwargs,
            env_factory=env_factory, progress=progress, seeds=self.seeds, mode=self.mode,
            group_size=self.group_size, planner_params=self.planner_params, executor_params=self.executor_params,
            plan_group_size=self.plan_group_size, blueprints=self.blueprints, group_ids=self.group_ids,
            first_member=self.first_member, **self.settings.kwargs(),
        )
