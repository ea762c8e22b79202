"""The batched episode driver against the real built-in envs, played by a scripted expert."""

from __future__ import annotations

import importlib.util
import itertools
import re

import gymnasium as gym
import numpy as np
import pytest

import himac_ray.envs  # noqa: F401  (registers env ids)
from himac_ray import prompts, rollout
from himac_ray.generation import SamplingParams, ScriptedGenerator
from himac_ray.rollout import run_rollout
from himac_ray.sft.expert import ExpertProgress, expert_think

SOKOBAN = "himac/Sokoban-v0"
SOKOBAN_VISUAL = "himac/SokobanVisual-v0"
ALFWORLD = "himac/ALFWorld-v0"
WEBSHOP = "himac/WebShop-v0"
# two-box Sokoban so blueprints have several subgoals
SOKOBAN2 = {"dim_room": (7, 7), "num_boxes": 2, "max_steps": 30}


def _module_missing(name: str) -> bool:
    return importlib.util.find_spec(f"himac_ray.envs.{name}") is None


ENVS = [
    pytest.param(SOKOBAN, SOKOBAN2, id="sokoban"),
    pytest.param(SOKOBAN_VISUAL, {}, id="sokoban_visual"),
    pytest.param(ALFWORLD, {}, id="alfworld", marks=pytest.mark.skipif(_module_missing("alfworld"), reason="himac_ray/envs/alfworld.py not written yet")),
    pytest.param(WEBSHOP, {}, id="webshop", marks=pytest.mark.skipif(_module_missing("webshop"), reason="himac_ray/envs/webshop.py not written yet")),
]


class TwinEnv(gym.Wrapper):
    """A real env plus a twin reset with the same seed; the expert steps the twin one action ahead
    to learn whether its action completes the current subgoal. The env code is untouched."""

    def __init__(self, env, twin):
        super().__init__(env)
        self.twin = twin
        self.pending = None
        self.done = False
        self.steps = 0
        self.progress = None

    def reset(self, *, seed=None, options=None):
        self.twin.reset(seed=seed, options=options)
        self.pending, self.done, self.steps = None, False, 0
        return self.env.reset(seed=seed, options=options)

    def lookahead(self, action):
        assert self.pending is None
        self.pending = action
        return self.twin.step(action)

    def step(self, action):
        if self.pending is None:
            self.twin.step(action)
        assert self.pending is None or action == self.pending, (action, self.pending)
        self.pending = None
        out = self.env.step(action)
        self.steps += 1
        self.done = out[2] or out[3] or self.steps >= self.env.unwrapped.max_steps
        return out


