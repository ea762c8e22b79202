"""The batched hierarchical episode driver: envs + a `Generator` in, `Record`s out.

Runs many episodes at once. Every decision round batches the prompts of all live episodes into
ONE `Generator.generate` call (the planner round is one call too), so a vLLM backend sees the
whole batch. No Ray here: `actors/env_pool.py` runs it (as a `rollout_call.RolloutCall`) in env-pool actors.

Modes (HiMAC, see docs/algorithm.md):

- "macro": per seed, G = `group_size` blueprints are sampled from the planner (one prompt with
  n=G, `planner_params`); G envs reset with that seed each execute one blueprint with the
  executor (`executor_params`, greedy by default). Emits one `plan` record per episode and its
  `act` records, all with group_id = the macro group of the seed.
- "micro": per seed, the best blueprint z* (from `blueprints`, or from a macro rollout run first
  with a greedy executor: highest return, ties -> first) is fixed and executed N = `group_size`
  times with `executor_params` (sample with temperature > 0 here). Emits `act` records with
  group_id = the micro group of the seed.
- "flat": one policy, `group_size` episodes per seed with the flat (verl-agent) prompt; `act`
  records grouped per seed (GRPO / GiGPO groups), `subgoal_index` -1.

Every member of a group resets its env with the same seed (verl-agent convention), so groups
compare responses from one initial state.

Executor control: the current subgoal advances on `<sub_done>` after a valid action (never after
an invalid one; never with `PromptFormat.sub_done` False) or when `subgoal_step_budget` steps were
spent on it (default ceil(max_steps / number of subgoals in the episode's blueprint));
the history shown resets at each advance. On the last subgoal it keeps acting (neither
`<sub_done>` nor the budget advance it) until the episode ends.

Invalid responses (see `parsers.parse_action`): the step's reward gets `invalid_penalty`
(default -0.1) added and the episode goes on. The env still receives a command, so it answers as
the original env would: the parsed `<action>` text when there is one (a non-admissible command:
ALFWorld answers "Nothing happens.", WebShop and Sokoban do nothing), else "" (same effect).
Such a step counts toward the env's `max_steps`. An invalid / fallback blueprint gets
`invalid_penalty` on its `plan` record's reward.

A failing env (an exception from its `reset` or `step`) fails that episode only: it ends at once,
its records are left out of the result (a partial return is no return), and it is counted in
`episodes_failed` and listed in `RolloutResult.failed` (seed, traj id, the exception). The other
episodes, also of its group, go on.

Rewards and returns: `Record.reward` = env reward + penalty; `episode_return` (set on every
record of the episode, with `won`) = the sum of `reward` over the episode's records, the `plan`
record included. So in macro mode R(z_i) already charges a malformed blueprint.

Visual observations (visual Sokoban, obs = {"image": HxWx3 uint8, "text": str}): the prompt's
user content becomes a list of parts with `{"type": "image", "image": <np.ndarray>}` where the
observation goes (see `himac_ray.prompts`); `Record.image` holds the PNG bytes of the image the
response saw and `Record.anchor` = the text + "\\n[image sha1:<16 hex>]" of the raw pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from himac_ray import parsers, prompts
from himac_ray.data import Record, png_bytes
from himac_ray.generation import Generator, SamplingParams
from himac_ray.names import MODES
from himac_ray.rollout_result import (
    BUDGET_ADVANCES,
    ENV_SECONDS,
    EPISODES_FAILED,
    GEN_CALLS,
    GEN_SECONDS,
    SUB_DONE_ADVANCES,
    RolloutResult,
    summarize_groups,
)

PLANNER_PARAMS = SamplingParams(temperature=1.0)
"""default planner sampling: blueprints are sampled (macro groups need diversity)"""
EXECUTOR_PARAMS = SamplingParams(temperature=0.0)
"""default executor sampling: greedy (the frozen executor scoring blueprints in macro mode)"""
DEFAULT_MAX_STEPS = 50
"""episode step cap used only when the env does not expose `max_steps`"""

@dataclass
class Episode:
    """Live state of one episode (also driven by sft.py)."""

    env: Any
    group_id: str
    traj_id: str
    seed: int
    task: str
    obs_text: str
    image: Any
    info: dict
    max_steps: int
    subgoals: list[str] | None = None
    """None in flat mode"""
    plan_valid: bool = True
    plan_fallback: bool = False
    budget: int = 0
    subgoal_index: int = 0
    steps_in_subgoal: int = 0
    history: list[tuple[str, str]] = field(default_factory=list)
    steps: int = 0
    ret: float = 0.0
    done: bool = False
    won: bool = False
    records: list[Record] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    error: str | None = None
    """why the env failed (an exception from reset / step); the episode is dropped from the result"""


def run_rollout(
    *,
    generator: Generator,
    env_id: str,
    env_kwargs: dict | None = None,
    seeds: Sequence[int],
    mode: str,
    group_size: int,
    planner_params: SamplingParams = PLANNER_PARAMS,
    executor_params: SamplingParams = EXECUTOR_PARAMS,
    max_subgoals: int = 4,
    subgoal_step_budget: int | None = None,
    history_length: int = 2,
    invalid_penalty: float = -0.1,
    blueprints: dict[int, list[str]] | None = None,
    env_factory: Callable[..., Any] | None = None,
    progress: Callable[[dict], None] | None = None,
    planner_generator: Generator | None = None,
    prompt_format: prompts.PromptFormat = prompts.VERL,
    plan_group_size: int | None = None,
    episode_score: str = "return",
    group_ids: dict[int, str] | None = None,
    first_member: int = 0,
) -> RolloutResult:
    """Run `len(seeds) * group_size` episodes in `mode` and collect their records.

    Args:
        generator: the executor / flat policy (and the planner unless `planner_generator`).
        env_id: a registered env id (`himac_ray.envs.ENV_IDS`); also picks the prompt family.
        env_kwargs: keyword arguments for the env constructor.
        seeds: one group per seed (seeds should be distinct; `blueprints` is keyed by seed).
        mode: "macro", "micro" or "flat" (module docstring).
        group_size: G blueprints (macro), N executions (micro) or episodes (flat) per seed.
        planner_params: planner sampling (its `n` is replaced by `group_size`).
        executor_params: executor / flat sampling (its `n` is replaced by 1). Its `stop`
            strings must not cut the answer at `</action>`, or `<sub_done>` is never seen.
        max_subgoals: K, the most subgoals a blueprint may hold.
        subgoal_step_budget: steps per subgoal before advancing without `<sub_done>`;
            None -> ceil(max_steps / len(blueprint)).
        history_length: past steps shown in each executor / flat prompt.
        invalid_penalty: added to the reward of an invalid action or blueprint.
        blueprints: micro mode: seed -> fixed blueprint; None -> run a macro rollout first
            (greedy executor) and use each group's best blueprint.
        env_factory: `env_factory(env_id, **env_kwargs)` builds one env; default `gymnasium.make`.
        progress: called after every generate round with a small dict (phase, round, live,
            finished, total).
        planner_generator: the planner policy, when it is a different model; default `generator`.
        prompt_format: prompt style and executor / flat answer format (`prompts.PromptFormat`).
        plan_group_size: micro mode without `blueprints`: G, the blueprints per seed of the macro
            pre-pass that picks z* (default `group_size`, which is N there).
        episode_score: what makes a blueprint best for z*: "return" (the episode's return) or
            "won" (success first, then return), as `algorithm.episode_score` scores trajectories.
        group_ids: seed -> the group id its episodes join (growing a group rolled out before, as
            the adaptive group size does); default `{mode}-{index}-seed{seed}`.
        first_member: member index of the first episode per seed: traj ids are
            `{group_id}/{first_member + j}`, j < group_size (growth: the members launched so far).

    Returns:
        RolloutResult with records, per-episode summaries, metrics and blueprints.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if max_subgoals < 1:
        raise ValueError(f"max_subgoals must be >= 1, got {max_subgoals}")
    planner_generator = planner_generator or generator
    env_kwargs = dict(env_kwargs or {})
    pre = None
    stats = {GEN_SECONDS: 0.0, ENV_SECONDS: 0.0, GEN_CALLS: 0, SUB_DONE_ADVANCES: 0, BUDGET_ADVANCES: 0,
             EPISODES_FAILED: 0}
    if mode == "micro" and blueprints is None:
        pre = run_rollout(
            generator=generator, env_id=env_id, env_kwargs=env_kwargs, seeds=seeds, mode="macro",
            group_size=plan_group_size or group_size, planner_params=planner_params,
            executor_params=dataclasses.replace(executor_params, temperature=0.0),
            max_subgoals=max_subgoals, subgoal_step_budget=subgoal_step_budget,
            history_length=history_length, invalid_penalty=invalid_penalty,
            env_factory=env_factory, progress=progress, planner_generator=planner_generator,
            prompt_format=prompt_format, episode_score=episode_score,
        )
        blueprints = {int(s): pre.blueprints.get(int(s), []) for s in seeds}  # [] (every member failed) -> fallback plan

    groups: list[list[Episode]] = []
    try:
        for i, seed in enumerate(seeds):
            group_id = (group_ids or {}).get(int(seed), f"{mode}-{i}-seed{seed}")
            groups.append([_reset_or_fail(env_id, env_kwargs, env_factory, int(seed), group_id, f"{group_id}/{j}", stats)
                           for j in range(first_member, first_member + group_size)])
        _run_groups(
            groups, generator=generator, planner_generator=planner_generator, env_id=env_id, mode=mode,
            planner_params=planner_params, executor_params=executor_params, max_subgoals=max_subgoals,
            subgoal_step_budget=subgoal_step_budget, history_length=history_length,
            invalid_penalty=invalid_penalty, blueprints=blueprints, stats=stats, progress=progress,
            fmt=prompt_format,
        )
    finally:
        for g in groups:
            for e in g:
                _close(e)
    result = summarize_groups(groups, mode, stats, episode_score)
    result.pre = pre
    return result


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------
def _run_groups(
    groups, *, generator, planner_generator, env_id, mode, planner_params, executor_params, max_subgoals,
    subgoal_step_budget, history_length, invalid_penalty, blueprints, stats, progress, fmt,
) -> None:
    """Blueprints (macro: sampled, micro: given), then decision rounds until every episode ended."""
    size = max((len(g) for g in groups), default=0)
    groups = [[e for e in g if e.error is None] for g in groups]  # members whose env failed at reset sit out
    groups = [g for g in groups if g]
    episodes = [e for g in groups for e in g]
    if not episodes:
        return
    if mode == "macro":
        _plan_round(planner_generator, env_id, groups, planner_params, max_subgoals, invalid_penalty, stats, fmt, size)
        if progress is not None:
            progress({"phase": "plan", "round": 0, "live": len(episodes), "finished": 0, "total": len(episodes)})
    elif mode == "micro":
        for g in groups:
            if g[0].seed not in blueprints:
                raise KeyError(f"micro mode: no blueprint for seed {g[0].seed}")
            subgoals = [str(s) for s in blueprints[g[0].seed]][:max_subgoals] or parsers.fallback_plan(g[0].task)
            for e in g:
                e.subgoals = list(subgoals)
    if mode != "flat":
        for e in episodes:
            e.budget = subgoal_budget(e.max_steps, len(e.subgoals), subgoal_step_budget)
    _act_loop(generator, env_id, episodes, mode, executor_params, history_length, invalid_penalty, stats, progress, fmt)


def reset_episode(
    env_id: str, env_kwargs: dict, env_factory, seed: int, group_id: str, traj_id: str, stats: dict | None = None
) -> Episode:
    """Build one env (`env_factory` or `gymnasium.make`), reset it with `seed`, wrap it in an `Episode`."""
    start = time.perf_counter()
    env = env_factory(env_id, **env_kwargs) if env_factory is not None else _gym_make(env_id, env_kwargs)
    obs, info = env.reset(seed=seed)
    if stats is not None:
        stats[ENV_SECONDS] += time.perf_counter() - start
    text, image = split_obs(obs)
    max_steps = _step_cap(env)
    extra = {"task_type": info["task_type"]} if "task_type" in info else {}
    return Episode(
        env=env, group_id=group_id, traj_id=traj_id, seed=seed, task=str(info.get("task", "")),
        obs_text=text, image=image, info=info, max_steps=max_steps, extra=extra,
    )


def _step_cap(env) -> int:
    """The most env steps one episode of `env` takes (its `max_steps`, else the gymnasium time limit)."""
    cap = getattr(env.unwrapped, "max_steps", None) or getattr(env.spec, "max_episode_steps", None)
    return int(cap or DEFAULT_MAX_STEPS)


def env_step_cap(env_id: str, env_kwargs: dict, env_factory=None) -> int:
    """`_step_cap` of a freshly built env: the worst case of one episode, in env steps."""
    env = env_factory(env_id, **env_kwargs) if env_factory is not None else _gym_make(env_id, dict(env_kwargs))
    try:
        return _step_cap(env)
    finally:
        env.close()


def _reset_or_fail(env_id, env_kwargs, env_factory, seed, group_id, traj_id, stats) -> Episode:
    """`reset_episode`, or an ended episode carrying the error when the env fails to build or reset."""
    try:
        return reset_episode(env_id, env_kwargs, env_factory, seed, group_id, traj_id, stats)
    except Exception as err:  # noqa: BLE001  (any env bug fails this episode, not the rollout)
        e = Episode(env=None, group_id=group_id, traj_id=traj_id, seed=seed, task="", obs_text="", image=None,
                    info={}, max_steps=0)
        _fail(e, err, stats)
        return e


def _fail(e: Episode, err: BaseException, stats: dict) -> None:
    e.done, e.won, e.error = True, False, f"{type(err).__name__}: {err}"
    stats[EPISODES_FAILED] += 1


def _close(e: Episode) -> None:
    try:
        if e.env is not None:
            e.env.close()
    except Exception:  # noqa: BLE001  (a failing close loses nothing: the episode is over)
        pass


def _gym_make(env_id: str, env_kwargs: dict):
    import gymnasium as gym

    import himac_ray.envs  # noqa: F401  (registers the env ids)

    return gym.make(env_id, **env_kwargs)


def _plan_round(generator, env_id, groups, params, max_subgoals, invalid_penalty, stats, fmt, size) -> None:
    """One generate call: n = group size blueprints per seed, blueprint j -> episode j."""
    chats = [
        prompts.planner_prompt(env_id, task=g[0].task, observation=g[0].obs_text, max_subgoals=max_subgoals,
                               image=g[0].image, fmt=fmt)
        for g in groups
    ]
    samples = _generate(generator, chats, dataclasses.replace(params, n=size), stats)
    for g, group_samples in zip(groups, samples):
        for e, sample in zip(g, group_samples):
            subgoals, valid = parsers.parse_plan(sample.text, max_subgoals, task=e.task)
            e.subgoals, e.plan_valid = subgoals, valid
            e.plan_fallback = not valid and subgoals == parsers.fallback_plan(e.task)
            reward = 0.0 if valid else float(invalid_penalty)
            e.ret += reward
            e.records.append(
                _record(e, sample, env_id, level="plan", step=-1, subgoal_index=-1, reward=reward, valid=valid, sub_done=False)
            )


def _act_loop(generator, env_id, episodes, mode, params, history_length, invalid_penalty, stats, progress, fmt) -> None:
    """Decision rounds until every episode ended; one generate call per round."""
    params = dataclasses.replace(params, n=1)
    live = [e for e in episodes if not e.done]
    rnd = 0
    while live:
        chats = [episode_prompt(e, env_id, mode, history_length, fmt) for e in live]
        samples = _generate(generator, chats, params, stats)
        for e, (sample,) in zip(live, samples):
            _act_step(e, sample, env_id, mode, invalid_penalty, stats, fmt)
        live = [e for e in live if not e.done]
        rnd += 1
        if progress is not None:
            finished = len(episodes) - len(live)
            progress({"phase": "act", "round": rnd, "live": len(live), "finished": finished, "total": len(episodes)})


def subgoal_budget(max_steps: int, num_subgoals: int, subgoal_step_budget: int | None = None) -> int:
    """Steps per subgoal before the driver advances without `<sub_done>`: the explicit budget, or
    ceil(max_steps / number of subgoals in the blueprint)."""
    return int(subgoal_step_budget) if subgoal_step_budget else math.ceil(max_steps / max(num_subgoals, 1))


def episode_prompt(e: Episode, env_id: str, mode: str, history_length: int, fmt: prompts.PromptFormat = prompts.VERL):
    """The executor prompt (macro / micro) or flat prompt for the episode's current state."""
    admissible = e.info.get("admissible_actions", [])
    if mode == "flat":
        return prompts.flat_prompt(
            env_id, task=e.task, history=e.history, observation=e.obs_text, admissible_actions=admissible,
            steps_taken=e.steps, history_length=history_length, image=e.image, fmt=fmt,
        )
    return prompts.executor_prompt(
        env_id, task=e.task, subgoals=e.subgoals, subgoal_index=e.subgoal_index, history=e.history,
        observation=e.obs_text, admissible_actions=admissible, steps_in_subgoal=e.steps_in_subgoal,
        history_length=history_length, image=e.image, fmt=fmt,
    )


def _act_step(e: Episode, sample, env_id, mode, invalid_penalty, stats, fmt) -> None:
    """Parse one response, step the env, write the record, advance the subgoal."""
    action, valid, sub_done = parsers.parse_action(
        sample.text, e.info.get("admissible_actions"), env_id=env_id, require_think=fmt.require_think)
    # `<sub_done>` closes a subgoal only after a valid action (malformed output cannot skip
    # subgoals) and only where asked for (flat agents never; `rollout.sub_done` false never)
    sub_done = sub_done and valid and mode != "flat" and fmt.sub_done
    start = time.perf_counter()
    try:
        obs, env_reward, terminated, truncated, info = e.env.step(action)
    except Exception as err:  # noqa: BLE001  (an env bug fails this episode, not the rollout)
        _fail(e, err, stats)
        return
    finally:
        stats[ENV_SECONDS] += time.perf_counter() - start
    reward = float(env_reward) + (0.0 if valid else float(invalid_penalty))
    subgoal_index = -1 if mode == "flat" else e.subgoal_index
    e.records.append(
        _record(e, sample, env_id, level="act", step=e.steps, subgoal_index=subgoal_index, reward=reward, valid=valid, sub_done=sub_done)
    )
    advance_episode(e, action=action, reward=reward, obs=obs, info=info, done=terminated or truncated, sub_done=sub_done, stats=stats)


def advance_episode(e: Episode, *, action: str, reward: float, obs: Any, info: dict, done: bool, sub_done: bool, stats: dict | None = None) -> None:
    """Book-keeping after one env step (shared with sft.py so demonstrations match rollouts).

    Appends `(previous observation text, action)` to the history, adds `reward` to the return,
    ends the episode on `done` (or at `max_steps`), and otherwise advances the current subgoal
    on `sub_done` or when its step budget is spent (never past the last subgoal), clearing the
    history at each advance.
    """
    e.history.append((e.obs_text, action))
    e.steps += 1
    e.steps_in_subgoal += 1
    e.ret += reward
    e.obs_text, e.image = split_obs(obs)
    e.info = info
    if done or e.steps >= e.max_steps:
        _finish(e, bool(info.get("won", False)))
        return
    on_last = e.subgoals is None or e.subgoal_index >= len(e.subgoals) - 1
    if not on_last and (sub_done or e.steps_in_subgoal >= e.budget):
        if stats is not None:
            stats[SUB_DONE_ADVANCES if sub_done else BUDGET_ADVANCES] += 1
        e.subgoal_index += 1
        e.steps_in_subgoal = 0
        e.history = []


def _finish(e: Episode, won: bool) -> None:
    e.done, e.won = True, won
    for r in e.records:
        r.episode_return, r.won = e.ret, won


def _generate(generator, chats, params, stats):
    start = time.perf_counter()
    out = generator.generate(chats, params)
    stats[GEN_SECONDS] += time.perf_counter() - start
    stats[GEN_CALLS] += 1
    if len(out) != len(chats) or any(len(s) != params.n for s in out):
        raise ValueError(
            f"generator returned {[len(s) for s in out]} samples for {len(chats)} prompts with n={params.n}"
        )
    return out


def _record(e: Episode, sample, env_id, *, level, step, subgoal_index, reward, valid, sub_done) -> Record:
    return Record(
        group_id=e.group_id,
        traj_id=e.traj_id,
        level=level,
        env_id=env_id,
        seed=e.seed,
        step=step,
        subgoal_index=subgoal_index,
        prompt_ids=list(sample.prompt_token_ids),
        response_ids=list(sample.token_ids),
        logprobs=[float(x) for x in sample.logprobs],
        response_text=sample.text if isinstance(sample.text, str) else str(sample.text),
        reward=reward,
        valid=valid,
        sub_done=sub_done,
        anchor=anchor_of(e.obs_text, e.image),
        image=png_bytes(e.image) if e.image is not None else b"",
        extra=_extra(e),
        num_subgoals=len(e.subgoals) if e.subgoals else 0,
        weights_version=sample.weights_version,
    )


EPISODE_KEYS = ("task", "subgoals")
"""`Record.extra` keys set on an episode's FIRST record only (so Parquet stays small): the task
text and the blueprint the episode executes (z* in micro mode, which has no plan record)"""


def _extra(e: Episode) -> dict:
    extra = dict(e.extra)
    if not e.records:
        extra["task"] = e.task
        if e.subgoals:
            extra["subgoals"] = list(e.subgoals)
    return extra


# --------------------------------------------------------------------------------------------
# Observation helpers (also used by sft.py)
# --------------------------------------------------------------------------------------------
def split_obs(obs: Any) -> tuple[str, Any]:
    """`(text, image)` of an observation: str -> (obs, None); {"image", "text"} -> both."""
    if isinstance(obs, dict):
        image = obs.get("image")
        return str(obs.get("text", "") or ""), (np.asarray(image) if image is not None else None)
    return (obs if isinstance(obs, str) else str(obs)), None


def anchor_of(text: str, image: Any) -> str:
    """GiGPO anchor: the raw observation text, plus a hash of the pixels for visual observations."""
    if image is None:
        return text
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha1(repr((arr.shape, str(arr.dtype))).encode() + arr.tobytes()).hexdigest()[:16]
    return f"{text}\n[image sha1:{digest}]"
