"""Sokoban as gymnasium text and image envs: gym-sokoban's rules and room generator, re-implemented.

Owns `SokobanTextEnv` (`himac/Sokoban-v0`) and `SokobanVisualEnv` (`himac/SokobanVisual-v0`), the
reverse-play room generator, an optimal expert (BFS/A*) and drawn 16-px tiles. Pure Python + numpy;
must not import ray or torch.

Cells are stored as flat indices `i = row * W + col` with `W = width + 1`: the extra column holds the
"\\n" of the text rendering and doubles as a wall, so rendering is one `"".join` of a char list.

## Deviations from gym-sokoban 0.0.6 (all deliberate)

- gymnasium API, string actions ("up"/"down"/"left"/"right", as in RAGEN / verl-agent, which use only
  gym-sokoban's push actions 1-4; a push onto a free cell is a plain move). No 9-action space.
- Invalid action strings are verl-agent's "Still": no move, reward 0, `action_is_valid=False`; unlike
  verl-agent's env the step counter still advances, because verl-agent's rollout loop also spends one
  of its `max_steps` turns on an invalid reply. Bumping into a wall is a *valid* action (-0.1).
- Randomness only from `self.np_random` (gym-sokoban uses the global `random`/`np.random`).
- Reverse play follows RAGEN / verl-agent's variant of gym-sokoban: pull actions only (a pull with no
  box behind is a move), `search_depth` ttl (default 30, not 300) and `box_swaps` counted when the
  pulled box changes (gym-sokoban passes the stale `last_pull`, so it counts every pull).
  RAGEN's extra random player walk after reverse play is not done.
- A failed attempt (score 0, too few floor cells, or not solvable by the expert within `max_steps`)
  draws a fresh room from the same `np_random` stream instead of raising; after
  `max_generation_attempts` it raises RuntimeError.
- `max_steps` defaults to 15 (verl-agent), not 120. Termination on success; truncation at max_steps.
- Tiles are drawn with numpy (no PNG assets), same semantics as gym-sokoban's sprites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from himac_ray.envs.base import TextEnv, normalize_action, text_observation_space
from himac_ray.envs.sokoban_rooms import (
    _ACTION_INDEX,
    ACTIONS,
    BOX,
    BOX_ON_TARGET,
    PLAYER,
    PLAYER_ON_TARGET,
    TARGET,
    WALL,
    parse_room,
    reverse_play,
    room_topology,
    solve,
)

# ---------------------------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------------------------
REWARD_STEP = -0.1
REWARD_BOX_ON = 1.0
REWARD_BOX_OFF = -1.0
REWARD_SOLVED = 10.0

TASK_TEXT = (
    "Push every box (X) onto a target (O). Each step you move up, down, left or right by one cell; "
    "walking into a box pushes it one cell if the cell behind it is free. Boxes cannot be pulled, so "
    "a box pushed against a wall or into a corner may get stuck. Rows and columns are numbered from 0 "
    "at the top-left corner."
)
TEXT_LEGEND = "Symbols: # wall, _ floor, O target, X box, √ box on a target, P player, S player on a target."
VISUAL_LEGEND = (
    "In the image: brick walls, dark floor; a target is a dark tile with a red outline and a red "
    "diamond; a box is a yellow crate with an orange X; the player is a green alien."
)

# ---------------------------------------------------------------------------------------------
# pure helpers: drawn 16x16 tiles (gym-sokoban sprite semantics)
# ---------------------------------------------------------------------------------------------
def _draw_tiles() -> np.ndarray:
    """(7, 16, 16, 3) uint8 tiles indexed by the encoding: wall, floor, target, box on target, box,
    player, player on target. Drawn here instead of vendoring gym-sokoban's PNGs."""
    y, x = np.mgrid[0:16, 0:16]
    floor = np.zeros((16, 16, 3), np.uint8)
    floor[:] = (38, 38, 38)
    floor[(x == 0) | (y == 0)] = (30, 30, 30)

    wall = np.empty((16, 16, 3), np.uint8)
    wall[:] = (150, 72, 48)  # red-brown bricks
    mortar = (y % 4 == 3) | ((x + 4 * ((y // 4) % 2)) % 8 == 7)
    wall[mortar] = (92, 86, 80)

    target = floor.copy()
    outline = ((x == 1) | (x == 14) | (y == 1) | (y == 14)) & (x >= 1) & (x <= 14) & (y >= 1) & (y <= 14)
    target[outline] = (215, 40, 40)
    diamond = (np.abs(x - 7.5) + np.abs(y - 7.5)) <= 3.5
    target[diamond] = (215, 40, 40)

    def crate(bg: np.ndarray, border_rgb) -> np.ndarray:
        tile = bg.copy()
        body = (x >= 2) & (x <= 13) & (y >= 2) & (y <= 13)
        tile[body] = (232, 190, 48)  # yellow crate
        edge = body & ((x == 2) | (x == 13) | (y == 2) | (y == 13))
        tile[edge] = border_rgb
        cross = body & ~edge & ((np.abs(x - y) <= 1) | (np.abs(x + y - 15) <= 1))
        tile[cross] = (236, 110, 20)  # orange X
        return tile

    box = crate(floor, (150, 100, 30))
    box_on_target = crate(target, (215, 40, 40))  # red rim: the crate sits on a target

    def alien(bg: np.ndarray) -> np.ndarray:
        tile = bg.copy()
        head = ((x - 7.5) ** 2 / 25 + (y - 6.5) ** 2 / 20) <= 1
        legs = (y >= 11) & (y <= 14) & ((x == 5) | (x == 6) | (x == 9) | (x == 10))
        tile[head | legs] = (70, 200, 70)  # green alien
        eyes = (y == 6) & ((x == 5) | (x == 6) | (x == 9) | (x == 10))
        tile[eyes] = (10, 10, 10)
        return tile

    tiles = np.stack([wall, floor, target, box_on_target, box, alien(floor), alien(target)])
    return tiles


_TILES = _draw_tiles()
_PUSH_SIDE = ("below", "above", "to the right of", "to the left of")  # where to stand to push up/down/left/right
MAX_SUBGOALS = 5


def _cell(i: int, W: int) -> str:
    r, c = divmod(i, W)
    return f"(row {r}, col {c})"


# ---------------------------------------------------------------------------------------------
# envs
# ---------------------------------------------------------------------------------------------
class SokobanTextEnv(TextEnv):
    """Sokoban with a text grid observation (RAGEN / verl-agent setting).

    ## Description
    The player must push every box onto a target in a room generated by gym-sokoban's reverse-play
    method (random-walk topology, player and targets on random floor cells, then pulling boxes
    away from the targets). Every generated room is solvable by the expert within `max_steps`.
    See the module docstring for deviations from gym-sokoban.

    ## Action Space
    A string, one of "up", "down", "left", "right" (case-insensitive, surrounding whitespace
    ignored). Walking into a box pushes it if the cell behind it is free. Any other string is
    invalid: nothing moves, reward 0, `info["action_is_valid"] = False`, and the step still counts
    toward `max_steps`. Walking into a wall is valid (reward -0.1, nothing moves).

    ## Observation Space
    A string: the room, one character per cell and rows joined by "\\n" (RAGEN style):
    `#` wall, `_` floor, `O` target, `X` box, `√` box on target, `P` player, `S` player on target.
    Row 0 / column 0 is the top-left corner. The instructions are in `info["task"]` / `env.task`.

    ## Rewards
    -0.1 per valid step; +1 when a box is pushed onto a target; -1 when one is pushed off;
    +10 when all boxes are on targets. Invalid action strings give 0.

    ## Episode End
    Terminated when every box is on a target (`info["won"] = True`). Truncated after `max_steps`
    steps (valid or not) unless terminated on that step.

    ## Arguments
    ```python
    gymnasium.make("himac/Sokoban-v0", dim_room=(6, 6), num_boxes=1, max_steps=15, search_depth=30)
    SokobanTextEnv.from_text("#####\\n#P XO#\\n#####")  # a fixed hand-made room
    ```
    `dim_room`: (rows, cols) including the wall border. `num_boxes`: boxes (= targets).
    `max_steps`: steps before truncation. `search_depth`: ttl of the reverse-play search.
    `room`: a fixed text grid (then `dim_room`/`num_boxes` come from it and `seed` only seeds
    `np_random`). `max_generation_attempts`: rooms drawn before giving up with RuntimeError.

    `env.unwrapped` also offers `expert_actions()`, `expert_subgoals()`, `render_text()`, `task`,
    `player_position`, `box_positions` and `target_positions` (all (row, col)).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        *,
        dim_room: tuple[int, int] = (6, 6),
        num_boxes: int = 1,
        max_steps: int = 15,
        search_depth: int = 30,
        room: str | None = None,
        max_generation_attempts: int = 1000,
        render_mode: str | None = None,
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        self._fixed_room = parse_room(room) if room is not None else None
        if self._fixed_room is not None:
            structure, state = self._fixed_room
            dim_room = structure.shape
            num_boxes = int(((state == BOX) | (state == BOX_ON_TARGET)).sum())
        self.dim_room = (int(dim_room[0]), int(dim_room[1]))
        if min(self.dim_room) < 3 or num_boxes < 1:
            raise ValueError(f"need dim_room >= (3, 3) and num_boxes >= 1, got {dim_room}, {num_boxes}")
        self.num_boxes = int(num_boxes)
        self.search_depth = int(search_depth)
        self.max_generation_attempts = int(max_generation_attempts)
        self.task = f"{TASK_TEXT} {TEXT_LEGEND}"
        h, w = self.dim_room
        self._W = w + 1  # the extra column is the "\n" of the rendering and acts as a wall
        self._steps = (-self._W, self._W, -1, 1)
        self._floor = bytearray(h * self._W)
        self._targets: frozenset[int] = frozenset()
        self._boxes: set[int] = set()
        self._player = 0
        self._on_target = 0
        self._chars: list[str] = []
        self._expert_cache: tuple[Any, list[int]] | None = None

    @classmethod
    def from_text(cls, grid: str, **kwargs: Any) -> "SokobanTextEnv":
        """An env whose every reset restores the room drawn in `grid` (see `parse_room`)."""
        return cls(room=grid, **kwargs)

    # --- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._fixed_room is not None:
            self._load_arrays(*self._fixed_room)
        else:
            self._generate()
        self.num_steps = 0
        return self._obs(), self._make_info(action_is_valid=True)

    def step(self, action: str):
        a = _ACTION_INDEX.get(action) if type(action) is str else None
        if a is None:
            a = _ACTION_INDEX.get(normalize_action(action, lower=True))
        hit_limit = self._count_step()
        if a is None:  # verl-agent's "Still": nothing happens
            reward = 0.0
        else:
            reward = self._push(self._steps[a])
        terminated = self.won
        return self._obs(), reward, terminated, hit_limit and not terminated, self._make_info(action_is_valid=a is not None)

    def admissible_actions(self) -> list[str]:
        return list(ACTIONS)

    def render_text(self) -> str:
        return "".join(self._chars)

    # --- expert -----------------------------------------------------------------------------
    def _solution(self) -> list[int]:
        key = (self._player, frozenset(self._boxes))
        if self._expert_cache is None or self._expert_cache[0] != key:
            sol = solve(self._floor, self._targets, self._player, key[1], W=self._W)
            self._expert_cache = (key, sol or [])
        return self._expert_cache[1]

    def expert_actions(self) -> list[str]:
        """An optimal (fewest steps) action list solving the room from here; [] if solved or stuck."""
        return [ACTIONS[a] for a in self._solution()]

    def expert_subgoals(self) -> list[str]:
        """The expert plan as at most 5 ordered subgoals, one per push segment ([] if solved or stuck).

        Each segment is "Move to (row r, col c), <side of> the box at (row r, col c)" (the cell to push from;
        omitted when already there) then
        "Push the box <dir> [k cells] onto the target at / to (row, col)". When that is longer than 5
        lines, each segment becomes one line; past 5 segments the tail is summarised.
        """
        W, p, boxes = self._W, self._player, set(self._boxes)
        segments: list[list] = []  # [start, end, action, walked_first]
        walked, last = False, None
        for a in self._solution():
            d = self._steps[a]
            nxt = p + d
            if nxt in boxes:
                boxes.remove(nxt)
                boxes.add(nxt + d)
                if last is not None and not walked and last[1] == nxt and last[2] == a:
                    last[1] = nxt + d
                else:
                    last = [nxt, nxt + d, a, walked]
                    segments.append(last)
                walked = False
            else:
                walked = True
            p = nxt

        def push_text(seg, *, from_box: bool) -> str:
            start, end, a, _ = seg
            n = abs(end - start) // abs(self._steps[a])
            what = f"the box at {_cell(start, W)}" if from_box else "the box"
            cells = f" {n} cells" if n > 1 else ""
            where = f"onto the target at {_cell(end, W)}" if end in self._targets else f"to {_cell(end, W)}"
            return f"Push {what} {ACTIONS[a]}{cells} {where}"

        fine = []
        for seg in segments:
            if seg[3]:
                stand = seg[0] - self._steps[seg[2]]
                fine.append(f"Move to {_cell(stand, W)}, {_PUSH_SIDE[seg[2]]} the box at {_cell(seg[0], W)}")
            fine.append(push_text(seg, from_box=not seg[3]))
        if len(fine) <= MAX_SUBGOALS:
            return fine
        coarse = [push_text(seg, from_box=True) for seg in segments]
        if len(coarse) > MAX_SUBGOALS:
            coarse = coarse[: MAX_SUBGOALS - 1] + ["Push the remaining boxes onto their targets"]
        return coarse

    # --- prompt helpers ---------------------------------------------------------------------
    @property
    def player_position(self) -> tuple[int, int]:
        return divmod(self._player, self._W)

    @property
    def box_positions(self) -> list[tuple[int, int]]:
        return sorted(divmod(b, self._W) for b in self._boxes)

    @property
    def target_positions(self) -> list[tuple[int, int]]:
        return sorted(divmod(t, self._W) for t in self._targets)

    # --- internals --------------------------------------------------------------------------
    def _obs(self):
        return "".join(self._chars)

    def _push(self, d: int) -> float:
        """gym-sokoban's push action (a move when no box is ahead); returns the step reward."""
        reward = REWARD_STEP
        p, boxes, targets, chars = self._player, self._boxes, self._targets, self._chars
        nxt = p + d
        if not (0 <= nxt < len(self._floor)) or not self._floor[nxt]:
            return reward
        if nxt in boxes:
            beyond = nxt + d
            if not (0 <= beyond < len(self._floor)) or not self._floor[beyond] or beyond in boxes:
                return reward
            boxes.remove(nxt)
            boxes.add(beyond)
            if nxt in targets:
                reward += REWARD_BOX_OFF
                self._on_target -= 1
            if beyond in targets:
                reward += REWARD_BOX_ON
                self._on_target += 1
                chars[beyond] = "√"
            else:
                chars[beyond] = "X"
            self.won = self._on_target == self.num_boxes
        chars[p] = "O" if p in targets else "_"
        chars[nxt] = "S" if nxt in targets else "P"
        self._player = nxt
        if self.won:
            reward += REWARD_SOLVED
        return reward

    def _generate(self) -> None:
        """gym-sokoban `generate_room`, retried from the same `np_random` stream until the expert
        solves the room within `max_steps`."""
        h, w = self.dim_room
        W, rng = self._W, self.np_random
        num_steps = int(1.7 * (h + w))
        for _ in range(self.max_generation_attempts):
            cells = room_topology(rng, h, w, num_steps=num_steps)
            if len(cells) <= self.num_boxes + 1:
                continue
            pick = rng.choice(len(cells), size=self.num_boxes + 1, replace=False)
            player, *targets = (cells[k][0] * W + cells[k][1] for k in pick)
            floor = bytearray(h * W)
            for r, c in cells:
                floor[r * W + c] = 1
            score, player, boxes = reverse_play(floor, tuple(targets), player, W=W, search_depth=self.search_depth)
            if score <= 0:
                continue
            target_set = frozenset(targets)
            sol = solve(floor, target_set, player, frozenset(boxes), W=W, max_len=self.max_steps)
            if sol is None:
                continue
            self._load(floor, target_set, player, set(boxes))
            self._expert_cache = ((player, frozenset(boxes)), sol)
            return
        raise RuntimeError(
            f"no solvable {self.dim_room} room with {self.num_boxes} boxes within {self.max_steps} steps "
            f"after {self.max_generation_attempts} attempts; raise max_steps or search_depth"
        )

    def _load_arrays(self, structure: np.ndarray, state: np.ndarray) -> None:
        W = self._W
        floor = bytearray(len(self._floor))
        targets, boxes, player = set(), set(), 0
        for (r, c), v in np.ndenumerate(state):
            i = r * W + c
            floor[i] = int(structure[r, c] != WALL)
            if structure[r, c] == TARGET:
                targets.add(i)
            if v in (BOX, BOX_ON_TARGET):
                boxes.add(i)
            elif v == PLAYER:
                player = i
        self._load(floor, frozenset(targets), player, boxes)

    def _load(self, floor: bytearray, targets: frozenset, player: int, boxes: set) -> None:
        self._floor, self._targets, self._player, self._boxes = floor, targets, player, boxes
        self._on_target = len(boxes & targets)
        self.won = self._on_target == self.num_boxes
        chars = []
        for i, f in enumerate(floor):
            if i % self._W == self._W - 1:
                chars.append("\n")
            elif not f:
                chars.append("#")
            elif i in boxes:
                chars.append("√" if i in targets else "X")
            elif i == player:
                chars.append("S" if i in targets else "P")
            else:
                chars.append("O" if i in targets else "_")
        chars[-1] = ""  # no trailing newline
        self._chars = chars


class SokobanVisualEnv(SokobanTextEnv):
    """Sokoban with an RGB image observation (verl-agent's visual setting).

    ## Description
    Same rooms, rules and expert as `SokobanTextEnv` (see its docstring).

    ## Action Space
    As `SokobanTextEnv`: "up", "down", "left", "right"; anything else is an invalid no-op.

    ## Observation Space
    A dict: `"image"` uint8 (rows*16*scale, cols*16*scale, 3) made of drawn 16-px tiles (brick wall,
    dark floor, target = dark tile with red outline and red diamond, yellow crate with an orange X,
    the same crate with a red rim on a target, green alien player), and `"text"`: the task text
    (no grid). `render_text()` still gives the grid.

    ## Rewards
    As `SokobanTextEnv`.

    ## Episode End
    As `SokobanTextEnv`.

    ## Arguments
    ```python
    gymnasium.make("himac/SokobanVisual-v0", scale=1, dim_room=(6, 6), num_boxes=1, max_steps=15)
    ```
    `scale`: integer nearest-neighbour upscaling of the 16-px tiles; other arguments as
    `SokobanTextEnv`. Render modes: "rgb_array" (the image) and "ansi" (the grid).
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(self, *, scale: int = 1, **kwargs: Any):
        super().__init__(**kwargs)
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = int(scale)
        self._tiles = _TILES.repeat(self.scale, axis=1).repeat(self.scale, axis=2)
        t = 16 * self.scale
        h, w = self.dim_room
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, shape=(h * t, w * t, 3), dtype=np.uint8),
                "text": text_observation_space(),
            }
        )
        self.task = f"{TASK_TEXT} {VISUAL_LEGEND}"

    def render_rgb(self) -> np.ndarray:
        """The room as a uint8 (H, W, 3) image."""
        h, w = self.dim_room
        W = self._W
        codes = np.frombuffer(bytes(self._floor), dtype=np.uint8).reshape(h, W)[:, :w].copy()  # 0 wall, 1 floor
        for t in self._targets:
            codes[divmod(t, W)] = TARGET
        for b in self._boxes:
            codes[divmod(b, W)] = BOX_ON_TARGET if b in self._targets else BOX
        codes[divmod(self._player, W)] = PLAYER_ON_TARGET if self._player in self._targets else PLAYER
        t = self._tiles.shape[1]
        return self._tiles[codes].transpose(0, 2, 1, 3, 4).reshape(h * t, w * t, 3)

    def render(self):
        if self.render_mode == "rgb_array":
            return self.render_rgb()
        return super().render()

    def _obs(self):
        return {"image": self.render_rgb(), "text": self.task}
