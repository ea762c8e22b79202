"""Adaptive group size (`algorithm.group_size: auto`, beyond the HiMAC paper): groups that grow while
their members tie, start sizes that follow the groups' score spread, one env-step budget per iteration.

Pure Python, no Ray: `AdaptiveRollout` drives the same rollout service as the trainer's fixed-size
rollout (`rollout(*, seeds, mode, group_size, planner_params, executor_params, ...) -> RolloutResult`),
growing a group by rolling out more members on its seed under its group id (`group_ids`,
`first_member`). The rules, per level (macro blueprints, micro executions of z*, flat episodes):

- a task's group starts with the level's start size s (clipped so the iteration's first round fits);
- grow: while its members' scores (`algorithm.episode_score`) all tie (with `auto_group.grow: unsolved`:
  tie and none of them won) and it holds fewer than `auto_group.max` members, it doubles (adds
  min(n, max - n) members), one round at a time, as long as the round's worst case (new members x
  the env's max_steps) fits the iteration's env-step budget with the rounds still owed (the micro
  phase's first round) reserved;
- next iteration's s: halved (not below `auto_group.min`) when at least half of the level's groups
  were high-variance at size s (score std >= `auto_group.shrink_std`), doubled (not above the cap
  nor what the budget's first round allows) when more than half of them would have grown at size s.

In micro mode the macro groups finish growing before z* is picked (the best of all members, ties ->
the first sampled), so every micro group executes its own macro group's z*.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence

from himac_ray.advantage import member_scores
from himac_ray.config import AutoGroupConfig
from himac_ray.config_rules import ConfigError
from himac_ray.generation import SamplingParams
from himac_ray.rollout_result import ENV_STEPS, RolloutResult, best_blueprints, merge_results

MAJORITY = 0.5
"""fraction of a level's groups that moves its start size (see the module docstring)"""


def tied(scores: Sequence[float]) -> bool:
    """Whether a group carries no relative signal: fewer than 2 members or all scores equal."""
    return len(set(scores)) < 2


def wants_growth(scores: Sequence[float], won: bool, grow: str) -> bool:
    """Whether a group should grow under `auto_group.grow`: "tied" -> its scores tie; "unsolved" -> they tie
    and no member won (`won`: whether any did)."""
    return tied(scores) and (grow == "tied" or not won)


