"""Prompt builders (himac_ray.prompts) and the never-raising parsers (himac_ray.parsers)."""

import numpy as np
import pytest

from himac_ray import parsers, prompts
from himac_ray.parsers import parse_action, parse_plan
from himac_ray.prompts import (
    env_kind,
    executor_prompt,
    flat_prompt,
    format_action,
    format_plan,
    planner_prompt,
)

ENV_IDS = ["himac/Sokoban-v0", "himac/SokobanVisual-v0", "himac/ALFWorld-v0", "himac/WebShop-v0"]
GARBAGE = [
    "",
    "   ",
    None,
    b"\x00\xff\xfe<action>up</action>",
    "x" * 50_000,
    "<think>" * 10_000,
    "<action>" + "a" * 50_000 + "</action>",
    "no tags at all, just up",
    "<think>a</think><action><action>up</action></action>",
    "<think><think>a</think></think><action>up</action>",
    "<action>up</action><think>late</think>",
    "<think>a</think><action>up",
    "<think>a</think><action></action>",
    "<think>a</think><action>  </action>",
    "<think>a</think><action>up</action><action>down</action>",
    "".join(chr(i) for i in range(2000)),
    "<think>向上</think><action>up</action>",
    "<think>a</think><action>up\x00</action>",
    12345,
]


def test_env_kind():
    assert [env_kind(e) for e in ENV_IDS] == ["sokoban", "sokoban_visual", "alfworld", "webshop"]
    assert env_kind("himac/ALFWorldReal-v0") == "alfworld"
    assert env_kind("himac/WebShopReal-v0") == "webshop"
    assert env_kind("sokoban") == "sokoban"
    assert env_kind("something/else") == "generic"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_prompts_are_chat_lists(env_id):
    common = {"task": "do the thing", "observation": "OBS-TEXT", "admissible_actions": ["up", "down"]}
    plan = planner_prompt(env_id, task="do the thing", observation="OBS-TEXT", max_subgoals=3)
    ex = executor_prompt(
        env_id, subgoals=["first", "second"], subgoal_index=1, history=[("o1", "a1"), ("o2", "a2"), ("o3", "a3")],
        steps_in_subgoal=3, history_length=2, **common,
    )
    flat = flat_prompt(env_id, history=[], steps_taken=0, **common)
    for chat in (plan, ex, flat):
        assert [m["role"] for m in chat] == ["system", "user"]
        assert all(isinstance(m["content"], str) for m in chat)
    assert "at most 3" in plan[1]["content"] and "<plan>" in plan[1]["content"]
    user = ex[1]["content"]
    assert "1. first\n2. second" in user and "subgoal 2 of 2: second" in user
    assert "<sub_done>" in user and "'up',\n'down'" in user
    # only the last `history_length` steps, numbered by their position in the subgoal
    assert "o1" not in user and "Observation 2: 'o2', Action 2: 'a2'" in user and "Action 3: 'a3'" in user
    assert "<sub_done>" not in flat[1]["content"] and "OBS-TEXT" in flat[1]["content"]


def test_visual_prompt_has_image_part():
    img = np.zeros((96, 96, 3), np.uint8)
    chat = executor_prompt(
        "himac/SokobanVisual-v0", task="t", subgoals=["g"], subgoal_index=0, history=[], observation="",
        admissible_actions=["up"], steps_in_subgoal=0, image=img,
    )
    parts = chat[1]["content"]
    assert isinstance(parts, list)
    kinds = [p["type"] for p in parts]
    assert kinds == ["text", "image", "text"] and parts[1]["image"] is img
    text = "".join(p.get("text", "") for p in parts)
    assert "Your current observation is:" in text and "admissible actions" in text
    plan = planner_prompt("himac/SokobanVisual-v0", task="t", observation="caption", max_subgoals=2, image=img)
    assert [p["type"] for p in plan[1]["content"]] == ["text", "image", "text"]


def test_parse_plan():
    assert parse_plan(format_plan(["go left", "push box"]), 4) == (["go left", "push box"], True)
    text = "<think>hmm</think>\n<plan>\n1) a\nnot numbered\n2: b\n 3. c \n</plan> trailing"
    assert parse_plan(text, 4) == (["a", "b", "c"], True)
    # more than K: keep the first K, invalid
    assert parse_plan(format_plan(list("abcdef")), 3) == (["a", "b", "c"], False)
    # fallback: the task itself, invalid
    for bad in ["", None, "1. a\n2. b", "<plan></plan>", "<plan>no numbers</plan>", "<plan>1. a", "<plan><plan>1. a</plan></plan>",
                "<plan>1. a</plan><plan>1. b</plan>", "<plan>1. <action>x</action></plan>", "x" * 50_000, b"\xff\x00"]:
        assert parse_plan(bad, 3, task="the task") == (["the task"], False), bad
    assert parse_plan("", 3) == ([prompts.PLAN_FALLBACK], False)
    long = parse_plan("<plan>1. " + "z" * 5000 + "</plan>", 3)[0][0]
    assert len(long) <= prompts.MAX_SUBGOAL_CHARS


