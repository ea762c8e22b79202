"""Prompt templates for the planner, the executor and the flat agent, and the answer formats.

Owns the text the policy sees and the shape of its answers (read back by `parsers`). Pure Python (numpy only for
the image type); no Ray, no torch, no env imports.

Prompts are chat message lists `[{"role": "system", ...}, {"role": "user", ...}]`; the
`Generator` applies the model's chat template. Shapes (see docs/algorithm.md):

- planner (macro level): task + initial observation -> `<plan>\\n1. ...\\n2. ...\\n</plan>`
  with at most `max_subgoals` numbered subgoals.
- executor (micro level): task, the blueprint, the current subgoal, the history since that
  subgoal began (last `history_length` steps), the current observation and the admissible
  actions -> `<think>...</think><action>...</action>`, optionally followed by `<sub_done>`
  when this action completes the current subgoal.
- flat agent (GRPO / GiGPO baselines, verl-agent style): task, history, observation,
  admissible actions -> `<think>...</think><action>...</action>`.

Visual observations (visual Sokoban): the user message `content` becomes a list of parts,
`[{"type": "text", "text": ...}, {"type": "image", "image": <np.ndarray HxWx3 uint8>},
{"type": "text", "text": ...}]`, with the image where the observation goes (the layout of
HF multimodal processors). Text-only backends keep the text parts only
(`himac_ray.engines.chat.render_chat`). Text observations keep `content` a plain str.

The env descriptions paraphrase verl-agent's prompt templates (Apache-2.0,
agent_system/environments/prompts/) and keep their formats (`PromptFormat.style` "verl", the
paper setting). `PromptFormat.style` "compact" is the small-model recipe: short rules, the
board (on Sokoban with the player's, boxes' and targets' coordinates and what each move does from
the player's cell, both read off the board text), the current subgoal, the
last actions and the admissible actions, at about a third of the tokens. `PromptFormat.answer`
"action" drops the `<think>` part of executor / flat answers (`<action>a</action>` plus an
optional `<sub_done>`), for models too small to reason usefully.

The parsers that read the answers back live in `himac_ray.parsers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from himac_ray.sokoban_text import sokoban_moves, sokoban_positions

# Parsers look at this many leading characters at most (responses are <= 512 tokens anyway).
MAX_PARSE_CHARS = 8192
# Longest accepted action string and subgoal text; longer ones are invalid / clipped.
MAX_ACTION_CHARS = 300
MAX_SUBGOAL_CHARS = 300
# Observation text is clipped in prompts to keep them within the prompt budget (2048 tokens).
MAX_OBS_CHARS = 6000
MAX_HISTORY_OBS_CHARS = 1500

PLAN_FALLBACK = "complete the task"
"""subgoal used when a plan is unparseable and no task text is known"""

# Env kinds (prompt families); `env_kind` maps env ids to them.
SOKOBAN, SOKOBAN_VISUAL, ALFWORLD, WEBSHOP, GENERIC = (
    "sokoban", "sokoban_visual", "alfworld", "webshop", "generic",
)
ENV_KINDS = (SOKOBAN, SOKOBAN_VISUAL, ALFWORLD, WEBSHOP, GENERIC)

Messages = list[dict[str, Any]]


def env_kind(env_id: str) -> str:
    """The prompt family of an env id ("himac/SokobanVisual-v0" -> "sokoban_visual"); a kind maps to itself."""
    key = str(env_id or "").lower()
    if key in ENV_KINDS:
        return key
    if "sokoban" in key:
        return SOKOBAN_VISUAL if "visual" in key else SOKOBAN
    if "alfworld" in key:
        return ALFWORLD
    if "webshop" in key:
        return WEBSHOP
    return GENERIC


PROMPT_STYLES = ("verl", "compact")
PROMPT_VERSION = 5
"""bumped whenever a prompt's text changes: cached warm starts (`himac_ray.warm_start`) of another
version are not reused"""
ANSWER_FORMATS = ("think", "action")


@dataclass(frozen=True)
class PromptFormat:
    """How prompts read and what shape executor / flat answers take (module docstring)."""

    style: str = "verl"
    """verl: verl-agent's prompts (paper setting) | compact: short rules, board, subgoal, actions"""
    answer: str = "think"
    """think: `<think>...</think><action>...</action>` | action: `<action>...</action>` only"""
    sub_done: bool = True
    """executor prompts ask for `<sub_done>` (False: the "without <sub_done>" ablation)"""

    def __post_init__(self):
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {self.style!r}")
        if self.answer not in ANSWER_FORMATS:
            raise ValueError(f"answer format must be one of {ANSWER_FORMATS}, got {self.answer!r}")

    @property
    def require_think(self) -> bool:
        return self.answer == "think"