def next_start(start: int, first_scores: Sequence[Sequence[float]], first_growing: Sequence[bool], *,
               auto: AutoGroupConfig, fit: int) -> int:
    """The level's start size for the next iteration from its groups' scores at size `start`.

    Args:
        start: this iteration's start size.
        first_scores: one list per group, its members' scores after the first round.
        first_growing: one flag per group (same order): whether it wanted to grow after the first round
            (`wants_growth`).
        auto: `algorithm.auto_group`.
        fit: the largest start the next iteration's first round can afford (the budget).
    """
    if not first_scores:
        return start
    high = sum(len(s) > 1 and statistics.stdev(s) >= auto.shrink_std for s in first_scores)
    ties = sum(first_growing)
    if high >= MAJORITY * len(first_scores):
        return max(auto.min, start // 2)
    if ties > MAJORITY * len(first_scores):
        return max(min(auto.max, fit, 2 * start), auto.min)
    return start


class AdaptiveRollout:
    """One iteration's rollouts with adaptive group sizes, within `budget` env steps.

    Args:
        rollout: the rollout service.
        mode: the phase's rollout mode: "macro", "micro" (macro groups, z*, micro groups) or "flat".
        planner_params, executor_params: the phase's sampling (micro mode scores blueprints greedily).
        starts: level ("macro" | "micro" | "flat") -> start size this iteration (`auto.start` when absent).
        auto: `algorithm.auto_group`.
        episode_score: `algorithm.episode_score`.
        num_groups: tasks of the iteration's own first round (`algorithm.num_groups`).
        step_cap: the env's max_steps: the most env steps one member can take.
        budget: env steps this iteration may take (`auto_group.env_steps`; 0 = levels x num_groups x
            max x step_cap).
    """

    def __init__(self, *, rollout: Callable[..., RolloutResult], mode: str, planner_params: SamplingParams,
                 executor_params: SamplingParams, starts: dict[str, int], auto: AutoGroupConfig, episode_score: str,
                 num_groups: int, step_cap: int, budget: int):
        self.rollout, self.mode = rollout, mode
        self.planner_params, self.executor_params = planner_params, executor_params
        self.levels = ("macro", "micro") if mode == "micro" else (mode,)
        self.auto, self.episode_score, self.step_cap = auto, episode_score, step_cap
        self.budget = budget or len(self.levels) * num_groups * auto.max * step_cap
        self.fit = self.budget // (len(self.levels) * num_groups * step_cap)
        """the largest start size whose first round of num_groups groups, every level, fits the budget"""
        if self.fit < auto.min:
            raise ConfigError(
                f"algorithm.auto_group.env_steps={budget} cannot cover one round of {num_groups} groups of "
                f"{auto.min} members per level ({len(self.levels)} level(s), up to {step_cap} env steps each): "
                f"it needs at least {len(self.levels) * num_groups * auto.min * step_cap}")
        self.starts = {level: max(auto.min, min(starts.get(level, auto.start), self.fit)) for level in self.levels}
        self.spent = 0
        """env steps taken so far this iteration"""
        self.first_scores: dict[str, list[list[float]]] = {level: [] for level in self.levels}
        self.first_growing: dict[str, list[bool]] = {level: [] for level in self.levels}
        """level -> per group, whether it wanted to grow after its first round (`wants_growth`)"""
        self.sizes: dict[str, list[int]] = {level: [] for level in self.levels}
        """level -> members launched per group (failed members included)"""

    def affordable(self, count: int) -> int:
        """How many of `count` more tasks (dynamic sampling's extra groups) fit the budget at worst."""
        per_task = sum(self.starts.values()) * self.step_cap
        return max(0, min(count, (self.budget - self.spent) // per_task))

    def next_starts(self) -> dict[str, int]:
        """level -> start size of the next iteration (`next_start`)."""
        return {level: next_start(self.starts[level], self.first_scores[level], self.first_growing[level],
                                  auto=self.auto, fit=self.fit) for level in self.levels}

    def roll(self, seeds: list[int]) -> RolloutResult:
        """Every level's groups of `seeds`, grown as the rules allow; the caller checked `affordable`."""
        if self.mode != "micro":
            return self._level(seeds, self.mode, self.executor_params, reserve=0)
        # the macro phase scores blueprints greedily and owes the micro phase its first round
        macro = self._level(seeds, "macro", dataclasses.replace(self.executor_params, temperature=0.0),
                            reserve=len(seeds) * self.starts["micro"] * self.step_cap)
        best = best_blueprints(macro.episodes, self.episode_score)
        micro = self._level(seeds, "micro", self.executor_params, reserve=0,
                            blueprints={int(s): best.get(int(s), []) for s in seeds})
        micro.pre = macro
        return micro

    def _call(self, seeds, mode, size, executor_params, **kw) -> RolloutResult:
        res = self.rollout(seeds=seeds, mode=mode, group_size=size, planner_params=self.planner_params,
                           executor_params=executor_params, **kw)
        self.spent += int(res.metrics.get(ENV_STEPS, 0))
        return res

    def _level(self, seeds, mode, executor_params, *, reserve: int, **kw) -> RolloutResult:
        """First round at the level's start size, then growth rounds while groups that want growth fit."""
        start, cap = self.starts[mode], self.auto.max
        results = [self._call(seeds, mode, start, executor_params, **kw)]
        episodes = list(results[0].episodes)
        seed_of = {e["group_id"]: int(e["seed"]) for e in episodes}
        launched = dict.fromkeys(seed_of, start)
        won = {e["group_id"] for e in episodes if e["won"]}
        first = member_scores(episodes, episode_score=self.episode_score)
        self.first_scores[mode] += first.values()
        self.first_growing[mode] += [wants_growth(first[g], g in won, self.auto.grow) for g in first]
        grew = True
        while grew:
            grew = False
            scores = member_scores(episodes, episode_score=self.episode_score)
            won = {e["group_id"] for e in episodes if e["won"]}
            growing = [g for g in launched if wants_growth(scores[g], g in won, self.auto.grow) and launched[g] < cap]
            for size in sorted({launched[g] for g in growing}):
                add = min(size, cap - size)
                affordable = (self.budget - self.spent - reserve) // (add * self.step_cap)
                batch = [g for g in growing if launched[g] == size][:max(affordable, 0)]
                if not batch:
                    continue
                res = self._call([seed_of[g] for g in batch], mode, add, executor_params,
                                 group_ids={seed_of[g]: g for g in batch}, first_member=size, **kw)
                results.append(res)
                episodes += res.episodes
                for g in batch:
                    launched[g] += add
                grew = True
        self.sizes[mode] += launched.values()
        merged = merge_results(results)
        if mode == "macro":  # z* over every member of the grown groups
            merged.blueprints = best_blueprints(merged.episodes, self.episode_score)
        return merged
