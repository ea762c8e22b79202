"""Output parsers: blueprints and actions read back from the planner's and the executor's answers.

Parsers never raise: any input (None, bytes, 50k characters, binary) yields a result, with
`valid=False` when the output does not follow the format. They look only at the first
`MAX_PARSE_CHARS` characters and are linear in them. The formats are written by
`himac_ray.prompts` (`format_plan`, `format_action`); no Ray, no torch, no env imports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from himac_ray.prompts import (
    GENERIC,
    MAX_ACTION_CHARS,
    MAX_PARSE_CHARS,
    MAX_SUBGOAL_CHARS,
    PLAN_FALLBACK,
    SOKOBAN,
    SOKOBAN_VISUAL,
    _clip,
    env_kind,
)

# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------
# Every pattern is linear in the text: no two whitespace runs may be split between each other on
# a failed match (`<\s*/?\s*x` backtracks quadratically over `<` + many spaces), so an optional
# `/` takes its own trailing whitespace and numbered lines are stripped in Python, not by `\s*$`.
_TAG_RE = re.compile(r"<\s*(?:(/)\s*)?(think|action|plan|sub_done)\s*(?:(/)\s*)?>", re.IGNORECASE)
_NUMBERED_RE = re.compile(r"\s*(?:step\s*)?(\d{1,3})\s*[.):\-](.*)", re.IGNORECASE)
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")
_PLACEHOLDER_RE = re.compile(r"^(\w+)\[<[^>]*>\]$")
_SOKOBAN_WORDS = ("up", "down", "left", "right")


def _as_text(text: Any) -> str:
    """Whatever the model produced, as a str of at most MAX_PARSE_CHARS characters."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[: 4 * MAX_PARSE_CHARS]).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = "" if text is None else repr(text)[:MAX_PARSE_CHARS]
    return text[:MAX_PARSE_CHARS]


def _tags(text: str) -> list[tuple[str, str, int, int]]:
    """`(name, kind, start, end)` for every known tag; kind is "open", "close" or "self"."""
    out = []
    for m in _TAG_RE.finditer(text):
        kind = "close" if m.group(1) else ("self" if m.group(3) else "open")
        out.append((m.group(2).lower(), kind, m.start(), m.end()))
    return out


def _only_span(tags, name: str) -> tuple[int, int] | None:
    """`(content_start, content_end)` of the single `<name>...</name>` pair, or None if absent/duplicated."""
    opens = [t for t in tags if t[0] == name and t[1] == "open"]
    closes = [t for t in tags if t[0] == name and t[1] == "close"]
    if len(opens) != 1 or len(closes) != 1 or closes[0][2] < opens[0][3]:
        return None
    return opens[0][3], closes[0][2]


def parse_plan(text: Any, max_subgoals: int, *, task: str = "") -> tuple[list[str], bool]:
    """Read a blueprint from the planner's answer; never raises.

    Valid means: exactly one `<plan>...</plan>` pair, no other known tag inside it, and 1..K lines
    numbered `1.` / `1)` / `1:` inside it (other lines are ignored). More than K numbered lines
    keeps the first K and is invalid. No usable subgoal -> the fallback plan `[task]` (or
    `[PLAN_FALLBACK]` when `task` is empty) with valid False. Subgoals are clipped to
    MAX_SUBGOAL_CHARS characters.

    Returns:
        subgoals: 1..max_subgoals strings (never empty).
        valid: whether the answer followed the format.
    """
    fallback = fallback_plan(task)
    try:
        text = _as_text(text)
        tags = _tags(text)
        span = _only_span(tags, "plan")
        if span is None:
            return fallback, False
        if any(span[0] <= t[2] < span[1] for t in tags):  # nested / stray tags inside the plan
            return fallback, False
        subgoals = []
        for line in text[span[0] : span[1]].splitlines():
            m = _NUMBERED_RE.match(line)
            subgoal = m.group(2).strip() if m else ""
            if subgoal and not _CONTROL_RE.search(subgoal):
                subgoals.append(_clip(subgoal, MAX_SUBGOAL_CHARS))
        if not subgoals:
            return fallback, False
        k = max(int(max_subgoals), 1)
        return subgoals[:k], len(subgoals) <= k
    except Exception:  # noqa: BLE001  (parsers never raise; a bug here must not kill a rollout)
        return fallback, False


