"""The built-in Sokoban as a classic-RL environment (grid tensor in, discrete action out) for RLlib.

`SokobanGridEnv` wraps `SokobanTextEnv` (same rooms, rules, rewards and `max_steps`) with a
(rows, cols, 4) float32 observation (channels: wall, target, box, player) and `Discrete(4)`
actions (up, down, left, right). It is the non-LLM baseline's view of exactly the env the LLM
agents play. `SokobanHierarchy` is the game logic of a two-agent (planner / executor) view:
the planner picks a cell for the player to reach, the executor moves with that subgoal as a
fifth observation channel; `benchmarks/rllib_bench.py` wraps it as an RLlib `MultiAgentEnv`.

Seeds: with `seeds` given, resets cycle through them; otherwise each reset draws a training
seed from `[train_seed_start, train_seed_start + 10**6)` with the env's own generator, seeded
by `seed_offset` (RLlib passes worker / vector indices there). The LLM runs train on seeds from
1000 upward and evaluate on held-out seeds 0..N-1; so does the RLlib benchmark.

No Ray import here (RLlib registration happens in `register_rllib_envs`, which imports it lazily).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from himac_ray.envs.sokoban import ACTIONS, SokobanTextEnv

CHANNELS = ("wall", "target", "box", "player")
GRID_ENV_NAME = "himac/SokobanGrid-v0"
HIER_ENV_NAME = "himac/SokobanHier-v0"


def grid_tensor(env: SokobanTextEnv) -> np.ndarray:
    """(rows, cols, 4) float32 planes: wall, target, box, player."""
    h, w = env.dim_room
    W = w + 1
    out = np.zeros((h, w, len(CHANNELS)), dtype=np.float32)
    floor = np.frombuffer(bytes(env._floor), dtype=np.uint8).reshape(h, W)[:, :w]
    out[..., 0] = floor == 0
    for i in env._targets:
        out[i // W, i % W, 1] = 1.0
    for i in env._boxes:
        out[i // W, i % W, 2] = 1.0
    out[env._player // W, env._player % W, 3] = 1.0
    return out


class SokobanGridEnv(gym.Env):
    """`himac/Sokoban-v0` with a grid-tensor observation and Discrete(4) actions.

    Args (also accepted as one `config` dict, as RLlib passes them):
        dim_room, num_boxes, max_steps: as `SokobanTextEnv` (defaults 6x6, 1 box, 15 steps).
        seeds: fixed seeds to cycle through (e.g. held-out evaluation seeds).
        train_seed_start: first training seed when `seeds` is None.
        seed_offset: seeds this env's own seed generator (distinct per RLlib sub-env).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, config: dict | None = None, **kwargs: Any):
        cfg = {**dict(config or {}), **kwargs}
        self.inner = SokobanTextEnv(dim_room=tuple(cfg.get("dim_room", (6, 6))), num_boxes=int(cfg.get("num_boxes", 1)),
                                    max_steps=int(cfg.get("max_steps", 15)))
        self.seeds = list(cfg["seeds"]) if cfg.get("seeds") is not None else None
        self.train_seed_start = int(cfg.get("train_seed_start", 1000))
        offset = int(cfg.get("seed_offset", 0))
        offset += 1000 * int(getattr(config, "worker_index", 0) or 0) + int(getattr(config, "vector_index", 0) or 0)
        self._seed_rng = np.random.default_rng(offset)
        self._next = 0
        h, w = self.inner.dim_room
        self.observation_space = spaces.Box(0.0, 1.0, shape=(h, w, len(CHANNELS)), dtype=np.float32)
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.max_steps = self.inner.max_steps
        self.last_seed: int | None = None

    def _pick_seed(self) -> int:
        if self.seeds:
            seed = self.seeds[self._next % len(self.seeds)]
            self._next += 1
            return int(seed)
        return self.train_seed_start + int(self._seed_rng.integers(10**6))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # RLlib seeds the first reset of each sub-env; the room seed always comes from the schedule
        if seed is not None and self.seeds is None:
            self._seed_rng = np.random.default_rng(seed)
        self.last_seed = self._pick_seed()
        _, info = self.inner.reset(seed=self.last_seed)
        return grid_tensor(self.inner), {"won": False, "seed": self.last_seed}

    def step(self, action):
        _, reward, terminated, truncated, info = self.inner.step(ACTIONS[int(action)])
        return grid_tensor(self.inner), float(reward), terminated, truncated, {"won": bool(info["won"])}

    def render(self):
        return self.inner.render_text()


