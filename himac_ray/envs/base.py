"""Shared pieces of every himac-ray text env: spaces, action normalisation, the `info` dict.

Pure Python + gymnasium + numpy; must not import ray, torch or any other env module.

Every env in `himac_ray.envs` follows one contract (see `himac_ray/envs/__init__.py`):

- `reset(seed=...) -> (obs, info)` and `step(action: str) -> (obs, reward, terminated, truncated, info)`.
- `info` always holds `won` (bool), `admissible_actions` (list[str]), `action_is_valid` (bool, True
  after reset) and `task` (str). Build it with `TextEnv._make_info` (or `make_info`) so keys never drift.
- The env truncates itself after `max_steps` steps (no TimeLimit wrapper).
- Built-in envs implement `expert_actions()`, `expert_subgoals()` and `render_text()`.

Deviation from `gymnasium.spaces.Text`: `AnyText.contains` accepts *any* `str` whose length is within
bounds (all of Unicode), because LLM outputs and web pages are not limited to a fixed charset and a
frozenset of all 1.1M code points is too large. `sample()` draws from `SAMPLE_CHARSET` (printable
ASCII plus a few non-ASCII characters), so sampled strings are always members.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
from gymnasium import spaces

# Observations can be long web pages; 1M characters is far above any env's real output.
OBS_MAX_LENGTH = 1 << 20
# Long enough for any sane command and for the 10,000-char garbage action in the tests.
ACTION_MAX_LENGTH = 1 << 14
# Charset used by `AnyText.sample` only; membership accepts every character (see module docstring).
SAMPLE_CHARSET = string.printable + "äéñßøΩπλ→√×中文日本語한국어🙂"

INFO_KEYS = ("won", "admissible_actions", "action_is_valid", "task")


class AnyText(spaces.Text):
    """A `gymnasium.spaces.Text` whose `contains` accepts any character (see module docstring)."""

    def __init__(self, max_length: int, *, min_length: int = 0, seed: int | None = None):
        super().__init__(max_length, min_length=min_length, charset=SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"AnyText({self.min_length}, {self.max_length})"


def text_observation_space(max_length: int = OBS_MAX_LENGTH) -> AnyText:
    """The observation space of every text env."""
    return AnyText(max_length)


def text_action_space(max_length: int = ACTION_MAX_LENGTH) -> AnyText:
    """The action space of every env: one free-form command string."""
    return AnyText(max_length)


def normalize_action(action: Any, *, lower: bool = False) -> str:
    """Turn whatever the agent sent into a stripped str; never raises.

    `bytes` are decoded as UTF-8 with replacement, `None` becomes "", anything else goes through `str`.
    """
    if isinstance(action, str):
        text = action
    elif isinstance(action, (bytes, bytearray)):
        text = bytes(action).decode("utf-8", errors="replace")
    elif action is None:
        text = ""
    else:
        try:
            text = str(action)
        except Exception:  # a hostile __str__ must not crash a rollout
            text = ""
    text = text.strip()
    return text.lower() if lower else text


def make_info(
    *, won: bool, admissible_actions: list[str], action_is_valid: bool, task: str, **extra: Any
) -> dict[str, Any]:
    """The common `info` dict; env-specific keys go in `extra` and never override the common four."""
    info = dict(extra)
    info.update(
        won=bool(won),
        admissible_actions=list(admissible_actions),
        action_is_valid=bool(action_is_valid),
        task=task,
    )
    return info


class TextEnv(gym.Env):
    """Base class for the himac-ray text envs: spaces, step counter, `info`, `ansi` rendering.

    Subclasses set `self.task` and `self.won` in `reset`/`step`, implement `admissible_actions`,
    `render_text`, `expert_actions` and `expert_subgoals`, and call `self._count_step()` once per
    `step` to get the `truncated` flag.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, *, max_steps: int, render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.render_mode = render_mode
        self.max_steps = int(max_steps)
        self.observation_space = text_observation_space()
        self.action_space = text_action_space()
        self.task = ""
        self.won = False
        self.num_steps = 0

    # --- to implement -------------------------------------------------------------------------
    def admissible_actions(self) -> list[str]:
        """Actions the agent may take in the current state (what `info["admissible_actions"]` holds)."""
        raise NotImplementedError

    def render_text(self) -> str:
        """A human-readable text picture of the current state."""
        raise NotImplementedError

    def expert_actions(self) -> list[str]:
        """Actions solving the task from the current state."""
        raise NotImplementedError

    def expert_subgoals(self) -> list[str]:
        """An ordered natural-language decomposition of the remaining task (a few short lines)."""
        raise NotImplementedError

    # --- shared helpers -----------------------------------------------------------------------
    def _count_step(self) -> bool:
        """Advance the step counter; returns True once `max_steps` steps were taken.

        Callers report `truncated = self._count_step() and not terminated`: an episode that ends by
        success on its last allowed step is terminated, not truncated.
        """
        self.num_steps += 1
        return self.num_steps >= self.max_steps

    def _make_info(self, *, action_is_valid: bool, **extra: Any) -> dict[str, Any]:
        return make_info(
            won=self.won,
            admissible_actions=self.admissible_actions(),
            action_is_valid=action_is_valid,
            task=self.task,
            **extra,
        )

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.render_text()
        return None
