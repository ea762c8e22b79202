"""What a rollout returns: `RolloutResult`, its metric keys, and how finished episodes and several
results (env pools' seed slices, extra groups) become one. No Ray, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from himac_ray.data import Record
from himac_ray.names import ENV_POOL_RESTARTS, EPISODES_FAILED, SAMPLER_RESTARTS

# Metric keys (RolloutResult.metrics).
SUCCESS_RATE = "success_rate"
MEAN_RETURN = "mean_return"
MEAN_STEPS = "mean_steps"
INVALID_ACTION_RATE = "invalid_action_rate"
PLAN_FALLBACK_RATE = "plan_fallback_rate"
PLAN_INVALID_RATE = "plan_invalid_rate"
MEAN_RESPONSE_LEN = "mean_response_len"
MEAN_NUM_SUBGOALS = "mean_num_subgoals"
SUB_DONE_ADVANCES = "sub_done_advances"
BUDGET_ADVANCES = "budget_advances"
NUM_EPISODES = "episodes"
ENV_STEPS = "env_steps"
GEN_TOKENS = "gen_tokens"
GEN_CALLS = "gen_calls"
GEN_SECONDS = "gen_seconds"
ENV_SECONDS = "env_seconds"
# EPISODES_FAILED, ENV_POOL_RESTARTS, SAMPLER_RESTARTS: the fault counters (himac_ray.names)


@dataclass
class RolloutResult:
    """What `run_rollout` returns."""

    records: list[Record]
    """plan records first (macro), then act records, each episode's in step order"""
    episodes: list[dict]
    """one summary per episode: seed, group_id, traj_id, won, return, steps, plan_valid,
    plan_fallback, subgoals, num_subgoals, subgoals_reached"""
    metrics: dict[str, float]
    """see the metric-key constants of this module"""
    blueprints: dict[int, list[str]] = field(default_factory=dict)
    """seed -> the best blueprint of its group (macro) or the blueprint executed (micro)"""
    pre: RolloutResult | None = None
    """micro mode without `blueprints`: the macro rollout that chose them (its records and
    metrics are not part of this result's)"""
    failed: list[dict] = field(default_factory=list)
    """episodes whose env raised: seed, group_id, traj_id, error (not in `records` / `episodes`)"""


def summarize_groups(groups: list[list], mode: str, stats: dict, episode_score: str = "return") -> RolloutResult:
    """A `RolloutResult` from finished groups of `rollout.Episode`s (failed episodes set apart),
    with the best blueprint of each group by `episode_score` (ties -> first)."""
    failed = [{"seed": e.seed, "group_id": e.group_id, "traj_id": e.traj_id, "error": e.error}
              for g in groups for e in g if e.error is not None]
    groups = [[e for e in g if e.error is None] for g in groups]
    episodes = [e for g in groups for e in g]
    records = [r for e in episodes for r in e.records if r.level == "plan"]
    records += [r for e in episodes for r in e.records if r.level == "act"]
    summaries = [
        {
            "seed": e.seed, "group_id": e.group_id, "traj_id": e.traj_id, "won": e.won, "return": e.ret,
            "steps": e.steps, "plan_valid": e.plan_valid, "plan_fallback": e.plan_fallback,
            "subgoals": list(e.subgoals or []), "num_subgoals": len(e.subgoals or []),
            "subgoals_reached": e.subgoal_index + 1 if e.subgoals else 0,
        }
        for e in episodes
    ]
    blueprints = best_blueprints(summaries, episode_score) if mode != "flat" else {}
    acts = [r for r in records if r.level == "act"]
    plans = [e for e in episodes if mode == "macro"]
    n = max(len(episodes), 1)
    metrics = {
        SUCCESS_RATE: sum(e.won for e in episodes) / n,
        MEAN_RETURN: sum(e.ret for e in episodes) / n,
        MEAN_STEPS: sum(e.steps for e in episodes) / n,
        INVALID_ACTION_RATE: sum(not r.valid for r in acts) / max(len(acts), 1),
        PLAN_FALLBACK_RATE: sum(e.plan_fallback for e in plans) / max(len(plans), 1),
        PLAN_INVALID_RATE: sum(not e.plan_valid for e in plans) / max(len(plans), 1),
        MEAN_RESPONSE_LEN: sum(len(r.response_ids) for r in records) / max(len(records), 1),
        MEAN_NUM_SUBGOALS: sum(len(e.subgoals or []) for e in episodes) / n,
        NUM_EPISODES: len(episodes),
        ENV_STEPS: sum(e.steps for e in episodes),
        GEN_TOKENS: sum(len(r.response_ids) for r in records),
        **{k: stats[k] for k in (GEN_CALLS, GEN_SECONDS, ENV_SECONDS, SUB_DONE_ADVANCES, BUDGET_ADVANCES,
                                 EPISODES_FAILED)},
    }
    return RolloutResult(records=records, episodes=summaries, metrics=metrics, blueprints=blueprints, failed=failed)


