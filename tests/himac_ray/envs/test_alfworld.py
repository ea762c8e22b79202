"""Tests for the built-in ALFWorld replica and the real-ALFWorld adapter (without real data)."""

from __future__ import annotations

import json
import random
import re
import sys
import time
import types

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import himac_ray.envs  # noqa: F401  (registers the env ids)
from himac_ray.envs.alfworld import EXPERTS, HELP, NOTHING, ALFWorldEnv, join_items
from himac_ray.envs.alfworld_world import (
    CAN_CONTAIN,
    OPENABLE,
    SEARCH_TYPES,
    TASK_TYPES,
    UNSEEN_FLOORPLANS,
    get_floorplan,
    is_held_out,
    split_name,
)
from himac_ray.envs.real import alfworld_real
from himac_ray.envs.real.alfworld_real import ALFWorldRealEnv, ALFWorldUnavailableError

SPLITS = ("train", "eval_in_distribution", "eval_out_of_distribution")
INTRO_RE = re.compile(
    r"-= Welcome to TextWorld, ALFRED! =-\n\n"
    r"You are in the middle of a room\. Looking quickly around you, you see "
    r"(a [a-z]+ \d+, )+and a [a-z]+ \d+\.\n\n"
    r"Your task is to: (?P<task>[a-z ]+\.)$"
)


def snapshot(env: ALFWorldEnv) -> tuple:
    e = env.unwrapped
    return (e.render_text(), e._held, e._loc, frozenset(e._opened), frozenset(e._clean),
            frozenset(e._hot), frozenset(e._cool), frozenset(e._toggled), e.won)


def run(env: ALFWorldEnv, actions: list[str]) -> list[str]:
    observations = []
    for a in actions:
        obs, _, _, _, info = env.step(a)
        assert info["action_is_valid"], (a, obs)
        observations.append(obs)
    return observations


def find_env(predicate, *, task_types=(1, 2, 3, 4, 5, 6), split="train", limit=500) -> ALFWorldEnv:
    env = ALFWorldEnv(task_types=task_types, split=split)
    for seed in range(limit):
        env.reset(seed=seed)
        if predicate(env):
            return env
    raise AssertionError("no matching household")


def assert_rejected(env: ALFWorldEnv, action) -> None:
    before = snapshot(env)
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs == NOTHING
    assert info["action_is_valid"] is False
    assert reward == 0.0 and not terminated
    assert snapshot(env) == before


