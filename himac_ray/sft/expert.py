"""Supervised warm-start data: expert demonstrations in exactly the rollout prompt format.

Owns `expert_demonstrations` (chat examples for the planner and the executor, built from the
built-in envs' `expert_subgoals()` / `expert_actions()`) and the expert-to-blueprint alignment
(`ExpertProgress`) that the tests' scripted expert reuses. No Ray, no torch.

Prompts come from the same code path as `himac_ray.rollout` (`reset_episode`,
`episode_prompt`, `advance_episode`), so an SFT example is byte-identical to the prompt the
driver would build in the same state, history and subgoal bookkeeping included.

Alignment of expert actions to subgoals (DESIGN):
1. At reset, the blueprint is the expert's subgoal list S0 = `expert_subgoals()`, fitted into
   `max_subgoals` = K lines (`expert_blueprint`: the first K-1 kept, the rest merged into the
   last line). An empty S0 (no expert plan) gives the fallback blueprint [task].
2. After every expert step, `expert_subgoals()` is queried again; it describes the remaining
   task, so `len(S0) - len(remaining)` is the number of expert subgoals completed. The count is
   kept monotone (the expert may re-split the remaining work, e.g. Sokoban switching from
   one-line-per-box to finer lines as boxes are placed) and set to len(S0) when the episode is won.
3. The executor target of that step carries `<sub_done>` when the completed count (in blueprint
   lines) exceeds the current subgoal index. The pointer advances by one per `<sub_done>`, as in
   the driver, so when one step completes two subgoals the next step's target says
   `<sub_done>` again (its current subgoal is already complete). The driver's step-budget
   fallback also applies, exactly as in a rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from himac_ray import parsers, prompts, rollout
from himac_ray.names import MERGE_SEPARATOR


def expert_blueprint(subgoals: Sequence[str], max_subgoals: int) -> list[str]:
    """Fit an expert subgoal list into at most `max_subgoals` lines (the tail merged into the last).

    Lines are clipped to `prompts.MAX_SUBGOAL_CHARS`, so `parse_plan(format_plan(...))` round-trips.
    """
    subgoals = [" ".join(str(s).split()) for s in subgoals if str(s).strip()]
    k = max(int(max_subgoals), 1)
    if len(subgoals) > k:
        subgoals = subgoals[: k - 1] + [MERGE_SEPARATOR.join(subgoals[k - 1 :])]
    return [prompts._clip(s, prompts.MAX_SUBGOAL_CHARS) for s in subgoals]


class ExpertProgress:
    """How many blueprint lines an expert run on `env` has completed (module docstring, 1-2).

    Create it right after `env.reset`; call `after_step(won)` after every env step.
    """

    def __init__(self, env: Any, max_subgoals: int, *, task: str = ""):
        self.env = env.unwrapped
        full = list(self.env.expert_subgoals())
        self.total = len(full)
        self.blueprint = expert_blueprint(full, max_subgoals) or parsers.fallback_plan(task)
        self.completed = 0
        """expert subgoals (of S0) completed so far"""

    def after_step(self, won: bool) -> int:
        """Re-query the expert; returns the number of blueprint lines completed."""
        if won:
            self.completed = self.total
        else:
            remaining = len(self.env.expert_subgoals())
            self.completed = max(self.completed, min(self.total, self.total - remaining))
        return self.blueprint_completed()

    def blueprint_completed(self) -> int:
        k = len(self.blueprint)
        return k if self.completed >= self.total else min(self.completed, k - 1)


def expert_think(subgoal: str | None, action: str, sub_done: bool) -> str:
    """The short reasoning text of an expert target (the subgoal is in the prompt: not copied, so
    HiMAC's executor answers are as short as the flat policy's)."""
    if subgoal is None:
        return f"The best next action toward the task is {action}."
    done = " This action completes the current subgoal." if sub_done else ""
    return f"The best next action toward the current subgoal is {action}.{done}"


def expert_demonstrations(
    env_id: str,
    seeds: Sequence[int],
    *,
    env_kwargs: dict | None = None,
    max_subgoals: int = 4,
    history_length: int = 2,
    subgoal_step_budget: int | None = None,
    flat: bool = False,
    only_successful: bool = True,
    env_factory: Callable[..., Any] | None = None,
    prompt_format: prompts.PromptFormat = prompts.VERL,
) -> list[dict]:
    """Chat-format SFT examples from the expert, one episode per seed.

    Args:
        env_id: a built-in env id (its `.unwrapped` has `expert_actions` / `expert_subgoals`).
        seeds: env seeds, one episode each.
        env_kwargs: env constructor arguments.
        max_subgoals: K, as in the rollout.
        history_length: past steps shown in executor prompts, as in the rollout.
        subgoal_step_budget: as in `rollout.run_rollout` (None -> ceil(max_steps / K_episode)).
        flat: produce flat-agent examples (verl-agent prompt, no plan) instead of planner +
            executor examples.
        only_successful: drop episodes the expert did not win.
        env_factory: as in `rollout.run_rollout`.
        prompt_format: prompt style and answer format, as in `rollout.run_rollout` (with the
            "action" answer format the act targets carry no `<think>` part).

    Returns:
        Examples `{"messages": [system, user, {"role": "assistant", "content": target}],
        "level": "plan" | "act", "env_id", "seed", "step", "subgoal_index"}` in episode and
        step order: per episode one "plan" example (target `<plan>...</plan>`, unless `flat`)
        then one "act" example per expert step (target `<think>...</think><action>a</action>`
        plus `<sub_done>` where the current subgoal completes). Visual envs put the image as a
        content part (np.ndarray), as the rollout does.
    """
    examples: list[dict] = []
    for i, seed in enumerate(seeds):
        episode = _demonstrate(
            env_id, int(seed), f"sft-{i}-seed{seed}", env_kwargs=dict(env_kwargs or {}), max_subgoals=max_subgoals,
            history_length=history_length, subgoal_step_budget=subgoal_step_budget, flat=flat, env_factory=env_factory,
            fmt=prompt_format,
        )
        if episode is not None and (episode[0] or not only_successful):
            examples.extend(episode[1])
    return examples


def expert_plans(
    env_id: str,
    seeds: Sequence[int],
    *,
    env_kwargs: dict | None = None,
    max_subgoals: int = 4,
    env_factory: Callable[..., Any] | None = None,
    prompt_format: prompts.PromptFormat = prompts.VERL,
) -> list[dict]:
    """Planner-only examples: per seed, the planner prompt at reset and the expert blueprint (as in
    `expert_demonstrations`), without executing it. A blueprint costs one expert search, an
    executed episode one example per step, so these give the planner as many examples as the
    executor gets cheaply. Seeds whose expert has no plan (an unsolvable or solved start) are skipped.
    """
    examples = []
    for i, seed in enumerate(seeds):
        e = rollout.reset_episode(env_id, dict(env_kwargs or {}), env_factory, int(seed), f"plan-{i}-seed{seed}",
                                  f"plan-{i}-seed{seed}/0")
        try:
            full = list(e.env.unwrapped.expert_subgoals())
            if not full:
                continue
            examples.append(_plan_example(e, env_id, expert_blueprint(full, max_subgoals), max_subgoals=max_subgoals,
                                          fmt=prompt_format))
        finally:
            e.env.close()
    return examples


def _demonstrate(env_id, seed, group_id, *, env_kwargs, max_subgoals, history_length, subgoal_step_budget, flat, env_factory,
                 fmt):
    """One expert episode -> (won, examples)."""
    e = rollout.reset_episode(env_id, env_kwargs, env_factory, seed, group_id, f"{group_id}/0")
    try:
        base = {"env_id": env_id, "seed": seed}
        examples = []
        progress = ExpertProgress(e.env, max_subgoals, task=e.task)
        if not flat:
            examples.append(_plan_example(e, env_id, progress.blueprint, max_subgoals=max_subgoals, fmt=fmt))
            e.subgoals = list(progress.blueprint)
            e.budget = rollout.subgoal_budget(e.max_steps, len(e.subgoals), subgoal_step_budget)
        mode = "flat" if flat else "micro"
        while not e.done:
            actions = e.env.unwrapped.expert_actions()
            if not actions:  # the expert has no plan from here: stop the demonstration
                break
            action = actions[0]
            chat = rollout.episode_prompt(e, env_id, mode, history_length, fmt)
            obs, reward, terminated, truncated, info = e.env.step(action)
            completed = progress.after_step(bool(info.get("won", False)))
            sub_done = not flat and fmt.sub_done and completed > e.subgoal_index
            subgoal = None if flat else e.subgoals[e.subgoal_index]
            target = prompts.format_action(action, think=expert_think(subgoal, action, sub_done), sub_done=sub_done, fmt=fmt)
            examples.append(
                _example(chat, target, level="act", step=e.steps, subgoal_index=-1 if flat else e.subgoal_index, **base)
            )
            rollout.advance_episode(
                e, action=action, reward=float(reward), obs=obs, info=info, done=terminated or truncated, sub_done=sub_done
            )
        return e.won, examples
    finally:
        e.env.close()


def _plan_example(e, env_id: str, blueprint: Sequence[str], *, max_subgoals: int, fmt: prompts.PromptFormat) -> dict:
    """The planner example of episode `e` at its reset: the planner prompt -> `blueprint` as `<plan>`."""
    chat = prompts.planner_prompt(env_id, task=e.task, observation=e.obs_text, max_subgoals=max_subgoals,
                                  image=e.image, fmt=fmt)
    return _example(chat, prompts.format_plan(blueprint), level="plan", env_id=env_id, seed=e.seed, step=-1,
                    subgoal_index=-1)


def _example(chat, target: str, *, level: str, env_id: str, seed: int, step: int, subgoal_index: int) -> dict:
    return {
        "messages": list(chat) + [{"role": "assistant", "content": target}],
        "level": level,
        "env_id": env_id,
        "seed": seed,
        "step": step,
        "subgoal_index": subgoal_index,
    }