VERL = PromptFormat()
"""the default: verl-agent prompts, answers with reasoning"""


# --------------------------------------------------------------------------------------------
# Per-env text
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvText:
    """The env-specific pieces of every prompt."""

    intro: str
    """system-message body: what the env is, its rules and its observation legend"""
    think_hint: str
    """what to reason about before acting"""
    plan_hint: str
    """what good subgoals look like for this env"""


_SOKOBAN_RULES = (
    "Your goal is to push every box onto a target. You can only push boxes, never pull them, and "
    "you cannot walk through walls or push a box into a wall or into another box. Avoid pushing a "
    "box into a corner or against a wall where it can no longer reach a target.\n"
    "Actions: up, down, left, right (moving into a box pushes it one cell in that direction)."
)

ENV_TEXT = {
    SOKOBAN: EnvText(
        intro=(
            "You are an expert agent playing Sokoban on a grid.\n\n"
            "# Symbols\n"
            "- `#` wall: blocks movement\n"
            "- `_` floor: open space\n"
            "- `O` target: where a box must go\n"
            "- `X` box: push it onto a target\n"
            "- `√` box on a target\n"
            "- `P` player: you\n"
            "- `S` player standing on a target\n\n"
            "# Rules\n" + _SOKOBAN_RULES
        ),
        think_hint="the positions of the player, the boxes and the targets, and a path that pushes a box toward a target without trapping it",
        plan_hint="each subgoal should name one box and where to move it, or where the player must stand to push it",
    ),
    SOKOBAN_VISUAL: EnvText(
        intro=(
            "You are an expert agent playing Sokoban from images of the grid.\n\n"
            "# Picture\n"
            "- brick tiles are walls: they block movement; dark tiles are floor\n"
            "- the player is the green alien\n"
            "- boxes are yellow crates with an orange X (with a red rim when on a target)\n"
            "- targets are dark tiles with a red outline and a red diamond\n\n"
            "# Rules\n" + _SOKOBAN_RULES
        ),
        think_hint="where the player, the boxes and the targets are in the image, and a path that pushes a box toward a target without trapping it",
        plan_hint="each subgoal should name one box and where to move it, or where the player must stand to push it",
    ),
    ALFWORLD: EnvText(
        intro=(
            "You are an expert agent operating in the ALFRED embodied household environment. You "
            "move between receptacles (countertops, cabinets, fridge, microwave, sinkbasin, ...), "
            "pick up and put down objects, open and close receptacles, and heat, cool, clean or "
            "examine objects. You can carry one object at a time. Every action must be copied "
            "exactly from the list of admissible actions."
        ),
        think_hint="what you have found so far, where the needed object is likely to be, and which admissible action makes progress",
        plan_hint="each subgoal should be one stage such as finding and taking an object, processing it (heat / cool / clean / light), or placing it",
    ),
    WEBSHOP: EnvText(
        intro=(
            "You are an expert autonomous agent shopping on the WebShop e-commerce website. You "
            "search for products with search[<your query>], open results and pages with "
            "click[<item or button>], choose product options (size, color, ...) by clicking them, "
            "and finish by clicking 'buy now' on the product that best matches the instruction, "
            "including its attributes, options and price limit. Page elements are separated by "
            "[SEP]."
        ),
        think_hint="which product attributes, options and price the instruction asks for, and which admissible action gets you closer to buying a matching product",
        plan_hint="each subgoal should be one stage such as searching with good keywords, opening a matching product, choosing its options, and buying it",
    ),
    GENERIC: EnvText(
        intro="You are an expert agent acting in a text environment. Every action must be one of the admissible actions.",
        think_hint="the current situation and which admissible action makes progress",
        plan_hint="each subgoal should be one concrete intermediate stage of the task",
    ),
}