def best_blueprints(episodes: Sequence[dict], episode_score: str = "return") -> dict[int, list[str]]:
    """seed -> the blueprint of its group's best episode by `episode_score` ("won": success first, then
    return); ties -> the first in `episodes` order (the first sampled). A group none of whose members
    finished (every env failed) has no entry: micro mode then falls back to the default blueprint.

    Args:
        episodes: `RolloutResult.episodes` summaries (seed, won, return, subgoals), members of a group
            in the order they were sampled.
    """
    best: dict[int, tuple] = {}
    for j, e in enumerate(episodes):
        key = (float(e["won"]), float(e["return"])) if episode_score == "won" else (float(e["return"]),)
        if e["seed"] not in best or key > best[e["seed"]][0]:
            best[e["seed"]] = (key, j)
    return {seed: list(episodes[j]["subgoals"]) for seed, (_, j) in best.items()}


def merge_results(results: Sequence[RolloutResult]) -> RolloutResult:
    """One `RolloutResult` from several disjoint ones (e.g. env pools' seed slices).

    Counts and timings add up; rates are re-weighted by what they count (episodes, act
    records, plan records), so the merge equals one rollout over all the seeds.
    """
    results = [r for r in results if r is not None]
    if len(results) == 1:
        return results[0]
    records = [r for res in results for r in res.records if r.level == "plan"]
    records += [r for res in results for r in res.records if r.level == "act"]
    episodes = [e for res in results for e in res.episodes]

    def weighted(key: str, weight) -> float:
        total = sum(weight(res) for res in results)
        return sum(res.metrics.get(key, 0.0) * weight(res) for res in results) / max(total, 1)

    def n_eps(res):
        return res.metrics.get(NUM_EPISODES, len(res.episodes))

    def n_acts(res):
        return sum(r.level == "act" for r in res.records)

    def n_plans(res):
        return sum(r.level == "plan" for r in res.records)

    metrics = {key: sum(res.metrics.get(key, 0) for res in results) for key in (
        NUM_EPISODES, ENV_STEPS, GEN_TOKENS, GEN_CALLS, GEN_SECONDS, ENV_SECONDS, SUB_DONE_ADVANCES, BUDGET_ADVANCES,
        EPISODES_FAILED, ENV_POOL_RESTARTS, SAMPLER_RESTARTS)}
    for key in (SUCCESS_RATE, MEAN_RETURN, MEAN_STEPS, MEAN_NUM_SUBGOALS):
        metrics[key] = weighted(key, n_eps)
    metrics[INVALID_ACTION_RATE] = weighted(INVALID_ACTION_RATE, n_acts)
    metrics[PLAN_FALLBACK_RATE] = weighted(PLAN_FALLBACK_RATE, n_plans)
    metrics[PLAN_INVALID_RATE] = weighted(PLAN_INVALID_RATE, n_plans)
    metrics[MEAN_RESPONSE_LEN] = sum(len(r.response_ids) for r in records) / max(len(records), 1)
    blueprints = {seed: bp for res in results for seed, bp in res.blueprints.items()}
    pres = [res.pre for res in results]
    pre = merge_results(pres) if all(p is not None for p in pres) else None
    failed = [f for res in results for f in res.failed]
    return RolloutResult(records=records, episodes=episodes, metrics=metrics, blueprints=blueprints, pre=pre,
                         failed=failed)
