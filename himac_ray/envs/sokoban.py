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

import heapq
from typing import Any

import numpy as np
from gymnasium import spaces

from himac_ray.envs.base import TextEnv, normalize_action, text_observation_space

# ---------------------------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------------------------
ACTIONS = ("up", "down", "left", "right")
_ACTION_INDEX = {a: k for k, a in enumerate(ACTIONS)}
_DR = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (d_row, d_col) per action, gym-sokoban's CHANGE_COORDINATES

# gym-sokoban's encoding; 6 = player on a target (render only).
WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET = range(7)
SYMBOLS = "#_O√XPS"  # indexed by the encoding above (RAGEN's text symbols)
# Standard Sokoban notation is accepted by `from_text` as well.
_PARSE = {s: k for k, s in enumerate(SYMBOLS)}
_PARSE.update({" ": FLOOR, ".": TARGET, "*": BOX_ON_TARGET, "$": BOX, "@": PLAYER, "+": PLAYER_ON_TARGET})

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

# The five 3x3 floor masks of gym-sokoban's random walk, as (d_row, d_col) offsets from the centre.
_MASKS = (
    ((0, -1), (0, 0), (0, 1)),
    ((-1, 0), (0, 0), (1, 0)),
    ((0, -1), (0, 0), (1, 0)),
    ((0, -1), (0, 0), (1, -1), (1, 0)),
    ((0, 0), (0, 1), (1, 0)),
)


# ---------------------------------------------------------------------------------------------
# pure helpers: generation
# ---------------------------------------------------------------------------------------------
def room_topology(rng: np.random.Generator, h: int, w: int, *, num_steps: int, p_change: float = 0.35):
    """gym-sokoban's random walk; returns the sorted list of floor cells (row, col) inside the border."""
    change = rng.random(num_steps) < p_change
    new_dirs = rng.integers(4, size=num_steps)
    masks = rng.integers(len(_MASKS), size=num_steps)
    direction = _DR[int(rng.integers(4))]
    r, c = int(rng.integers(1, h)), int(rng.integers(1, w))
    floor = set()
    for s in range(num_steps):
        if change[s]:
            direction = _DR[new_dirs[s]]
        r = max(min(r + direction[0], h - 2), 1)
        c = max(min(c + direction[1], w - 2), 1)
        for dr, dc in _MASKS[masks[s]]:
            floor.add((r + dr, c + dc))
    # the border is forced to walls
    return sorted((rr, cc) for rr, cc in floor if 0 < rr < h - 1 and 0 < cc < w - 1)


def reverse_play(
    floor: bytearray, targets: tuple[int, ...], player: int, *, W: int, search_depth: int,
    max_states: int = 300_000,
) -> tuple[int, int, tuple[int, ...]]:
    """Play backwards from the solved state (boxes on `targets`) by pulling; keep the best-scoring state.

    Score = box_swaps * sum_i Manhattan(box_i, target_i), zero while any box sits on a target
    (gym-sokoban `depth_first_search`, RAGEN variant). Returns (score, player, boxes).
    """
    steps = (-W, W, -1, 1)
    target_set = set(targets)
    explored: set = set()
    best = [-1, player, targets]

    def dfs(player: int, boxes: tuple[int, ...], box_swaps: int, last_pull: int, ttl: int) -> None:
        ttl -= 1
        if ttl <= 0 or len(explored) >= max_states:
            return
        key = (player, *sorted(boxes))
        if key in explored:
            return
        explored.add(key)
        score = 0
        if box_swaps and not target_set.intersection(boxes):
            dist = 0
            for b, t in zip(boxes, targets):
                (br, bc), (tr, tc) = divmod(b, W), divmod(t, W)
                dist += abs(br - tr) + abs(bc - tc)
            score = box_swaps * dist
        if score > best[0]:
            best[:] = [score, player, boxes]
        for d in steps:
            nxt = player + d
            if not floor[nxt] or nxt in boxes:
                continue
            behind = player - d
            if behind in boxes:  # pull the box behind the player
                k = boxes.index(behind)
                nboxes = boxes[:k] + (player,) + boxes[k + 1:]
                dfs(nxt, nboxes, box_swaps + (k != last_pull), k, ttl)
            else:
                dfs(nxt, boxes, box_swaps, last_pull, ttl)

    dfs(player, tuple(targets), 0, -1, search_depth)
    return best[0], best[1], tuple(best[2])