# --------------------------------------------------------------------------------------------
# Prompt builders
# --------------------------------------------------------------------------------------------
_IMAGE_SLOT = "\x00<image-slot>\x00"  # marks where the observation image goes in the user text


def planner_prompt(
    env_id: str, *, task: str, observation: str, max_subgoals: int, image: Any = None, fmt: PromptFormat = VERL
) -> Messages:
    """Chat messages asking the planner for a blueprint of at most `max_subgoals` subgoals.

    Args:
        env_id: env id or kind (see `env_kind`).
        task: the task instruction (`info["task"]`).
        observation: text of the initial observation.
        max_subgoals: K, the most subgoals the plan may hold.
        image: for visual envs, the initial observation image (HxWx3 uint8), else None.
        fmt: prompt style (the planner's answer is a `<plan>` in every format).
    """
    if fmt.style == "compact":
        kind = env_kind(env_id)
        user = (
            f"{_compact_task(kind, task)}{_compact_state(kind, observation, image, task)}"
            f"Write a plan of at most {max_subgoals} short subgoals, one per line:\n<plan>\n1. ...\n</plan>"
        )
        return _messages(COMPACT_INTRO[kind], user, image)
    text = ENV_TEXT[env_kind(env_id)]
    user = (
        f"Your task is to: {_clip(task, MAX_OBS_CHARS)}\n\n"
        f"The initial observation is:\n{_obs_block(observation, image, task)}\n\n"
        "Before anyone acts, write a blueprint: an ordered list of at most "
        f"{max_subgoals} short subgoals that together complete the task. An executor will carry "
        f"them out one at a time, in order; {text.plan_hint}.\n"
        "You may reason first inside <think> </think> tags. Then give the blueprint inside "
        "<plan> </plan> tags, one numbered subgoal per line, for example:\n"
        "<plan>\n1. first subgoal\n2. second subgoal\n</plan>"
    )
    return _messages(text.intro, user, image)


def executor_prompt(
    env_id: str,
    *,
    task: str,
    subgoals: Sequence[str],
    subgoal_index: int,
    history: Sequence[tuple[str, str]],
    observation: str,
    admissible_actions: Sequence[str],
    steps_in_subgoal: int,
    history_length: int = 2,
    image: Any = None,
    fmt: PromptFormat = VERL,
) -> Messages:
    """Chat messages asking the executor for one action toward the current subgoal.

    Args:
        env_id: env id or kind (see `env_kind`).
        task: the task instruction.
        subgoals: the blueprint g_1..g_K.
        subgoal_index: index k of the current subgoal in `subgoals`.
        history: `(observation_text, action)` pairs of the steps taken since subgoal k began,
            oldest first; only the last `history_length` are shown.
        observation: text of the current observation.
        admissible_actions: `info["admissible_actions"]`.
        steps_in_subgoal: steps taken since subgoal k began (can exceed `len(history)`).
        history_length: how many past steps to show.
        image: for visual envs, the current observation image, else None.
        fmt: prompt style and answer format.
    """
    k = min(max(subgoal_index, 0), max(len(subgoals) - 1, 0))
    current = subgoals[k] if subgoals else PLAN_FALLBACK
    if fmt.style == "compact":
        return _compact_step_prompt(env_id, task, observation, image, history, history_length, admissible_actions, fmt,
                                    subgoal=f"Subgoal {k + 1} of {max(len(subgoals), 1)}: {current}\n", current=current)
    text = ENV_TEXT[env_kind(env_id)]
    answer = _verl_answer(text, fmt)
    user = (
        f"Your task is to: {_clip(task, MAX_OBS_CHARS)}\n\n"
        f"Your blueprint (subgoals, completed in order):\n{format_subgoals(subgoals)}\n\n"
        f"You are working on subgoal {k + 1} of {max(len(subgoals), 1)}: {current}\n\n"
        f"{_history_block(history, steps_in_subgoal, history_length, 'on this subgoal', task)}\n"
        f"Your current observation is:\n{_obs_block(observation, image, task)}\n\n"
        f"Your admissible actions are:\n{format_admissible(admissible_actions)}\n\n"
        f"Now choose ONE action that makes progress on the current subgoal. {answer}exactly one "
        "admissible action inside <action> </action> tags."
        + (" If this action completes the current subgoal, write <sub_done> right after </action>." if fmt.sub_done else "")
    )
    return _messages(text.intro, user, image)


