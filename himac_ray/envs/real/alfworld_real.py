"""Adapter from the real ALFWorld text games (the `alfworld` + `textworld` packages) to the himac API.

Imports `alfworld` and `textworld` lazily, inside `ALFWorldRealEnv.__init__`; importing this module
needs only gymnasium. Must not import ray or torch.

Install with `pip install himac-ray[real-envs]` (or `pip install alfworld`), then run
`alfworld-download` to fetch the games into `$ALFWORLD_DATA` (default `~/.cache/alfworld`).
Games are collected like `AlfredTWEnv.collect_game_files` (alfworld v0.4): every
`json_2.1.1/<split>/**/game.tw-pddl` with a `traj_data.json`, not `movable`/`Sliced`, of a requested
task type, and marked `"solvable": true`.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from gymnasium import error

from himac_ray.envs.alfworld import NOTHING, parse_task_types
from himac_ray.envs.alfworld_world import SPLITS
from himac_ray.envs.base import TextEnv, normalize_action

# ALFWorld's config: data_path / eval_id_data_path / eval_ood_data_path.
SPLIT_DIRS = {
    "train": "train",
    "eval_in_distribution": "valid_seen",
    "eval_out_of_distribution": "valid_unseen",
}
TASK_MARKER = "Your task is to: "


class ALFWorldUnavailableError(error.Error, RuntimeError):
    """The `alfworld` package or its game files are missing; the message says how to get them."""


def default_data_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("ALFWORLD_DATA", "~/.cache/alfworld")))


def has_game_files(root: Path) -> bool:
    """True if `root/json_2.1.1/train/**/game.tw-pddl` exists (stops at the first match)."""
    train = root / "json_2.1.1" / "train"
    for _, _, files in os.walk(train):
        if "game.tw-pddl" in files:
            return True
    return False


def _import_backend() -> tuple[Any, Any] | str:
    """(textworld, alfred_tw_env module), or a description of what failed to import."""
    try:
        textworld = importlib.import_module("textworld")
        tw_env = importlib.import_module("alfworld.agents.environment.alfred_tw_env")
    except ImportError as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return textworld, tw_env


def collect_game_files(split_dir: Path, task_types: tuple[str, ...]) -> list[str]:
    """Sorted solvable game files of the given task types under `split_dir`."""
    games = []
    for root, _, files in os.walk(split_dir):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        if "movable" in root or "Sliced" in root:
            continue
        with open(os.path.join(root, "traj_data.json")) as f:
            if json.load(f).get("task_type") not in task_types:
                continue
        game_file = os.path.join(root, "game.tw-pddl")
        with open(game_file) as f:
            if not json.load(f).get("solvable", False):
                continue
        games.append(game_file)
    return sorted(games)


def task_type_of(game_file: str) -> str:
    """`.../pick_heat_then_place_in_recep-Mug-None-CoffeeMachine-5/trial_.../game.tw-pddl` -> task type."""
    return Path(game_file).parent.parent.name.split("-")[0]


class ALFWorldRealEnv(TextEnv):
    """The original ALFWorld text games (TextWorld + PDDL) behind the himac-ray common API.

    ## Description
    Each reset loads one game of the split, chosen with `self.np_random`, into TextWorld with
    ALFWorld's `AlfredDemangler` and `AlfredInfos` wrappers (as `AlfredTWEnv.init_env` does).

    ## Action Space
    A free-form command string. It is valid when it equals (after strip) one of TextWorld's
    `admissible_commands`; anything else returns "Nothing happens." without reaching TextWorld,
    exactly what TextWorld itself answers.

    ## Observation Space
    TextWorld's feedback string (the ALFRED intro after reset).

    ## Rewards
    10.0 on the step the game is won (verl-agent's `10 * won`), else 0.

    ## Episode End
    Terminated when TextWorld reports `won` (or done); truncated after `max_steps` steps.

    ## Arguments
    - `split`: "train", "eval_in_distribution" (valid_seen) or "eval_out_of_distribution"
      (valid_unseen).
    - `task_types`: ids 1-6 (or names); default all six.
    - `max_steps`: default 50.
    - `data_root`: defaults to `$ALFWORLD_DATA`, else `~/.cache/alfworld`.

    Raises `ALFWorldUnavailableError` at construction when the package or the games are missing.
    `info` holds `won`, `admissible_actions` (sorted, without "help"), `action_is_valid`, `task`,
    `task_type` and `gamefile`.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        task_types: Any = (1, 2, 3, 4, 5, 6),
        max_steps: int = 50,
        data_root: str | os.PathLike | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.task_types = parse_task_types(task_types)
        self.data_root = Path(data_root) if data_root is not None else default_data_root()
        self.game_file: str | None = None
        self._game = None
        self._valid: set[str] = set()
        self._state: dict = {}

        backend = _import_backend()
        data_ok = has_game_files(self.data_root)
        if isinstance(backend, str) or not data_ok:
            raise ALFWorldUnavailableError(self._missing_message(backend, data_ok))
        self._textworld, self._tw_env = backend
        self.game_files = collect_game_files(self.data_root / "json_2.1.1" / SPLIT_DIRS[split], self.task_types)
        if not self.game_files:
            raise ALFWorldUnavailableError(
                f"no solvable ALFWorld games of types {list(self.task_types)} under "
                f"{self.data_root / 'json_2.1.1' / SPLIT_DIRS[split]}; re-run `alfworld-download` "
                "or point ALFWORLD_DATA at a complete download."
            )

    def _missing_message(self, backend: Any, data_ok: bool) -> str:
        lines = ["himac/ALFWorldReal-v0 needs the real ALFWorld games; missing:"]
        if isinstance(backend, str):
            lines.append(
                f"- the `alfworld` package ({backend}). Install it with "
                "`pip install himac-ray[real-envs]` or `pip install alfworld`."
            )
        if not data_ok:
            lines.append(
                f"- game files: no json_2.1.1/train/**/game.tw-pddl under {self.data_root}. "
                "Run `alfworld-download` (after installing alfworld) and/or set ALFWORLD_DATA to "
                "the download directory (default ~/.cache/alfworld)."
            )
        lines.append("The built-in replica himac/ALFWorld-v0 needs neither.")
        return "\n".join(lines)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.close()
        self.game_file = self.game_files[int(self.np_random.integers(len(self.game_files)))]
        tw, tw_env = self._textworld, self._tw_env
        request_infos = tw.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
        wrappers = [tw_env.AlfredDemangler(shuffle=False), tw_env.AlfredInfos]
        self._game = tw.start(self.game_file, request_infos=request_infos, wrappers=wrappers)
        state = self._game.reset()
        obs = self._absorb(state)
        self.task = obs.split(TASK_MARKER, 1)[1].strip() if TASK_MARKER in obs else ""
        self.won, self.num_steps = bool(state["won"]), 0
        return obs, self._make_info(action_is_valid=True, **self._extra())

    def step(self, action: Any):
        command = normalize_action(action)
        valid = command in self._valid
        terminated = False
        if valid:
            state, _, done = self._game.step(command)
            obs = self._absorb(state)
            self.won = self.won or bool(state["won"])
            terminated = self.won or bool(done)
        else:
            obs = NOTHING
        reward = 10.0 if self.won else 0.0
        truncated = self._count_step() and not terminated
        return obs, reward, terminated, truncated, self._make_info(action_is_valid=valid, **self._extra())

    def _absorb(self, state: Any) -> str:
        self._state = state
        commands = list(state["admissible_commands"] or [])
        self._valid = {c.strip() for c in commands}
        return str(state["feedback"])

    def _extra(self) -> dict[str, Any]:
        return {"task_type": task_type_of(self.game_file), "gamefile": self.game_file}

    def admissible_actions(self) -> list[str]:
        return sorted(self._valid - {"help"})

    def render_text(self) -> str:
        return str(self._state.get("feedback", "")) if self._state else ""

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None