# ---------------------------------------------------------------------------------------------
# pure helpers: solving
# ---------------------------------------------------------------------------------------------
def live_cells(floor: bytearray, targets, W: int) -> bytearray:
    """Cells from which a lone box can still be pushed onto some target (others are dead squares)."""
    n = len(floor)
    live = bytearray(n)
    stack = list(targets)
    for t in stack:
        live[t] = 1
    while stack:
        p = stack.pop()
        for d in (-W, W, -1, 1):
            q, s = p - d, p - 2 * d  # box came from q, pushed by a player standing at s
            if 0 <= s < n and 0 <= q < n and floor[q] and floor[s] and not live[q]:
                live[q] = 1
                stack.append(q)
    return live


def solve(
    floor: bytearray, targets: frozenset, player: int, boxes: frozenset, *, W: int,
    max_len: int | None = None, max_nodes: int = 1_000_000,
) -> list[int] | None:
    """Shortest action sequence (indices into ACTIONS) putting every box on a target, or None.

    A* over (player, boxes) with h = sum of each box's Manhattan distance to its nearest target:
    a step moves at most one box one cell, so h is consistent and the result is optimal (with one
    box this is BFS up to ordering). Boxes on dead squares are pruned. `max_len` bounds the length.
    """
    if boxes <= targets:
        return []
    steps = (-W, W, -1, 1)
    n = len(floor)
    live = live_cells(floor, targets, W)
    tcoords = [divmod(t, W) for t in targets]

    def h(bxs) -> int:
        total = 0
        for b in bxs:
            br, bc = divmod(b, W)
            total += min(abs(br - tr) + abs(bc - tc) for tr, tc in tcoords)
        return total

    start = (player, boxes)
    parent: dict = {start: None}
    g_of = {start: 0}
    counter = 0
    heap = [(h(boxes), counter, start)]
    closed = set()
    while heap:
        _, _, state = heapq.heappop(heap)
        if state in closed:
            continue
        closed.add(state)
        if len(closed) > max_nodes:
            return None
        p, bxs = state
        g = g_of[state] + 1
        for a, d in enumerate(steps):
            nxt = p + d
            if not (0 <= nxt < n) or not floor[nxt]:
                continue
            if nxt in bxs:
                beyond = nxt + d
                if not (0 <= beyond < n) or not floor[beyond] or beyond in bxs or not live[beyond]:
                    continue
                nb = (bxs - {nxt}) | {beyond}
                hn = h(nb)
            else:
                nb = bxs
                hn = None
            child = (nxt, nb)
            if child in closed or g_of.get(child, 1 << 30) <= g:
                continue
            if hn is None:
                hn = h(nb)
            if max_len is not None and g + hn > max_len:
                continue
            g_of[child] = g
            parent[child] = (state, a)
            if nb <= targets:  # goal test on generation: first goal reached is optimal (consistent h, unit cost)
                return _path(parent, child)
            counter += 1
            heapq.heappush(heap, (g + hn, counter, child))
    return None


def _path(parent: dict, state) -> list[int]:
    actions = []
    while parent[state] is not None:
        state, a = parent[state]
        actions.append(a)
    return actions[::-1]


def parse_room(grid: str) -> tuple[np.ndarray, np.ndarray]:
    """Text grid (RAGEN symbols or standard `#@$.*+ ` notation) -> (room_structure, room_state).

    Both are int8 arrays in gym-sokoban's encoding; the structure holds walls/floor/targets only.
    """
    rows = [row for row in grid.strip("\n").split("\n")]
    if not rows or len({len(row) for row in rows}) != 1:
        raise ValueError("room grid must be a non-empty rectangle of equal-length rows")
    try:
        state = np.array([[_PARSE[ch] for ch in row] for row in rows], dtype=np.int8)
    except KeyError as err:
        raise ValueError(f"unknown room symbol {err.args[0]!r}; use one of {SYMBOLS!r}") from None
    structure = state.copy()
    structure[(state == BOX) | (state == PLAYER)] = FLOOR
    structure[(state == BOX_ON_TARGET) | (state == PLAYER_ON_TARGET)] = TARGET
    state[state == PLAYER_ON_TARGET] = PLAYER
    num_players = int((state == PLAYER).sum())
    num_boxes = int(((state == BOX) | (state == BOX_ON_TARGET)).sum())
    if num_players != 1:
        raise ValueError(f"room needs exactly one player, found {num_players}")
    if num_boxes < 1 or num_boxes != int((structure == TARGET).sum()):
        raise ValueError("room needs at least one box and as many targets as boxes")
    return structure, state


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

        Each segment is "Move <side of> the box at (row r, col c)" (omitted when already there) then
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
                fine.append(f"Move {_PUSH_SIDE[seg[2]]} the box at {_cell(seg[0], W)}")
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
