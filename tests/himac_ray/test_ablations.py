"""The paper's ablation switches and the rules they rest on (issue #19): `<sub_done>` only after a
valid action, the "without <sub_done>" switch, and z* chosen by `algorithm.episode_score`."""

import pytest

from himac_ray import prompts
from himac_ray.config import load_config
from himac_ray.generation import ScriptedGenerator
from himac_ray.rollout import Episode, run_rollout
from himac_ray.rollout_call import EpisodeSettings, RolloutCall
from himac_ray.rollout_result import summarize_groups

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
    assert EpisodeSettings.from_config(off).prompt_format.sub_done is False
    assert warm_start_key(on, tmp_path) != warm_start_key(off, tmp_path)


def test_best_blueprint_follows_episode_score():
    def episode(ret, won, plan):
        return Episode(env=None, group_id="g", traj_id=plan, seed=3, task="t", obs_text="", image=None, info={},
                       max_steps=5, subgoals=[plan], ret=ret, won=won)

    group = [[episode(1.5, False, "near miss"), episode(0.9, True, "won slowly")]]
    assert summarize_groups(group, "macro", STATS, "return").blueprints == {3: ["near miss"]}
    assert summarize_groups(group, "macro", STATS, "won").blueprints == {3: ["won slowly"]}
    tie = [[episode(1.0, True, "first"), episode(1.0, True, "second")]]
    assert summarize_groups(tie, "macro", STATS, "won").blueprints == {3: ["first"]}  # ties -> first


STATS = {"gen_calls": 0, "gen_seconds": 0.0, "env_seconds": 0.0, "sub_done_advances": 0, "budget_advances": 0,
         "episodes_failed": 0}


class RecordingLearner:
    """The learner service's interface, recording what each step was given (the routing under test)."""

    def __init__(self):
        self.steps = []

    def train_step(self, records, *, trainable):
        self.steps.append((trainable, list(records)))
        return {"loss": 0.0}


def paper_trainer(tmp_path, *overrides):
    import json

    from himac_ray.trainer import Trainer

    kwargs = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 3}
    cfg = load_config(None, [f"run.dir={tmp_path}", f"env.kwargs={json.dumps(kwargs)}", "algorithm.group_size=3",
                             "algorithm.num_groups=2", "rollout.prompt_style=compact", "rollout.answer_format=action",
                             "learner.skip_zero_advantage=false", "coevolution.iteration=paper", *overrides])
    count = iter(range(10**6))

    def policy(chat, i):  # blueprints of different quality: varied returns, informative groups
        if "<plan>" in chat[-1]["content"] and "Subgoal" not in chat[-1]["content"]:
            return PLAN if i % 2 else "not a plan"
        return f"<action>{['up', 'left', 'down', 'right'][next(count) % 4]}</action>"

    gen = ScriptedGenerator(policy)
    modes = []

    def rollout(**kw):
        modes.append(kw["mode"])
        return RolloutCall(settings=EpisodeSettings.from_config(cfg), **kw).run(generator=gen, env_id=SOKOBAN,
                                                                      env_kwargs=kwargs)

    learner = RecordingLearner()
    trainer = Trainer(cfg, rollout=rollout, learner=learner, sync=lambda **kw: {"seconds": 0.0}, log=print)
    return trainer, learner, modes


def test_paper_iteration_runs_both_phases_and_trains_the_scheduled_level(tmp_path):
    from himac_ray import metrics as M
    from himac_ray.data import read_parquet, table_to_records

    trainer, learner, modes = paper_trainer(tmp_path)
    row0 = trainer.run_iteration()  # planner
    row1 = trainer.run_iteration()  # executor
    assert modes == ["micro", "micro"] and row0["trainable"] == "planner" and row1["trainable"] == "executor"
    (level0, batch0), (level1, batch1) = learner.steps
    assert level0 == "planner" and batch0 and all(r.level == "plan" and r.group_id.startswith("macro") for r in batch0)
    assert level1 == "executor" and batch1 and all(r.level == "act" and r.group_id.startswith("micro") for r in batch1)
    # everything the iteration generated is written, the untrained level with advantage 0
    acts = []
    for it, trained in ((0, "plan"), (1, "act")):
        recs = table_to_records(read_parquet(tmp_path / "trajectories" / f"iter_{it:05d}.parquet"))
        acts.append(sum(r.level == "act" for r in recs))  # one act record per env step
        groups = {(r.level, r.group_id.split("-")[0]) for r in recs}
        assert groups == {("plan", "macro"), ("act", "macro"), ("act", "micro")}
        assert all(r.advantage == 0.0 for r in recs if (r.level, r.group_id.split("-")[0]) != (trained, "macro" if trained == "plan" else "micro"))
    # env steps: both phases of both iterations
    assert row0[M.ENV_STEPS] == acts[0] and row1[M.ENV_STEPS] == acts[0] + acts[1] == trainer.state.env_steps


def test_alternate_iteration_is_unchanged(tmp_path):
    trainer, learner, modes = paper_trainer(tmp_path, "coevolution.iteration=alternate")
    trainer.run_iteration()
    trainer.run_iteration()
    assert modes == ["macro", "micro"]
    assert [level for level, _ in learner.steps] == ["planner", "executor"]
    assert all(r.group_id.startswith("micro") for r in learner.steps[1][1])


def test_zero_iterations_is_the_prompting_only_baseline(tmp_path):
    from himac_ray.metrics import MetricsLog
    from himac_ray.train import eval_summary

    trainer, learner, modes = paper_trainer(tmp_path, "run.iterations=0", "env.eval_episodes=3",
                                            "env.eval_temperature=0.5", "env.eval_samples=2")
    assert trainer.run() == []
    assert learner.steps == [] and modes == ["macro", "macro"]  # greedy, then sampled evaluation
    (row,) = MetricsLog(tmp_path).eval_rows()
    assert row["iteration"] == 0 and len(row["won_by_seed"]) == 3 and row["sampled"]["episodes"] == 6
    assert not (tmp_path / "checkpoints").exists() and MetricsLog(tmp_path).rows() == []
    assert eval_summary(tmp_path).startswith("[himac-ray] held-out success of the starting policy, no RL, on 3 rooms")


def test_without_coevolution_both_levels_train_in_one_joint_update(tmp_path):
    trainer, learner, modes = paper_trainer(tmp_path, "coevolution.enabled=false", "coevolution.iteration=alternate")
    row = trainer.run_iteration()
    assert modes == ["micro"] and row["trainable"] == "both"
    ((level, batch),) = learner.steps  # one learner step for both levels
    assert level == "both"
    plans = [r for r in batch if r.level == "plan"]
    acts = [r for r in batch if r.level == "act"]
    assert plans and acts and all(r.group_id.startswith("macro") for r in plans)
    assert all(r.group_id.startswith("micro") for r in acts)  # never the act records that scored blueprints