def test_parse_action_valid():
    dirs = ["up", "down", "left", "right"]
    assert parse_action(format_action("up", think="x"), dirs, env_id="himac/Sokoban-v0") == ("up", True, False)
    assert parse_action("<think>x</think>\n<action> LEFT </action>\n<sub_done>", dirs, env_id="sokoban") == ("left", True, True)
    assert parse_action("<think></think><action>Move Down.</action>", dirs, env_id="sokoban") == ("down", True, False)
    assert parse_action("<THINK>x</THINK><Action>right</Action><sub_done/>", dirs, env_id="sokoban") == ("right", True, True)
    # sub_done only counts after </action>
    assert parse_action("<think>I'll say <sub_done> later</think><action>up</action>", dirs, env_id="sokoban")[2] is False
    # two directions: ambiguous
    assert parse_action("<think></think><action>up then left</action>", dirs, env_id="sokoban")[1] is False
    adm = ["go to desk 1", "take mug 1 from desk 1", "look"]
    assert parse_action("<think>a</think><action>Go to  desk 1</action>", adm, env_id="alfworld") == ("go to desk 1", True, False)
    assert parse_action("<think>a</think><action>go to desk 9</action>", adm, env_id="alfworld") == ("go to desk 9", False, False)
    ws = ["search[<your query>]", "click[buy now]"]
    assert parse_action("<think>a</think><action>search[red  shoes ]</action>", ws, env_id="webshop") == ("search[red shoes]", True, False)
    assert parse_action("<think>a</think><action>click[Buy Now]</action>", ws, env_id="webshop") == ("click[buy now]", True, False)
    assert parse_action("<think>a</think><action>click[b000]</action>", ws, env_id="webshop")[1] is False
    assert parse_action("<think>a</think><action>search[]</action>", ws, env_id="webshop")[1] is False
    # no admissible list: any well-formed action is valid
    assert parse_action("<think>a</think><action>anything</action>", None) == ("anything", True, False)
    assert parse_action("<plan>1. x</plan><think>a</think><action>up</action>", dirs, env_id="sokoban")[1] is False
    assert parse_action("<action>up</action>", dirs, env_id="sokoban", require_think=False) == ("up", True, False)


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_parsers_never_raise_on_garbage(garbage):
    action, valid, sub_done = parse_action(garbage, ["up", "down", "left", "right"], env_id="himac/Sokoban-v0")
    assert isinstance(action, str) and len(action) <= prompts.MAX_ACTION_CHARS
    assert valid is False and isinstance(sub_done, bool)
    subgoals, pvalid = parse_plan(garbage, 3, task="t")
    assert subgoals and pvalid is False


def test_format_round_trip():
    text = format_action("take mug 1 from desk 1", think="the mug is here", sub_done=True)
    assert parse_action(text, ["take mug 1 from desk 1"], env_id="alfworld") == ("take mug 1 from desk 1", True, True)


WHITESPACE_ATTACKS = [
    "<" + " " * 8000,
    "<" + " " * 4000 + "/" + " " * 4000,
    "<action" + " " * 8000,
    "<action" + " " * 4000 + "/" + " " * 4000,
    "<plan>1." + " " * 8000 + "x",
    "<plan>\n" + "1. a" + " \t" * 4000 + "b\n</plan>",
    "<plan>\n" + " " * 8000 + "\n</plan>",
    "<think>" + "< " * 4000,
]


@pytest.mark.parametrize("text", WHITESPACE_ATTACKS, ids=range(len(WHITESPACE_ATTACKS)))
def test_parsers_are_linear_on_whitespace_runs(text):
    import time

    start = time.perf_counter()
    parse_plan(text, 4, task="t")
    parse_action(text, ["up"], env_id="himac/Sokoban-v0")
    parse_action(text, require_think=False)
    # a quadratic pattern takes seconds on these 8k-character answers; a linear one milliseconds
    assert time.perf_counter() - start < 0.25


def test_linear_patterns_match_the_original_ones():
    """The rewritten tag / numbered-line patterns read every answer as the original regexes did."""
    import re

    old_tag = re.compile(r"<\s*(/?)\s*(think|action|plan|sub_done)\s*(/?)\s*>", re.IGNORECASE)
    old_numbered = re.compile(r"^\s*(?:step\s*)?(\d{1,3})\s*[.):\-]\s*(.*?)\s*$", re.IGNORECASE)
    rng = np.random.default_rng(0)
    pieces = ["<", ">", "/", " ", "\t", "\u00a0", "think", "ACTION", "plan", "sub_done", "1", "12", "1234",
              ".", ")", ":", "-", "step", "x", "\u3000"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces, size=int(rng.integers(1, 14))))
        old = [(m.group(2).lower(), "close" if m.group(1) else ("self" if m.group(3) else "open"), m.start(), m.end())
               for m in old_tag.finditer(text)]
        assert parsers._tags(text) == old, text
        m_old, m_new = old_numbered.match(text), parsers._NUMBERED_RE.match(text)
        assert (m_old.group(2) if m_old else None) == (m_new.group(2).strip() if m_new else None), text