def _text(chat) -> str:
    content = chat[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def _text_only(chat):
    return [{"role": m["role"], "content": _text([m])} for m in chat]


class ExpertGenerator(ScriptedGenerator):
    """Plays the env's expert: blueprint = expert_subgoals() fitted to K, action = expert_actions()[0]
    with `<sub_done>` when the twin shows the current subgoal completed (sft.ExpertProgress)."""

    def __init__(self, max_subgoals: int, *, sub_done: bool = True, plan_override=None):
        super().__init__(lambda chat, i: next(self._queue))
        self.max_subgoals = max_subgoals
        self.sub_done = sub_done
        self.plan_override = plan_override  # (sample_index, expert_blueprint) -> str
        self.envs: list[TwinEnv] = []
        self.calls: list[tuple[int, int]] = []  # (prompts, n) per generate call
        self.act_chats: list = []

    def factory(self, env_id, **kwargs):
        env = TwinEnv(gym.make(env_id, **kwargs), gym.make(env_id, **kwargs))
        self.envs.append(env)
        return env

    def _progress(self, env):
        if env.progress is None:
            env.progress = ExpertProgress(env.twin, self.max_subgoals, task=env.twin.unwrapped.task)
        return env.progress

    def generate(self, chats, params):
        self.calls.append((len(chats), params.n))
        live = [e for e in self.envs if not e.done]
        texts = []
        if "write a blueprint" in _text(chats[0]):
            assert len(live) == len(chats) * params.n
            for g in range(len(chats)):
                for j in range(params.n):
                    blueprint = self._progress(live[g * params.n + j]).blueprint
                    plan = prompts.format_plan(blueprint)
                    texts.append(self.plan_override(j, blueprint) if self.plan_override else plan)
        else:
            assert len(live) == len(chats) and params.n == 1
            for env, chat in zip(live, chats):
                self.act_chats.append(chat)
                texts.append(self._act(env, _text(chat)))
        self._queue = iter(texts)
        return super().generate([_text_only(c) for c in chats], params)

    def _act(self, env, prompt: str) -> str:
        progress = self._progress(env)
        action = env.twin.unwrapped.expert_actions()[0]
        _, _, _, _, info = env.lookahead(action)
        completed = progress.after_step(bool(info["won"]))
        m = re.search(r"You are working on subgoal (\d+) of \d+: (.*)", prompt)
        done = bool(m) and self.sub_done and completed > int(m.group(1)) - 1
        think = expert_think(m.group(2) if m else None, action, done)
        return prompts.format_action(action, think=think, sub_done=done)


def _by_traj(records):
    out = {}
    for r in records:
        out.setdefault(r.traj_id, []).append(r)
    return out


@pytest.mark.parametrize("env_id, env_kwargs", ENVS)
def test_macro_expert_solves_every_env(env_id, env_kwargs):
    seeds, G, K = [0, 1], 2, 4
    gen = ExpertGenerator(K)
    res = run_rollout(
        generator=gen, env_id=env_id, env_kwargs=env_kwargs, seeds=seeds, mode="macro", group_size=G,
        max_subgoals=K, env_factory=gen.factory,
    )
    assert res.metrics["success_rate"] == 1.0, res.episodes
    assert res.metrics["invalid_action_rate"] == 0.0 and res.metrics["plan_fallback_rate"] == 0.0
    assert len(res.episodes) == len(seeds) * G
    plans = [r for r in res.records if r.level == "plan"]
    acts = [r for r in res.records if r.level == "act"]
    assert len(plans) == len(seeds) * G and len(acts) == res.metrics["env_steps"]
    # groups share seeds: one group per seed, G episodes each, same initial anchor
    for i, seed in enumerate(seeds):
        group = [r for r in plans if r.group_id == f"macro-{i}-seed{seed}"]
        assert len(group) == G and {r.seed for r in group} == {seed}
        assert len({r.anchor for r in group}) == 1 and len({r.traj_id for r in group}) == G
    for recs in _by_traj(res.records).values():
        assert recs[0].level == "plan" and [r.step for r in recs[1:]] == list(range(len(recs) - 1))
        assert all(r.won and r.episode_return == pytest.approx(sum(x.reward for x in recs)) for r in recs)
        assert all(r.num_subgoals == recs[0].num_subgoals for r in recs)
        # <sub_done> advances the subgoal index by one at the next step
        idx = [r.subgoal_index for r in recs[1:]]
        for a, b in itertools.pairwise(recs[1:]):
            assert b.subgoal_index == a.subgoal_index + (a.sub_done and a.subgoal_index < a.num_subgoals - 1)
        assert idx == sorted(idx)
    assert res.metrics["sub_done_advances"] > 0 and res.metrics["budget_advances"] == 0
    # batching: one planner call, then one call per decision round across all live episodes
    assert gen.calls[0] == (len(seeds), G)
    assert len(gen.calls) == 1 + max(e["steps"] for e in res.episodes) == res.metrics["gen_calls"]
    assert gen.calls[1] == (len(seeds) * G, 1)
    assert set(res.blueprints) == set(seeds)
    if env_id == ALFWORLD:
        assert all(r.extra.get("task_type") for r in res.records)


def test_separate_planner_generator_and_progress():
    planner = ScriptedGenerator(lambda chat, i: f"<plan>\n1. solve it ({i})\n</plan>")
    executor = ScriptedGenerator(lambda chat, i: "<think>t</think><action>left</action>")
    seen = []
    res = run_rollout(
        generator=executor, planner_generator=planner, env_id=SOKOBAN, env_kwargs={"max_steps": 3}, seeds=[0, 1],
        mode="macro", group_size=2, progress=seen.append,
    )
    assert sorted(e["subgoals"][0] for e in res.episodes) == ["solve it (0)", "solve it (0)", "solve it (1)", "solve it (1)"]
    assert [r.response_text for r in res.records if r.level == "plan"][:2] == [
        "<plan>\n1. solve it (0)\n</plan>", "<plan>\n1. solve it (1)\n</plan>"]
    assert [p["phase"] for p in seen] == ["plan", "act", "act", "act"]
    assert seen[-1]["finished"] == seen[-1]["total"] == 4 and seen[-1]["live"] == 0


def test_visual_records_carry_png_and_image_parts():
    gen = ExpertGenerator(3)
    res = run_rollout(generator=gen, env_id=SOKOBAN_VISUAL, seeds=[3], mode="flat", group_size=2, env_factory=gen.factory)
    assert res.metrics["success_rate"] == 1.0
    for r in res.records:
        assert r.image.startswith(b"\x89PNG") and "[image sha1:" in r.anchor
    chat = gen.act_chats[0]
    assert [p["type"] for p in chat[1]["content"]] == ["text", "image", "text"]
    assert isinstance(chat[1]["content"][1]["image"], np.ndarray)


def test_budget_fallback_advances_without_sub_done():
    gen = ExpertGenerator(4, sub_done=False)
    res = run_rollout(
        generator=gen, env_id=SOKOBAN, env_kwargs=SOKOBAN2, seeds=[0, 1, 2], mode="macro", group_size=1,
        max_subgoals=4, subgoal_step_budget=2, env_factory=gen.factory,
    )
    assert res.metrics["sub_done_advances"] == 0 and res.metrics["budget_advances"] > 0
    for recs in _by_traj(res.records).values():
        k = recs[0].num_subgoals
        idx = [r.subgoal_index for r in recs if r.level == "act"]
        # two steps per subgoal, then the last one until the episode ends
        assert idx == [min(t // 2, k - 1) for t in range(len(idx))]
        assert not any(r.sub_done for r in recs)


def test_default_budget_is_ceil_max_steps_over_blueprint_len():
    assert rollout.subgoal_budget(15, 4) == 4 and rollout.subgoal_budget(15, 1) == 15 and rollout.subgoal_budget(15, 4, 2) == 2


def test_flat_mode_groups_per_seed():
    gen = ExpertGenerator(4)
    res = run_rollout(generator=gen, env_id=SOKOBAN, seeds=[5, 6], mode="flat", group_size=3, env_factory=gen.factory)
    assert res.metrics["success_rate"] == 1.0 and res.blueprints == {}
    assert all(r.level == "act" and r.subgoal_index == -1 and not r.sub_done for r in res.records)
    assert {r.group_id for r in res.records} == {"flat-0-seed5", "flat-1-seed6"}
    assert len({r.traj_id for r in res.records}) == 6
    assert gen.calls[0] == (6, 1) and len(gen.calls) == max(e["steps"] for e in res.episodes)
    assert sum(n for n, _ in gen.calls) == res.metrics["env_steps"]
    assert "blueprint" not in _text(gen.act_chats[0])


def test_micro_reuses_best_blueprint():
    # sample 0: an unparseable plan (fallback, penalised); sample 1: the expert's blueprint
    gen = ExpertGenerator(4, plan_override=lambda j, bp: "no plan" if j == 0 else prompts.format_plan(bp))
    res = run_rollout(
        generator=gen, env_id=SOKOBAN, env_kwargs=SOKOBAN2, seeds=[0, 1], mode="micro", group_size=2,
        max_subgoals=4, executor_params=SamplingParams(temperature=1.0), env_factory=gen.factory,
    )
    pre = res.pre
    assert pre is not None and pre.metrics["plan_fallback_rate"] == 0.5
    for seed in (0, 1):
        best = [e for e in pre.episodes if e["seed"] == seed and e["plan_valid"]]
        assert res.blueprints[seed] == best[0]["subgoals"] == pre.blueprints[seed]
    assert all(r.level == "act" for r in res.records)
    assert {r.group_id for r in res.records} == {"micro-0-seed0", "micro-1-seed1"}
    assert res.metrics["success_rate"] == 1.0


def test_micro_with_given_blueprints_and_tie_break():
    gen = ExpertGenerator(4)
    bp = {0: ["a", "b"], 1: ["c"]}
    res = run_rollout(generator=gen, env_id=SOKOBAN, seeds=[0, 1], mode="micro", group_size=3, blueprints=bp, env_factory=gen.factory)
    assert res.blueprints == bp and res.pre is None
    assert all("1. a\n2. b" in _text(c) for c in gen.act_chats[:3])
    assert len(res.episodes) == 6
    # ties in macro return -> the first blueprint
    gen = ExpertGenerator(4, plan_override=lambda j, bp: prompts.format_plan(bp[:-1] + [bp[-1] + f" v{j}"]))
    res = run_rollout(generator=gen, env_id=SOKOBAN, seeds=[0], mode="macro", group_size=3, env_factory=gen.factory)
    assert len({e["return"] for e in res.episodes}) == 1 and res.blueprints[0][-1].endswith(" v0")


GARBAGE = ["", "x" * 50_000, "no tags here", "<think><think>a</think></think><action><action>up</action></action>",
           "\x00\x01\xff\ufffd" * 100, "<plan>1. a</plan>", "<think>t</think><action>fly</action><sub_done>"]


class TextOnlyScripted(ScriptedGenerator):
    """ScriptedGenerator joins message contents as str, so image parts are dropped first."""

    def generate(self, chats, params):
        return super().generate([_text_only(c) for c in chats], params)


GARBAGE_ENVS = [SOKOBAN, SOKOBAN_VISUAL] + [e for e, m in ((ALFWORLD, "alfworld"), (WEBSHOP, "webshop")) if not _module_missing(m)]


@pytest.mark.parametrize("mode", ["macro", "flat"])
def test_garbage_never_raises(mode):
    gen = TextOnlyScripted(lambda chat, i: GARBAGE[(len(_text(chat)) + i) % len(GARBAGE)])
    for env_id in GARBAGE_ENVS:
        res = run_rollout(generator=gen, env_id=env_id, seeds=[0], mode=mode, group_size=2, env_kwargs={"max_steps": 4})
        assert res.metrics["env_steps"] == 8 and res.metrics["success_rate"] == 0.0
        assert res.metrics["invalid_action_rate"] == 1.0
        # every env answers an invalid command with reward 0, so each step earns the penalty alone
        acts = [r for r in res.records if r.level == "act"]
        assert len(acts) == 8 and all(not r.valid and r.reward == pytest.approx(-0.1) for r in acts)
        for r in res.records:
            if r.level == "plan":
                assert r.reward == (0.0 if r.valid else pytest.approx(-0.1))
    if mode == "macro":  # every plan in this garbage set but "<plan>1. a</plan>" falls back
        assert res.metrics["plan_fallback_rate"] > 0


def test_invalid_penalty_is_configurable_and_added_to_env_reward():
    gen = ScriptedGenerator(lambda chat, i: "garbage")
    res = run_rollout(generator=gen, env_id=SOKOBAN, seeds=[0], mode="flat", group_size=1, invalid_penalty=-0.5)
    # Sokoban answers an invalid command with reward 0 (verl-agent's "Still")
    assert [r.reward for r in res.records] == [-0.5] * 15
    assert res.metrics["invalid_action_rate"] == 1.0 and res.episodes[0]["return"] == pytest.approx(-7.5)


def test_bad_arguments():
    gen = ScriptedGenerator(lambda chat, i: "")
    with pytest.raises(ValueError):
        run_rollout(generator=gen, env_id=SOKOBAN, seeds=[0], mode="bogus", group_size=1)
    with pytest.raises(KeyError):
        run_rollout(generator=gen, env_id=SOKOBAN, seeds=[0], mode="micro", group_size=1, blueprints={1: ["x"]})


class BrokenEnv(gym.Wrapper):
    """Sokoban whose `step` raises at step `fail_step` (None: never) and whose `reset` raises when
    `fail_reset`; counts closes."""

    closed = 0

    def __init__(self, env, *, fail_step=None, fail_reset=False):
        super().__init__(env)
        self.fail_step, self.fail_reset, self.steps = fail_step, fail_reset, 0

    def reset(self, **kw):
        if self.fail_reset:
            raise OSError("reset exploded")
        return self.env.reset(**kw)

    def step(self, action):
        if self.steps == self.fail_step:
            raise RuntimeError("env bug")
        self.steps += 1
        return self.env.step(action)

    def close(self):
        BrokenEnv.closed += 1
        self.env.close()


@pytest.mark.parametrize("mode", ["macro", "micro", "flat"])
def test_an_env_exception_fails_its_episode_only(mode):
    # episode 1 of seed 0's group fails at its 2nd step, episode 0 of seed 1's group at reset
    made = []

    def factory(env_id, **kwargs):
        k = len(made) % 4  # micro mode builds the macro pre-pass's 4 envs first, then its own 4
        env = BrokenEnv(gym.make(env_id, **kwargs), fail_step=1 if k == 1 else None, fail_reset=k == 2)
        made.append(env)
        return env

    BrokenEnv.closed = 0
    gen = ScriptedGenerator(lambda chat, i: "<plan>\n1. push\n</plan>" if "blueprint" in _text(chat)
                            else "<think>t</think><action>left</action>")
    res = run_rollout(generator=gen, env_id=SOKOBAN, env_kwargs={"max_steps": 4}, seeds=[0, 1], mode=mode,
                      group_size=2, env_factory=factory)
    assert res.metrics["episodes_failed"] == 2 and res.metrics["episodes"] == 2
    assert sorted(f["traj_id"] for f in res.failed) == [f"{mode}-0-seed0/1", f"{mode}-1-seed1/0"]
    assert {f["error"] for f in res.failed} == {"RuntimeError: env bug", "OSError: reset exploded"}
    kept = {e["traj_id"] for e in res.episodes}
    assert kept == {f"{mode}-0-seed0/0", f"{mode}-1-seed1/1"}
    assert {r.traj_id for r in res.records} == kept  # a failed episode's partial records are dropped
    assert all(e["steps"] == len([r for r in res.records if r.traj_id == e["traj_id"] and r.level == "act"]) >= 1
               for e in res.episodes)
    assert BrokenEnv.closed == len(made) - (4 if mode == "micro" else 2) // 2  # every built env but the reset failures