def flat_prompt(
    env_id: str,
    *,
    task: str,
    history: Sequence[tuple[str, str]],
    observation: str,
    admissible_actions: Sequence[str],
    steps_taken: int,
    history_length: int = 2,
    image: Any = None,
    fmt: PromptFormat = VERL,
) -> Messages:
    """Chat messages for the flat (non-hierarchical) agent, verl-agent style.

    Args are as in `executor_prompt`, with the history and `steps_taken` covering the episode.
    """
    if fmt.style == "compact":
        return _compact_step_prompt(env_id, task, observation, image, history, history_length, admissible_actions, fmt,
                                    subgoal="")
    text = ENV_TEXT[env_kind(env_id)]
    answer = _verl_answer(text, fmt)
    user = (
        f"Your task is to: {_clip(task, MAX_OBS_CHARS)}\n\n"
        f"{_history_block(history, steps_taken, history_length, 'so far', task)}\n"
        f"Your current observation is:\n{_obs_block(observation, image, task)}\n\n"
        f"Your admissible actions are:\n{format_admissible(admissible_actions)}\n\n"
        f"Now choose ONE action for the current step. {answer}exactly one admissible "
        "action inside <action> </action> tags."
    )
    return _messages(text.intro, user, image)


def format_subgoals(subgoals: Sequence[str]) -> str:
    """`["a", "b"]` -> `"1. a\\n2. b"`."""
    return "\n".join(f"{i + 1}. {g}" for i, g in enumerate(subgoals))


def format_plan(subgoals: Sequence[str]) -> str:
    """The planner's target answer for `subgoals` (what `parse_plan` reads back)."""
    return f"<plan>\n{format_subgoals(subgoals)}\n</plan>"


ACTION_CLOSE = "</action>"
SUB_DONE = "<sub_done>"
"""the executor's subgoal-completion marker, written right after `ACTION_CLOSE`"""
PLAN_CLOSE = "</plan>"


def format_action(action: str, *, think: str = "", sub_done: bool = False, fmt: PromptFormat = VERL) -> str:
    """An executor / flat answer in `fmt.answer` format (what `parse_action` reads back)."""
    reasoning = f"<think>{think}</think>" if fmt.require_think else ""
    return f"{reasoning}<action>{action}{ACTION_CLOSE}" + (SUB_DONE if sub_done else "")


def format_admissible(actions: Sequence[str]) -> str:
    """verl-agent's list rendering: one quoted action per line inside brackets."""
    return "[\n" + ",\n".join(f"'{a}'" for a in actions) + "\n]"


# --------------------------------------------------------------------------------------------
# Compact style
# --------------------------------------------------------------------------------------------
_COMPACT_SOKOBAN = (
    "You play Sokoban. Push the box (X) onto the target (O). Walking into a box pushes it one cell "
    "if the cell behind it is free; boxes cannot be pulled, so never push a box into a corner."
)
COMPACT_INTRO = {
    SOKOBAN: _COMPACT_SOKOBAN + " Board: # wall, _ floor, √ box on target, P player, S player on target.",
    SOKOBAN_VISUAL: _COMPACT_SOKOBAN + " The image shows the board: green alien = you, yellow crate = box, "
    "red diamond = target, bricks = wall.",
    ALFWORLD: "You act in a household text game. Copy exactly one admissible action.",
    WEBSHOP: "You shop on a website: search[query] or click[element]. Buy the product that matches the "
    "instruction, options and price included.",
    GENERIC: "You act in a text game. Copy exactly one admissible action.",
}
"""system message of the compact style, per env kind"""
def _verl_answer(text: EnvText, fmt: PromptFormat) -> str:
    """The start of verl-agent's answer instruction: with reasoning, or straight to the action."""
    if not fmt.require_think:
        return "Give "
    return f"First reason step by step about {text.think_hint}, inside <think> </think> tags. Then give "