def fallback_plan(task: Any) -> list[str]:
    """The blueprint used when a plan is unparseable: the task itself as the single subgoal."""
    task = task.strip() if isinstance(task, str) else ""
    return [_clip(task, MAX_SUBGOAL_CHARS) if task else PLAN_FALLBACK]


def parse_action(
    text: Any, admissible: Sequence[str] | None = None, *, env_id: str = "", require_think: bool = True
) -> tuple[str, bool, bool]:
    """Read one action (and the `<sub_done>` flag) from an executor / flat-agent answer; never raises.

    Format: `<think>...</think>` (if `require_think`) then `<action>...</action>`, each tag pair
    exactly once and in that order, optionally followed by `<sub_done>` (also `<sub_done/>`).
    The action is stripped; it is invalid when empty, longer than MAX_ACTION_CHARS, containing
    `<`, `>`, control characters or CJK characters (verl-agent rejects the latter), or when
    `admissible` is given (non-empty) and the action matches none of its entries.

    Matching against `admissible` is case- and whitespace-insensitive and returns the admissible
    spelling. Entries like `search[<your query>]` accept any non-empty argument. For Sokoban
    (`env_id` of kind sokoban / sokoban_visual) an action naming exactly one direction word
    ("Up", "move left") maps to that direction.

    `<sub_done>` counts only after a well-formed `</action>` (it is ignored inside `<think>`).

    Returns:
        action: the command to send to the env: the admissible spelling when valid, otherwise
            the raw (clipped) text inside `<action>` or "" when there is none.
        valid: whether the answer followed the format and named an admissible action.
        sub_done: whether `<sub_done>` followed the action.
    """
    try:
        return _parse_action(_as_text(text), admissible, env_kind(env_id), require_think)
    except Exception:  # noqa: BLE001  (parsers never raise)
        return "", False, False


def _parse_action(text: str, admissible, kind: str, require_think: bool) -> tuple[str, bool, bool]:
    tags = _tags(text)
    act = _only_span(tags, "action")
    if act is None:
        return "", False, False
    raw = text[act[0] : act[1]].strip()
    action = _clip(raw, MAX_ACTION_CHARS)
    action = _CONTROL_RE.sub("", action)
    sub_done = any(t[0] == "sub_done" and t[1] in ("open", "self") and t[2] >= act[1] for t in tags)
    # Every tag other than sub_done must belong to the think / action pairs.
    if any(t[0] == "plan" for t in tags) or any(act[0] <= t[2] < act[1] for t in tags):
        return action, False, sub_done
    if require_think:
        think = _only_span(tags, "think")
        if think is None or think[1] > act[0]:
            return action, False, sub_done
    elif [t for t in tags if t[0] == "think"] and _only_span(tags, "think") is None:
        return action, False, sub_done
    if (
        not raw
        or len(raw) > MAX_ACTION_CHARS
        or "<" in raw
        or ">" in raw
        or _CONTROL_RE.search(raw)
        or _CJK_RE.search(text)
    ):
        return action, False, sub_done
    matched = match_admissible(raw, admissible, kind=kind)
    if matched is None:
        return action, False, sub_done
    return matched, True, sub_done


def match_admissible(action: str, admissible: Sequence[str] | None, *, kind: str = GENERIC) -> str | None:
    """The admissible spelling of `action`, or None when it is not admissible.

    No (or an empty) admissible list accepts any action as is (Sokoban still canonicalises
    direction words).
    """
    norm = " ".join(action.split()).lower()
    if kind in (SOKOBAN, SOKOBAN_VISUAL):
        words = re.findall(r"[a-z]+", norm)
        hits = {w for w in words if w in _SOKOBAN_WORDS}
        if norm not in _SOKOBAN_WORDS and len(hits) == 1:
            norm = hits.pop()
    if not admissible:
        return norm if kind in (SOKOBAN, SOKOBAN_VISUAL) else action
    for candidate in admissible:
        if " ".join(str(candidate).split()).lower() == norm:
            return candidate
    for candidate in admissible:  # templated entries such as search[<your query>]
        m = _PLACEHOLDER_RE.match(str(candidate).strip())
        if m and norm.startswith(m.group(1).lower() + "[") and norm.endswith("]") and len(norm) > len(m.group(1)) + 2:
            arg = " ".join(action.strip()[len(m.group(1)) + 1 : -1].split())
            return f"{m.group(1)}[{arg}]" if arg else None
    return None
