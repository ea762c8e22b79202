"""The typed rollout call: its fields are `run_rollout`'s arguments with `run_rollout`'s defaults, a
config fills `EpisodeSettings`, and `RolloutCall.run` is `run_rollout` with the same arguments."""

import inspect
import pickle

from himac_ray.config import load_config
from himac_ray.generation import SamplingParams, ScriptedGenerator
from himac_ray.rollout import run_rollout
from himac_ray.rollout_call import EpisodeSettings, RolloutCall

SOKOBAN = "himac/Sokoban-v0"
KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 4}
RUNTIME = {"generator", "planner_generator", "env_id", "env_kwargs", "env_factory", "progress"}
"""`run_rollout` arguments a call does not carry: given to `RolloutCall.run` by whoever runs it"""


def test_fields_are_run_rollout_arguments_with_its_defaults():
    params = inspect.signature(run_rollout).parameters
    settings = {name: EpisodeSettings.__dataclass_fields__[name].default for name in EpisodeSettings.__dataclass_fields__}
    call = {name for name in RolloutCall.__dataclass_fields__ if name != "settings"}
    assert set(settings) | call | RUNTIME == set(params)
    assert not set(settings) & call
    assert settings == {name: params[name].default for name in settings}
    for name in call - {"seeds", "mode", "group_size"}:
        assert RolloutCall.__dataclass_fields__[name].default == params[name].default, name


def test_settings_from_config():
    cfg = load_config(None, ["rollout.max_subgoals=3", "rollout.history_length=1", "algorithm.invalid_penalty=-0.5",
                             "algorithm.episode_score=won", "rollout.sub_done=false"])
    s = EpisodeSettings.from_config(cfg)
    assert (s.max_subgoals, s.history_length, s.invalid_penalty, s.episode_score) == (3, 1, -0.5, "won")
    assert s.prompt_format == cfg.rollout.prompt_format and not s.prompt_format.sub_done
    assert s.kwargs()["prompt_format"] == s.prompt_format  # the PromptFormat, not asdict's dict


def test_run_is_run_rollout_and_a_call_pickles():
    def policy(chat, i):
        return "<plan>\n1. push\n</plan>" if "blueprint" in chat[-1]["content"] else "<think>t</think><action>left</action>"

    settings = EpisodeSettings(max_subgoals=2, history_length=1)
    call = RolloutCall(seeds=[3, 4], mode="macro", group_size=2, executor_params=SamplingParams(temperature=0.0),
                       settings=settings)
    assert pickle.loads(pickle.dumps(call)) == call
    got = call.run(generator=ScriptedGenerator(policy), env_id=SOKOBAN, env_kwargs=KWARGS)
    want = run_rollout(generator=ScriptedGenerator(policy), env_id=SOKOBAN, env_kwargs=KWARGS, seeds=[3, 4],
                       mode="macro", group_size=2, executor_params=SamplingParams(temperature=0.0), max_subgoals=2,
                       history_length=1)
    assert [(r.traj_id, r.level, r.response_text, r.reward) for r in got.records] == \
        [(r.traj_id, r.level, r.response_text, r.reward) for r in want.records]
    assert call.with_seeds([4]).seeds == [4] and call.with_seeds([4]).settings is settings