def _compact_step_prompt(env_id, task, observation, image, history, history_length, admissible_actions, fmt,
                         *, subgoal: str, current: str = "") -> Messages:
    """An executor (with its `subgoal` line and the `current` subgoal's text) or flat (both "") prompt in the
    compact style."""
    kind = env_kind(env_id)
    user = (
        f"{_compact_task(kind, task)}{_compact_state(kind, observation, image, task, current)}{subgoal}"
        f"{_compact_history(history, history_length)}"
        f"Actions: {_compact_actions(admissible_actions)}\n"
        f"{_compact_answer(fmt, sub_done=bool(subgoal) and fmt.sub_done)}"
    )
    return _messages(COMPACT_INTRO[kind], user, image)


def _compact_task(kind: str, task: str) -> str:
    # Sokoban's task text is its rules, which the compact system message already states
    return "" if kind in (SOKOBAN, SOKOBAN_VISUAL) else f"Task: {_clip(task, MAX_HISTORY_OBS_CHARS)}\n"


def _compact_state(kind: str, observation: str, image: Any, task: str, subgoal: str = "") -> str:
    if image is not None:
        return f"Board: {_IMAGE_SLOT}\n"
    if kind == SOKOBAN:
        board = _clip(observation, MAX_OBS_CHARS).rstrip("\n")
        moves = sokoban_moves(observation, subgoal)
        return f"Board:\n{board}\n{sokoban_positions(observation)}\nMoves: {moves}\n"
    return f"Observation: {_clip(_obs_text(observation, task), MAX_OBS_CHARS)}\n"


def _compact_history(history: Sequence[tuple[str, str]], history_length: int) -> str:
    shown = [a for _, a in list(history)[-history_length:]] if history_length > 0 else []
    return f"Last actions: {', '.join(shown)}\n" if shown else ""


def _compact_actions(actions: Sequence[str]) -> str:
    return ", ".join(str(a) for a in actions) or "any"


def _compact_answer(fmt: PromptFormat, *, sub_done: bool) -> str:
    think = "Think briefly in <think> </think>, then answer" if fmt.require_think else "Answer"
    done = " Add <sub_done> after it if this action completes the subgoal." if sub_done else ""
    return f"{think} <action>one action</action>.{done}"


def _history_block(history: Sequence[tuple[str, str]], steps: int, history_length: int, where: str, task: str) -> str:
    shown = list(history)[-history_length:] if history_length > 0 else []
    if steps <= 0 or not shown:
        return f"You have taken {max(steps, 0)} step(s) {where}.\n"
    first = steps - len(shown) + 1
    lines = [
        (
            f"You have taken {steps} step(s) {where}. The most recent {len(shown)} observation(s) "
            "and the action you took after each:"
        )
    ]
    for i, (obs, action) in enumerate(shown):
        obs = _obs_text(obs, task)
        seen = f"Observation {first + i}: '{_clip(obs, MAX_HISTORY_OBS_CHARS)}', " if obs else ""
        lines.append(f"[{seen}Action {first + i}: '{action}']")
    return "\n".join(lines) + "\n"


def _obs_text(observation: Any, task: str) -> str:
    """The observation text, or "" when it merely repeats the task (visual Sokoban's text part)."""
    text = observation if isinstance(observation, str) else str(observation)
    return "" if task and text.strip() == str(task).strip() else text


def _obs_block(observation: str, image: Any, task: str) -> str:
    text = _clip(_obs_text(observation, task), MAX_OBS_CHARS)
    if image is None:
        return text
    return _IMAGE_SLOT + ("\n" + text if text else "")


def _messages(system: str, user: str, image: Any) -> Messages:
    if image is None:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    before, _, after = user.partition(_IMAGE_SLOT)
    parts: list[dict[str, Any]] = []
    if before:
        parts.append({"type": "text", "text": before})
    parts.append({"type": "image", "image": image})
    if after:
        parts.append({"type": "text", "text": after})
    return [{"role": "system", "content": system}, {"role": "user", "content": parts}]


def _clip(text: Any, limit: int) -> str:
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