# --- API -------------------------------------------------------------------------------------
def test_check_env_and_registry():
    env = gym.make("himac/ALFWorld-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert isinstance(obs, str)
    assert {"won", "admissible_actions", "action_is_valid", "task", "task_type"} <= info.keys()
    assert info["action_is_valid"] is True and info["won"] is False
    assert info["task_type"] in TASK_TYPES.values()
    assert info["admissible_actions"] == sorted(set(info["admissible_actions"]))
    assert "help" not in info["admissible_actions"]


def test_same_seed_same_episode():
    def rollout(seed):
        env = ALFWorldEnv()
        obs, info = env.reset(seed=seed)
        trace = [obs, info["task"], env.expert_actions()]
        rng = random.Random(0)
        for _ in range(20):
            obs, r, term, trunc, info = env.step(rng.choice(info["admissible_actions"]))
            trace.append((obs, r, term, trunc, tuple(info["admissible_actions"])))
            if term:
                break
        return trace

    assert rollout(7) == rollout(7)
    assert rollout(7) != rollout(8)


def test_opening_text_format():
    env = ALFWorldEnv()
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        m = INTRO_RE.match(obs)
        assert m, obs
        assert info["task"] == m.group("task")
        listed = obs.split("you see ", 1)[1].split(".\n\n")[0]
        assert listed == join_items(list(env.household.receptacles))


def test_join_items():
    assert join_items([]) == "nothing"
    assert join_items(["mug 1"]) == "a mug 1"
    assert join_items(["mug 1", "apple 1"]) == "a apple 1, and a mug 1"
    assert join_items(["mug 1", "mug 2", "mug 10", "bowl 1"]) == "a bowl 1, a mug 10, a mug 2, and a mug 1"


def test_truncation_at_max_steps():
    env = ALFWorldEnv(max_steps=3)
    env.reset(seed=0)
    flags = [env.step("look")[3] for _ in range(3)]
    assert flags == [False, False, True]


# --- expert ----------------------------------------------------------------------------------
@pytest.mark.parametrize("expert", EXPERTS)
@pytest.mark.parametrize("task_type", range(1, 7))
def test_expert_solves_every_seed(task_type, expert):
    env = ALFWorldEnv(task_types=[task_type], expert=expert)
    for seed in range(200):
        obs, info = env.reset(seed=seed)
        assert info["task_type"] == TASK_TYPES[task_type]
        subgoals = env.expert_subgoals()
        assert 1 <= len(subgoals) <= 5
        actions = env.expert_actions()
        assert len(actions) <= env.max_steps
        for i, a in enumerate(actions):
            assert a in info["admissible_actions"], (seed, a)
            obs, reward, terminated, truncated, info = env.step(a)
            assert terminated == (i == len(actions) - 1), (seed, actions, i)
        assert info["won"] and reward == 10.0 and not truncated
        assert env.expert_actions() == [] and env.expert_subgoals() == []


@pytest.mark.parametrize("expert", EXPERTS)
@pytest.mark.parametrize("split", SPLITS)
def test_expert_recovers_from_random_play(split, expert):
    """After random admissible actions (maybe holding the wrong thing), the expert still wins."""
    env = ALFWorldEnv(split=split, expert=expert)
    rng = random.Random(1)
    for seed in range(60):
        obs, info = env.reset(seed=seed)
        for _ in range(rng.randint(0, 12)):
            obs, _, terminated, _, info = env.step(rng.choice(info["admissible_actions"]))
            if terminated:
                break
        if env.won:
            continue
        actions = env.expert_actions()
        run(env, actions)
        assert env.won, (seed, actions)


def test_search_expert_looks_where_the_object_may_be_in_a_fixed_order_and_stops_where_it_shows():
    """Before its first `take`, the search expert visits unseen receptacles that may hold the goal
    object (`SEARCH_TYPES`, never the goal's type), in that order, and the first that shows one
    is where it takes it: its walk follows from what the agent has seen, not from the hidden state."""
    walked = 0
    for seed in range(200):
        env = ALFWorldEnv(task_types=[1, 3, 4, 5, 6], expert="search")
        env.reset(seed=seed)
        hh, actions = env.household, env.expert_actions()
        first_take = next(i for i, a in enumerate(actions) if a.startswith("take "))
        visits = [a.removeprefix("go to ") for a in actions[:first_take] if a.startswith("go to ")]
        taken_from = actions[first_take].rsplit(" from ", 1)[1]
        kinds = [t for t in SEARCH_TYPES[hh.goal_object] if t != hh.goal_receptacle]
        order = sorted((r for r in hh.receptacles if split_name(r)[0] in kinds),
                       key=lambda r: (kinds.index(split_name(r)[0]), split_name(r)[1]))
        holds = {r for o, r in hh.placement.items() if split_name(o)[0] == hh.goal_object}
        stop = next(i for i, r in enumerate(order) if r in holds)
        assert visits == order[:stop + 1] and taken_from == order[stop], (seed, actions, order)
        walked += len(visits) > 1
    assert walked > 50  # most games need a search, not one lucky first visit


def test_subgoals_example_shape():
    env = find_env(lambda e: True, task_types=[3])
    goals = env.expert_subgoals()
    assert goals[0].startswith("find and take a ")
    assert goals[1].startswith("clean the ") and " with the sinkbasin " in goals[1]
    assert goals[2].startswith("put the ") and " in/on the " in goals[2]


# --- rules and feedback ------------------------------------------------------------------------
def test_garbage_actions_never_raise():
    env = ALFWorldEnv()
    env.reset(seed=0)
    for action in ["", "   ", "x" * 10_000, b"\xff\xfe\x00", "中文 🙂 go to", "\x00\x01", None, 42,
                   "Look", "go to", "go  to cabinet 1", "take", "help me"]:
        assert_rejected(env, action)


def test_admissible_with_whitespace_is_valid():
    env = ALFWorldEnv()
    _, info = env.reset(seed=0)
    obs, _, _, _, info = env.step("  look \n")
    assert info["action_is_valid"] and obs.startswith("You are in the middle of a room.")


def test_help_is_valid_but_not_listed():
    env = ALFWorldEnv()
    env.reset(seed=0)
    obs, _, _, _, info = env.step("help")
    assert obs == HELP and info["action_is_valid"] and "help" not in info["admissible_actions"]


def test_not_at_location():
    env = find_env(lambda e: any(split_name(r)[0] not in OPENABLE for r in e.household.placement.values()))
    obj, rec = next((o, r) for o, r in env.household.placement.items() if split_name(r)[0] not in OPENABLE)
    assert_rejected(env, f"take {obj} from {rec}")
    assert_rejected(env, f"examine {rec}")
    closed = next(r for r in env.household.receptacles if split_name(r)[0] in OPENABLE)
    assert_rejected(env, f"open {closed}")


def test_closed_receptacle_blocks_take_and_move():
    def pred(e):
        return any(split_name(r)[0] in OPENABLE and o != e.household.lamp for o, r in e.household.placement.items())

    env = find_env(pred)
    obj, rec = next((o, r) for o, r in env.household.placement.items() if split_name(r)[0] in OPENABLE)
    assert run(env, [f"go to {rec}"]) == [f"You arrive at {rec}. The {rec} is closed."]
    assert_rejected(env, f"take {obj} from {rec}")
    assert_rejected(env, f"examine {obj}")
    obs = run(env, [f"open {rec}"])[0]
    assert obs.startswith(f"You open the {rec}. The {rec} is open. In it, you see ") and f"a {obj}" in obs
    assert run(env, [f"take {obj} from {rec}"]) == [f"You pick up the {obj} from the {rec}."]
    assert run(env, [f"close {rec}"]) == [f"You close the {rec}."]
    assert_rejected(env, f"move {obj} to {rec}")
    run(env, [f"open {rec}"])
    assert run(env, [f"move {obj} to {rec}"]) == [f"You move the {obj} to the {rec}."]


def test_hands_full():
    def pred(e):
        counts = {}
        for o, r in e.household.placement.items():
            if split_name(r)[0] not in OPENABLE and o != e.household.lamp:
                counts.setdefault(r, []).append(o)
        return any(len(v) >= 2 for v in counts.values())

    env = find_env(pred)
    rec, objs = next((r, [o for o, rr in env.household.placement.items() if rr == r])
                     for r in env.household.receptacles
                     if split_name(r)[0] not in OPENABLE
                     and sum(rr == r for o, rr in env.household.placement.items() if o != env.household.lamp) >= 2)
    objs = [o for o in objs if o != env.household.lamp]
    run(env, [f"go to {rec}", f"take {objs[0]} from {rec}"])
    assert run(env, ["inventory"]) == [f"You are carrying: a {objs[0]}."]
    assert_rejected(env, f"take {objs[1]} from {rec}")


def test_processing_needs_the_right_appliance_and_object_in_hand():
    env = find_env(lambda e: True, task_types=[4])  # heat: kitchen with microwave, fridge, sinkbasin
    obj = next(o for o in env.household.placement if split_name(o)[0] == env.household.goal_object)
    rec = env.household.placement[obj]
    assert_rejected(env, f"heat {obj} with microwave 1")  # not there, not held
    run(env, ["go to microwave 1"])
    assert_rejected(env, f"heat {obj} with microwave 1")  # not held
    actions = [f"go to {rec}"] + ([f"open {rec}"] if split_name(rec)[0] in OPENABLE else [])
    run(env, actions + [f"take {obj} from {rec}", "go to fridge 1"])
    assert_rejected(env, f"heat {obj} with fridge 1")
    assert_rejected(env, f"clean {obj} with fridge 1")
    assert_rejected(env, f"heat {obj} with microwave 1")  # not at the microwave
    assert run(env, ["go to microwave 1", f"heat {obj} with microwave 1"])[1] == \
        f"You heat the {obj} using the microwave 1."
    assert run(env, [f"examine {obj}"]) == [f"This is a hot {obj}."]
    run(env, ["go to fridge 1", f"cool {obj} with fridge 1"])
    assert run(env, [f"examine {obj}"]) == [f"This is a cold {obj}."]
    if split_name(obj)[0] in {"apple", "egg", "potato", "tomato", "mug", "cup", "plate"}:
        run(env, ["go to sinkbasin 1", f"clean {obj} with sinkbasin 1"])
        assert run(env, [f"examine {obj}"]) == [f"This is a cool and clean {obj}."]


def test_look_and_examine_receptacle():
    env = ALFWorldEnv()
    env.reset(seed=0)
    rec = env.household.receptacles[0]
    run(env, [f"go to {rec}"])
    assert run(env, ["look"]) == [f"You are facing the {rec}. Next to it, you see nothing."]
    assert_rejected(env, f"go to {rec}")  # already there, as in ALFWorld
    assert run(env, ["inventory"]) == ["You are not carrying anything."]


def test_light_task():
    env = find_env(lambda e: e.household.placement[e.household.lamp] != next(
        r for o, r in e.household.placement.items() if split_name(o)[0] == e.household.goal_object),
        task_types=[2])
    hh = env.household
    holder = hh.placement[hh.lamp]
    obj = next(o for o in hh.placement if split_name(o)[0] == hh.goal_object)
    rec = hh.placement[obj]
    assert re.fullmatch(r"(look at [a-z]+ under the|examine the [a-z]+ with the) (desklamp|floorlamp)\.", hh.task)
    assert run(env, [f"go to {holder}", f"examine {hh.lamp}"])[1] == f"This {hh.lamp} is off."
    assert run(env, [f"use {hh.lamp}"]) == [f"You turn on the {hh.lamp}."]
    assert not env.won  # not holding the object yet
    assert run(env, [f"use {hh.lamp}"]) == [f"You turn on the {hh.lamp}."]  # isToggled is sticky
    opens = [f"open {rec}"] if split_name(rec)[0] in OPENABLE else []
    run(env, [f"go to {rec}", *opens, f"take {obj} from {rec}"])
    assert not env.won
    obs, reward, terminated, _, info = env.step(f"go to {holder}")
    assert terminated and info["won"] and reward == 10.0


def test_two_objects_must_share_a_receptacle():
    def pred(e):
        hh = e.household
        return sum(split_name(r)[0] == hh.goal_receptacle for r in hh.receptacles) >= 2

    env = find_env(pred, task_types=[6])
    hh = env.household
    targets = [r for r in hh.receptacles if split_name(r)[0] == hh.goal_receptacle]
    objs = [o for o in hh.placement if split_name(o)[0] == hh.goal_object][:2]
    for obj, target in zip(objs, targets):
        rec = hh.placement[obj]
        acts = [f"go to {rec}"] + ([f"open {rec}"] if split_name(rec)[0] in OPENABLE and rec not in env._opened else [])
        acts += [f"take {obj} from {rec}", f"go to {target}"]
        acts += [f"open {target}"] if split_name(target)[0] in OPENABLE and target not in env._opened else []
        run(env, acts + [f"move {obj} to {target}"])
    assert not env.won
    run(env, env.expert_actions())
    assert env.won


def test_move_needs_can_contain():
    def pred(e):
        return any(split_name(o)[0] == "pillow" for o in e.household.placement)

    env = find_env(pred)
    obj = next(o for o in env.household.placement if split_name(o)[0] == "pillow")
    rec = env.household.placement[obj]
    run(env, [f"go to {rec}", f"take {obj} from {rec}"])
    bad = next(r for r in env.household.receptacles
               if split_name(r)[0] not in CAN_CONTAIN["pillow"] and split_name(r)[0] not in OPENABLE)
    run(env, [f"go to {bad}"])
    assert_rejected(env, f"move {obj} to {bad}")


# --- splits ----------------------------------------------------------------------------------
def test_splits_are_disjoint():
    def households(split):
        env = ALFWorldEnv(split=split)
        out = []
        for seed in range(300):
            env.reset(seed=seed)
            hh = env.household
            out.append((hh.floorplan, hh.task, tuple(sorted(hh.placement.items()))))
        return out

    train, ind, ood = (households(s) for s in SPLITS)
    assert not set(train) & set(ind)
    assert not set(train) & set(ood) and not set(ind) & set(ood)
    assert all(h[0] not in UNSEEN_FLOORPLANS for h in train + ind)
    assert all(h[0] in UNSEEN_FLOORPLANS for h in ood)
    for split in ("train", "eval_in_distribution"):
        env = ALFWorldEnv(split=split)
        for seed in range(300):
            env.reset(seed=seed)
            hh = env.household
            assert not is_held_out(hh.task_type, hh.goal_object, hh.goal_receptacle or split_name(hh.lamp)[0])
    env = ALFWorldEnv(split="eval_out_of_distribution")
    held = 0
    for seed in range(300):
        env.reset(seed=seed)
        hh = env.household
        held += is_held_out(hh.task_type, hh.goal_object, hh.goal_receptacle or split_name(hh.lamp)[0])
    assert held > 30


def test_floorplans_are_fixed_and_complete():
    for n in (1, 10, 205, 308, 430):
        assert get_floorplan(n) == get_floorplan(n)
    kitchen = {split_name(r)[0] for r in get_floorplan(10).receptacles}
    assert {"fridge", "microwave", "sinkbasin", "countertop", "cabinet"} <= kitchen


def test_bad_arguments():
    with pytest.raises(ValueError):
        ALFWorldEnv(split="test")
    with pytest.raises(ValueError):
        ALFWorldEnv(task_types=[7])
    with pytest.raises(ValueError):
        ALFWorldEnv(task_types=[])
    with pytest.raises(ValueError, match="expert must be one of"):
        ALFWorldEnv(expert="psychic")


# --- speed -----------------------------------------------------------------------------------
def test_speed():
    env = ALFWorldEnv()
    t0 = time.perf_counter()
    for seed in range(200):
        obs, info = env.reset(seed=seed)
    reset_ms = (time.perf_counter() - t0) / 200 * 1e3
    rng = random.Random(0)
    t0 = time.perf_counter()
    n = 5000
    for i in range(n):
        obs, _, terminated, truncated, info = env.step(rng.choice(info["admissible_actions"]))
        if terminated or truncated:
            obs, info = env.reset(seed=i)
    steps_per_s = n / (time.perf_counter() - t0)
    # The targets are 5 ms and 5,000 steps/s; measured values are far better (see the report).
    assert reset_ms < 5.0 and steps_per_s > 5000, (reset_ms, steps_per_s)


# --- real adapter (no real data here) -----------------------------------------------------------
def test_real_adapter_reports_missing_package(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    monkeypatch.setitem(sys.modules, "alfworld", None)  # import alfworld -> ImportError
    with pytest.raises(ALFWorldUnavailableError) as exc:
        gym.make("himac/ALFWorldReal-v0")
    msg = str(exc.value)
    assert isinstance(exc.value, RuntimeError) and isinstance(exc.value, gym.error.Error)
    assert "pip install himac-ray[real-envs]" in msg and "pip install alfworld" in msg
    assert "alfworld-download" in msg and "ALFWORLD_DATA" in msg and str(tmp_path) in msg


class _FakeGame:
    """Stands in for a TextWorld env: two rooms' worth of ALFWorld-like states."""

    def __init__(self, path):
        self.path, self.closed = path, False

    def reset(self):
        return {"feedback": "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. "
                "Looking quickly around you, you see a desk 1, and a sidetable 1.\n\n"
                "Your task is to: put some book on sidetable.",
                "admissible_commands": ["go to desk 1", "go to sidetable 1", "help", "inventory", "look"],
                "won": False}

    def step(self, command):
        if command == "go to desk 1":
            return {"feedback": "You arrive at desk 1. On the desk 1, you see a book 1.",
                    "admissible_commands": ["take book 1 from desk 1", "look", "help", "go to sidetable 1"],
                    "won": False}, 0, False
        return {"feedback": "You move the book 1 to the sidetable 1.", "admissible_commands": ["look"],
                "won": True}, 1, True

    def close(self):
        self.closed = True


def _fake_backend(monkeypatch):
    textworld = types.SimpleNamespace(
        EnvInfos=lambda **kw: kw,
        start=lambda path, request_infos=None, wrappers=(): _FakeGame(path),
    )
    tw_env = types.SimpleNamespace(AlfredDemangler=lambda shuffle=False: None, AlfredInfos=object)
    monkeypatch.setattr(alfworld_real, "_import_backend", lambda: (textworld, tw_env))


def _write_game(root, split, name, task_type, solvable=True):
    game_dir = root / "json_2.1.1" / split / name / "trial_1"
    game_dir.mkdir(parents=True)
    (game_dir / "traj_data.json").write_text(json.dumps({"task_type": task_type}))
    (game_dir / "game.tw-pddl").write_text(json.dumps({"solvable": solvable}))


def test_real_adapter_reports_missing_data(tmp_path, monkeypatch):
    _fake_backend(monkeypatch)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ALFWorldUnavailableError) as exc:
        ALFWorldRealEnv()
    msg = str(exc.value)
    assert "alfworld-download" in msg and "ALFWORLD_DATA" in msg and "pip install" not in msg


def test_real_adapter_maps_the_common_api(tmp_path, monkeypatch):
    _fake_backend(monkeypatch)
    _write_game(tmp_path, "train", "pick_and_place_simple-Book-None-SideTable-301", "pick_and_place_simple")
    _write_game(tmp_path, "train", "pick_heat_then_place_in_recep-Mug-None-Desk-1", "pick_heat_then_place_in_recep")
    _write_game(tmp_path, "train", "pick_and_place_simple-Pen-None-Desk-302", "pick_and_place_simple", solvable=False)
    _write_game(tmp_path, "train", "pick_and_place_simple-Apple-Sliced-None-Desk-303", "pick_and_place_simple")
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    env = ALFWorldRealEnv(task_types=[1], max_steps=5)
    assert len(env.game_files) == 1
    obs, info = env.reset(seed=0)
    assert info["task"] == "put some book on sidetable." and info["task_type"] == "pick_and_place_simple"
    assert info["admissible_actions"] == ["go to desk 1", "go to sidetable 1", "inventory", "look"]
    assert_real = env.step("take book 1 from desk 1")
    assert assert_real[0] == NOTHING and assert_real[4]["action_is_valid"] is False
    obs, reward, terminated, truncated, info = env.step(" go to desk 1 ")
    assert info["action_is_valid"] and obs.startswith("You arrive at desk 1.") and reward == 0.0
    obs, reward, terminated, truncated, info = env.step("take book 1 from desk 1")
    assert terminated and info["won"] and reward == 10.0 and not truncated
    with pytest.raises(ALFWorldUnavailableError):
        ALFWorldRealEnv(split="eval_out_of_distribution")  # no valid_unseen games written
