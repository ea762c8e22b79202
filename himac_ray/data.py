"""Trajectory records: one row per generated response (a blueprint or an action).

The rollout driver emits `Record`s; `advantage.py` fills `advantage`; the learner trains on them.
No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Record:
    """One generated response and what came of it."""

    group_id: str
    """the group whose members are compared (macro group for `plan`, micro group for `act`)"""
    traj_id: str
    """the episode this response belongs to"""
    level: str
    """"plan" (a blueprint, macro level) or "act" (an executor / flat-agent action, micro level)"""
    env_id: str
    seed: int
    """the env seed of the episode (all members of a group share it)"""
    step: int
    """env step index the response acted at (the planner's record has step -1)"""
    subgoal_index: int
    """index of the subgoal being executed (-1 for `plan` and flat records)"""
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    """sampling logprobs of `response_ids`"""
    response_text: str = ""
    reward: float = 0.0
    """env reward of this step plus any invalid-action penalty (0 for `plan`)"""
    valid: bool = True
    """the response parsed into a valid action / plan"""
    sub_done: bool = False
    """the executor declared the current subgoal done"""
    anchor: str = ""
    """raw observation the response acted on, without history (GiGPO step groups)"""
    episode_return: float = 0.0
    won: bool = False
    advantage: float = 0.0
    image: bytes = b""
    """PNG bytes of the visual observation, empty for text envs"""
    extra: dict = field(default_factory=dict)
    """small per-record metadata (e.g. task type); stored as JSON text in Arrow"""
