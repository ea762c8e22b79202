"""The paper's ablation switches and the rules they rest on (issue #19): `<sub_done>` only after a
valid action, the "without <sub_done>" switch, and z* chosen by `algorithm.episode_score`."""

import pytest

from himac_ray import prompts
from himac_ray.config import load_config
from himac_ray.generation import ScriptedGenerator
from himac_ray.rollout import Episode, _result, episode_settings, run_rollout

SOKOBAN = "himac/Sokoban-v0"
KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 6}
PLAN = "<plan>\n1. first\n2. second\n3. third\n</plan>"


def rollout(answer: str, fmt: prompts.PromptFormat, chats: list | None = None):
    def policy(chat, i):
        if chats is not None:
            chats.append(chat[-1]["content"])
        return PLAN if "<plan>" in chat[-1]["content"] and "Subgoal" not in chat[-1]["content"] else answer

    return run_rollout(generator=ScriptedGenerator(policy), env_id=SOKOBAN, env_kwargs=KWARGS, seeds=[0],
                       mode="macro", group_size=1, max_subgoals=3, subgoal_step_budget=5, prompt_format=fmt)


COMPACT = prompts.PromptFormat(style="compact", answer="action")


def test_sub_done_after_a_valid_action_advances_the_subgoal():
    res = rollout("<action>up</action><sub_done>", COMPACT)
    acts = [r for r in res.records if r.level == "act"]
    assert [r.subgoal_index for r in acts[:3]] == [0, 1, 2] and acts[0].sub_done
    assert res.metrics["sub_done_advances"] == 2


@pytest.mark.parametrize("answer", ["<action>fly</action><sub_done>", "<sub_done>", "garbage <sub_done>"])
def test_sub_done_after_an_invalid_action_does_not_skip_a_subgoal(answer):
    res = rollout(answer, COMPACT)
    acts = [r for r in res.records if r.level == "act"]
    assert not any(r.valid for r in acts) and not any(r.sub_done for r in acts)
    assert res.metrics["sub_done_advances"] == 0
    assert [r.subgoal_index for r in acts] == [0] * 5 + [1]  # the step budget (5) still advances


def test_without_sub_done_prompts_do_not_ask_and_answers_are_not_scanned():
    for style, answer in (("compact", "action"), ("verl", "think")):
        fmt = prompts.PromptFormat(style=style, answer=answer, sub_done=False)
        chats = []
        text = "<think>go</think><action>up</action><sub_done>" if answer == "think" else "<action>up</action><sub_done>"
        res = rollout(text, fmt, chats)
        acts = [r for r in res.records if r.level == "act"]
        assert acts and all(r.valid and not r.sub_done for r in acts)
        assert res.metrics["sub_done_advances"] == 0 and res.metrics["budget_advances"] == 1
        executor_prompts = [c for c in chats if "Subgoal" in c or "subgoal" in c.split("\n")[0] or "working on" in c]
        assert executor_prompts and not any("<sub_done>" in c for c in executor_prompts)
        with_sub_done = []
        rollout(text, prompts.PromptFormat(style=style, answer=answer), with_sub_done)
        assert any("<sub_done>" in c for c in with_sub_done)  # the default still asks for it


def test_the_switch_is_a_config_key_and_part_of_the_warm_start_key(tmp_path):
    from himac_ray.warm_start import warm_start_key

    on = load_config(None, [])
    off = load_config(None, ["rollout.sub_done=false"])
    assert on.rollout.prompt_format.sub_done and not off.rollout.prompt_format.sub_done
    assert episode_settings(off)["prompt_format"].sub_done is False
    assert warm_start_key(on, tmp_path) != warm_start_key(off, tmp_path)


def test_best_blueprint_follows_episode_score():
    def episode(ret, won, plan):
        return Episode(env=None, group_id="g", traj_id=plan, seed=3, task="t", obs_text="", image=None, info={},
                       max_steps=5, subgoals=[plan], ret=ret, won=won)

    group = [[episode(1.5, False, "near miss"), episode(0.9, True, "won slowly")]]
    assert _result(group, "macro", STATS, "return").blueprints == {3: ["near miss"]}
    assert _result(group, "macro", STATS, "won").blueprints == {3: ["won slowly"]}
    tie = [[episode(1.0, True, "first"), episode(1.0, True, "second")]]
    assert _result(tie, "macro", STATS, "won").blueprints == {3: ["first"]}  # ties -> first


STATS = {"gen_calls": 0, "gen_seconds": 0.0, "env_seconds": 0.0, "sub_done_advances": 0, "budget_advances": 0}