class SokobanHierarchy:
    """Planner / executor turn logic over `SokobanGridEnv` (no RLlib types; see module docstring).

    The planner chooses a subgoal cell (Discrete(rows*cols), row-major) for the player; the
    executor then acts with observation = grid planes + a subgoal plane. Control returns to the
    planner when the player reaches the cell or after `subgoal_steps` executor steps. Executor
    reward: env reward + `reach_bonus` on reaching the subgoal; planner reward: the env reward
    summed over its subgoal. Both see the episode end.
    """

    def __init__(self, config: dict | None = None):
        cfg = dict(config or {})
        self.env = SokobanGridEnv(config)
        self.subgoal_steps = int(cfg.get("subgoal_steps", 4))
        self.reach_bonus = float(cfg.get("reach_bonus", 0.2))
        h, w = self.env.inner.dim_room
        self.cells = h * w
        self.planner_observation_space = self.env.observation_space
        self.executor_observation_space = spaces.Box(0.0, 1.0, shape=(h, w, len(CHANNELS) + 1), dtype=np.float32)
        self.planner_action_space = spaces.Discrete(self.cells)
        self.executor_action_space = spaces.Discrete(len(ACTIONS))

    def _executor_obs(self) -> np.ndarray:
        grid = grid_tensor(self.env.inner)
        plane = np.zeros(grid.shape[:2] + (1,), dtype=np.float32)
        plane[self.subgoal // grid.shape[1], self.subgoal % grid.shape[1], 0] = 1.0
        return np.concatenate([grid, plane], axis=-1)

    def reset(self, seed=None):
        obs, info = self.env.reset(seed=seed)
        self.subgoal, self.sub_steps, self.planner_return = 0, 0, 0.0
        return {"planner": obs}, {"planner": info}

    def step(self, actions: dict):
        if "planner" in actions:
            self.subgoal = int(actions["planner"])
            self.sub_steps, self.planner_return = 0, 0.0
            return {"executor": self._executor_obs()}, {"planner": 0.0}, {"__all__": False}, {"__all__": False}, {}
        obs, reward, terminated, truncated, info = self.env.step(actions["executor"])
        self.sub_steps += 1
        self.planner_return += reward
        h, w = self.env.inner.dim_room
        reached = self.env.inner.player_position == divmod(self.subgoal, w)
        ex_reward = reward + (self.reach_bonus if reached else 0.0)
        done = terminated or truncated
        if done:
            return ({"executor": self._executor_obs(), "planner": obs}, {"executor": ex_reward, "planner": self.planner_return},
                    {"__all__": terminated}, {"__all__": truncated and not terminated}, {"executor": info})
        if reached or self.sub_steps >= self.subgoal_steps:
            return ({"planner": obs}, {"executor": ex_reward, "planner": self.planner_return}, {"__all__": False}, {"__all__": False},
                    {"executor": info})
        return {"executor": self._executor_obs()}, {"executor": ex_reward}, {"__all__": False}, {"__all__": False}, {}


def register_rllib_envs() -> None:
    """Register `himac/SokobanGrid-v0` (single agent) with RLlib / Tune (imports ray lazily)."""
    from ray.tune.registry import register_env

    register_env(GRID_ENV_NAME, lambda config: SokobanGridEnv(config))
