"""Sokoban rooms: gym-sokoban's encoding, the reverse-play room generator and the optimal (A*)
solver, as pure functions on flat cell indices (`i = row * W + col`, `W = width + 1`).

Split from `himac_ray/envs/sokoban.py` (the env classes), which imports everything here.
Pure Python + numpy; must not import ray or torch.
"""

from __future__ import annotations

import heapq

import numpy as np

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
