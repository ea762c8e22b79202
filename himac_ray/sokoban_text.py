"""A Sokoban text board as the compact prompts show it: where the player, box and target are, and what each
move does from the player's cell (the cell it reaches, and the move that completes the current subgoal).
Pure string work on the env's text board (rows / cols from 0 at the top-left, as in the env's subgoals); from
himac_ray it imports only the vocabulary (`names`)."""

from __future__ import annotations

import re

from himac_ray.names import MERGE_SEPARATOR

_SOKOBAN_CELLS = {"P": "player", "S": "player", "X": "box", "√": "box", "O": "target"}


def sokoban_positions(board: str) -> str:
    """`"Player (row 1, col 2). Box (row 3, col 3). Target (row 3, col 1)."` from a text board
    (rows / cols from 0 at the top-left, as in the env's subgoals); "" when nothing is found."""
    found: dict[str, list[str]] = {"player": [], "box": [], "target": []}
    for r, line in enumerate(str(board).splitlines()[:64]):
        for c, ch in enumerate(line[:64]):
            what = _SOKOBAN_CELLS.get(ch)
            if what:
                found[what].append(f"(row {r}, col {c})")
            if ch in "S√":
                found["target"].append(f"(row {r}, col {c})")
    parts = [f"{name.capitalize()} {', '.join(cells)}." for name, cells in found.items() if cells]
    return " ".join(parts)


_MOVES = (("up", -1, 0), ("down", 1, 0), ("left", 0, -1), ("right", 0, 1))


_SUBGOAL_CELL = re.compile(r"(?:\bto|onto the target at) (\(row \d+, col \d+\))")
SUBGOAL_REACHED = " completes the subgoal"
"""appended to the move whose resulting cell is the one the current subgoal names"""


def subgoal_cell(subgoal: str) -> tuple[str, str] | None:
    """("push" | "walk", "(row r, col c)"): the cell the subgoal asks the box (a "Push ..." subgoal) or the
    player (any other) to reach — the first "to (row r, col c)" / "onto the target at (row r, col c)" in it, as
    the expert's subgoals and the SFT-trained planner's write them; for a last subgoal that joins the rest
    ("...; then ..."), its last part; None when it names no such cell."""
    text = subgoal.split(MERGE_SEPARATOR)[-1]
    m = _SUBGOAL_CELL.search(text)
    return ("push" if text.strip().lower().startswith("push") else "walk", m.group(1)) if m else None


def sokoban_moves(board: str, subgoal: str = "") -> str:
    """What each move does from the player's cell of a text board, with the cell a walk ends on or a push
    moves the box to, e.g. `"up: wall, down: push box onto target at (row 3, col 1), left: floor -> (row 1, col 0),
    right: push box (blocked)"`; "" when the board has no player. Derived from the observation (the env's rules,
    one step ahead) and the text of the current `subgoal`: the move that brings the player (a walk) or the box (a
    push) to the cell the subgoal names (`subgoal_cell`) is marked "completes the subgoal", which is when the
    executor should say `<sub_done>` (a 135M executor does not learn to match the coordinates itself:
    RESULTS 20.1)."""
    rows = str(board).splitlines()[:64]
    player = next(((r, c) for r, line in enumerate(rows) for c, ch in enumerate(line[:64]) if ch in "PS"), None)
    if player is None:
        return ""

    def cell(r: int, c: int) -> str:
        return rows[r][c] if 0 <= r < len(rows) and 0 <= c < len(rows[r]) else "#"

    goal = subgoal_cell(subgoal)
    out = []
    for name, dr, dc in _MOVES:
        r, c = player[0] + dr, player[1] + dc
        ahead = cell(r, c)
        if ahead == "#":
            what, kind, end = "wall", None, None
        elif ahead in "X√":
            beyond = cell(r + dr, c + dc)
            if beyond in "#X√":
                what, kind, end = "push box (blocked)", None, None
            else:
                kind, end = "push", f"(row {r + dr}, col {c + dc})"
                what = f"push box {'onto target at' if beyond in 'OS' else 'to'} {end}"
        else:
            kind, end = "walk", f"(row {r}, col {c})"
            what = f"{'target' if ahead in 'OS' else 'floor'} -> {end}"
        reached = goal is not None and goal == (kind, end)
        out.append(f"{name}: {what}{SUBGOAL_REACHED if reached else ''}")
    return ", ".join(out)
