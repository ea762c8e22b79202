"""The fast CPU recipe's pieces: dynamic sampling of informative groups, separate G and N, the
reasoning-free answer format, compact prompts, the auto dtype and the warm-start cache."""

import json
import re

import pytest

from himac_ray import parsers, prompts, sokoban_text
from himac_ray.advantage import group_informative
from himac_ray.config import ConfigError, load_config
from himac_ray.generation import ScriptedGenerator
from himac_ray.hardware import resolve_dtype
from himac_ray.names import MERGE_SEPARATOR
from himac_ray.rollout import run_rollout
from himac_ray.schedule import EXTRA_SEED_OFFSET, Phase, iteration_seeds
from himac_ray.sft.expert import expert_demonstrations
from himac_ray.trainer import Trainer
from himac_ray.warm_start import warm_start_dir

SOKOBAN = "himac/Sokoban-v0"
KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 3}


class Planner:
    """Blueprints for a macro rollout: identical for every member (a tied group) until `split`
    is set; then member 1 answers garbage (the plan penalty makes the group informative)."""

    def __init__(self):
        self.split = False

    def __call__(self, chat, i):
        if "<plan>" in chat[-1]["content"] and "Subgoal" not in chat[-1]["content"]:
            return "no plan at all" if (self.split and i == 1) else "<plan>\n1. push the box\n</plan>"
        return "<action>left</action>"


def make_trainer(tmp_path, planner, *overrides):
    cfg = load_config(None, [f"run.dir={tmp_path}", f"env.kwargs={json.dumps(KWARGS)}", "algorithm.group_size=3",
                             "algorithm.num_groups=2", "rollout.prompt_style=compact",
                             "rollout.answer_format=action", *overrides])
    gen = ScriptedGenerator(planner)
    calls = []

    def rollout(**kw):
        calls.append(list(kw["seeds"]))
        out = run_rollout(generator=gen, env_id=SOKOBAN, env_kwargs=KWARGS, prompt_format=cfg.rollout.prompt_format, **kw)
        planner.split = True  # every later rollout has informative groups
        return out

    return Trainer(cfg, rollout=rollout, learner=None, sync=None, log=print), calls


def test_tied_groups_are_replaced_by_fresh_tasks(tmp_path):
    trainer, calls = make_trainer(tmp_path, Planner(), "algorithm.min_informative_groups=2",
                                  "algorithm.max_extra_groups=5")
    result, groups = trainer._collect(0, Phase("planner", "macro"))
    first, extra = calls
    assert first == iteration_seeds(trainer.cfg, 0)
    assert extra == [trainer.cfg.env.train_seed_start + EXTRA_SEED_OFFSET + j for j in range(2)]
    assert groups == {"groups/informative_fraction": 0.5, "groups/informative": 2, "groups/extra": 2,
                      "groups/macro_size_mean": 3.0}
    assert trainer.state.extra_groups == 2
    # every group's records kept exactly once; env steps of the tied groups counted too
    keys = [(r.group_id, r.traj_id, r.step, r.level) for r in result.records]
    assert len(keys) == len(set(keys)) and len({r.group_id for r in result.records}) == 4
    assert result.metrics["env_steps"] == sum(e["steps"] for e in result.episodes) > 4 * 3
    informative = group_informative(result.episodes)
    assert sorted(informative.values()) == [False, False, True, True]
    # the cursor moves on: the next extra groups use new seeds
    trainer._collect(1, Phase("planner", "macro"))
    assert calls[-1] == [] or set(calls[-1]).isdisjoint(extra)


def test_extra_groups_stop_at_the_cap(tmp_path):
    planner = Planner()
    trainer, calls = make_trainer(tmp_path, planner, "algorithm.min_informative_groups=2",
                                  "algorithm.max_extra_groups=3")
    planner.split = False
    trainer.rollout_calls = calls
    # keep every group tied: the wrapper's split switch is undone before each call
    inner = trainer.rollout

    def tied(**kw):
        planner.split = False
        out = inner(**kw)
        planner.split = False
        return out

    trainer.rollout = tied
    result, groups = trainer._collect(0, Phase("planner", "macro"))
    assert [len(c) for c in calls] == [2, 2, 1]
    assert groups == {"groups/informative_fraction": 0.0, "groups/informative": 0, "groups/extra": 3,
                      "groups/macro_size_mean": 3.0}
    assert len(result.episodes) == 5 * 3


def test_dynamic_sampling_is_off_by_default(tmp_path):
    trainer, calls = make_trainer(tmp_path, Planner())
    _, groups = trainer._collect(0, Phase("planner", "macro"))
    assert len(calls) == 1 and groups["groups/extra"] == 0


def test_separate_planner_and_executor_group_sizes(tmp_path):
    trainer, calls = make_trainer(tmp_path, Planner(), "algorithm.planner_group_size=4",
                                  "algorithm.executor_group_size=2")
    result, _ = trainer._collect(0, Phase("executor", "micro"))
    sizes = {}
    for e in result.episodes:
        sizes[e["group_id"]] = sizes.get(e["group_id"], 0) + 1
    assert set(sizes.values()) == {2} and len(sizes) == 2
    pre = {}
    for e in result.pre.episodes:
        pre[e["group_id"]] = pre.get(e["group_id"], 0) + 1
    assert set(pre.values()) == {4}
    macro, _ = trainer._collect(1, Phase("planner", "macro"))
    assert len(macro.episodes) == 2 * 4
    with pytest.raises(ConfigError, match="executor_group_size"):
        load_config(None, ["algorithm.executor_group_size=1"])


@pytest.mark.parametrize("text, expected", [
    ("<action>up</action>", ("up", True, False)),
    ("<action> Left </action><sub_done>", ("left", True, True)),
    ("<think>x</think><action>down</action>", ("down", True, False)),  # reasoning is allowed, not required
    ("<sub_done><action>up</action>", ("up", True, False)),  # <sub_done> before the action does not count
    ("up", ("", False, False)),
    ("<action>fly</action><sub_done>", ("fly", False, True)),
    ("<action><action>up</action>", ("", False, False)),
    ("<" + " " * 8000, ("", False, False)),
    (None, ("", False, False)),
])
def test_reasoning_free_answers_parse(text, expected):
    fmt = prompts.PromptFormat(answer="action")
    got = parsers.parse_action(text, ["up", "down", "left", "right"], env_id=SOKOBAN, require_think=fmt.require_think)
    assert got == expected


def test_action_answer_round_trips_and_verl_default_is_unchanged():
    fmt = prompts.PromptFormat(style="compact", answer="action")
    answer = prompts.format_action("right", think="ignored", sub_done=True, fmt=fmt)
    assert answer == "<action>right</action><sub_done>"
    assert parsers.parse_action(answer, ["right"], env_id=SOKOBAN, require_think=False) == ("right", True, True)
    # without reasoning the default (think) parser rejects it: the format must match the parser
    assert parsers.parse_action(answer, ["right"], env_id=SOKOBAN)[1] is False
    assert prompts.format_action("up", think="t") == "<think>t</think><action>up</action>"
    with pytest.raises(ValueError, match="answer format"):
        prompts.PromptFormat(answer="free")


def test_compact_prompt_states_board_coordinates_subgoal_and_actions():
    board = "######\n##P__#\n##X__#\n#__O_#\n######\n"
    fmt = prompts.PromptFormat(style="compact", answer="action")
    chat = prompts.executor_prompt(SOKOBAN, task="long rules text", subgoals=["push it down", "then right"],
                                   subgoal_index=1, history=[("b", "up"), ("c", "left")], observation=board,
                                   admissible_actions=["up", "down", "left", "right"], steps_in_subgoal=2, fmt=fmt)
    user = chat[-1]["content"]
    assert "long rules text" not in user and board in user and "<think>" not in user
    assert "Player (row 1, col 2). Box (row 2, col 2). Target (row 3, col 3)." in user
    assert "Subgoal 2 of 2: then right" in user and "Last actions: up, left" in user
    assert "Actions: up, down, left, right" in user
    # the Moves line names the cell a push moves the box to and the cell a walk ends on
    assert "Moves: up: wall, down: push box to (row 3, col 2), left: wall, right: floor -> (row 1, col 3)" in user
    verl = prompts.executor_prompt(SOKOBAN, task="long rules text", subgoals=["push it down"], subgoal_index=0,
                                   history=[], observation=board, admissible_actions=["up"], steps_in_subgoal=0)
    # compact: ~380 characters (~130 tokens) against verl-agent's ~700 for the same state
    assert len(user) < 0.6 * len(verl[-1]["content"])
    alf = prompts.flat_prompt("himac/ALFWorld-v0", task="put a mug in the sink", history=[], observation="You see",
                              admissible_actions=["look"], steps_taken=0, fmt=fmt)
    assert "Task: put a mug in the sink" in alf[-1]["content"] and "Observation: You see" in alf[-1]["content"]


def test_auto_dtype_is_bfloat16_only_where_native():
    avx2 = frozenset({"avx2", "fma"})
    assert resolve_dtype("auto", gpu=False, flags=avx2)[0] == "float32"
    assert resolve_dtype("auto", gpu=False, flags=avx2 | {"avx512_bf16"})[0] == "bfloat16"
    assert resolve_dtype("auto", gpu=False, flags=avx2 | {"amx_bf16"})[0] == "bfloat16"
    assert resolve_dtype("auto", gpu=True, flags=avx2)[0] == "bfloat16"
    assert resolve_dtype("float32", gpu=True) == ("float32", "configured")
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config(None, ["model.dtype=int8"])


def test_warm_start_key_covers_the_recipe_not_the_rl_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("HIMAC_RAY_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"0" * 10)

    def key(*overrides):
        return warm_start_dir(load_config(None, list(overrides)), model)

    base = key()
    assert key("run.seed=3", "sampler.seed=3", "learner.lr=0.1") == base  # RL settings share the warm start
    assert key("algorithm.name=grpo") == key("algorithm.name=gigpo") != base  # flat family vs hierarchical
    for change in ("rollout.prompt_style=compact", "rollout.answer_format=action", "sft.episodes=3", "sft.epochs=5",
                   "env.kwargs={max_steps: 4}", "rollout.max_subgoals=2", "sft.seed=1"):
        assert key(change) != base, change
    assert key("model.dtype=float32") != key("model.dtype=bfloat16")  # SFT in float32 vs bfloat16 autocast
    (model / "model.safetensors").write_bytes(b"1" * 11)  # the base model changed
    assert key() != base


def test_paired_interval_and_run_summary(tmp_path):
    from himac_ray.evaluate import paired_interval
    from himac_ray.metrics import MetricsLog
    from himac_ray.train import eval_summary

    before = {str(s): 0 for s in range(40)}
    assert paired_interval(before, {str(s): 1 for s in range(40)}) == (1.0, 1.0, 1.0)
    after = {str(s): int(s < 10) for s in range(40)}  # 10 of 40 rooms newly solved
    mean, lo, hi = paired_interval(before, after)
    assert mean == 0.25 and 0.1 < lo < 0.25 < hi < 0.4
    mixed = {str(s): int(s % 2) for s in range(40)}
    mean, lo, hi = paired_interval(mixed, {s: 1 - v for s, v in mixed.items()})
    assert mean == 0.0 and lo < 0 < hi
    with pytest.raises(ValueError, match="share no room"):
        paired_interval({"1": 0}, {"2": 1})
    log = MetricsLog(tmp_path)
    assert eval_summary(tmp_path) == ""
    log.append_eval({"iteration": 0, "charts/env_steps_total": 0, "success_rate": 0.0, "won_by_seed": before})
    log.append_eval({"iteration": 6, "charts/env_steps_total": 900, "success_rate": 0.25, "won_by_seed": after})
    text = eval_summary(tmp_path)
    assert "iteration 0 -> 6 (900 env steps)" in text and "greedy: 0/40 -> 10/40 on 40 rooms; difference +0.250" in text
    assert "sampled" not in text
    # a sampled evaluation beside the greedy one: per-room fractions, its own paired interval
    sampled = {"temperature": 0.4, "samples": 4, "success_rate": 0.25, "won_by_seed": {str(s): 0.25 for s in range(40)}}
    log = MetricsLog(tmp_path / "with_sampled")
    log.append_eval({"iteration": 0, "success_rate": 0.0, "won_by_seed": before,
                     "sampled": {**sampled, "success_rate": 0.0, "won_by_seed": before}})
    log.append_eval({"iteration": 8, "success_rate": 0.25, "won_by_seed": after, "sampled": sampled})
    text = eval_summary(tmp_path / "with_sampled")
    assert "sampled (temperature 0.4, 4 episodes per room): 0.000 -> 0.250 on 40 rooms; difference +0.250, " \
           "paired 95% interval [+0.250, +0.250]" in text


def test_sampled_evaluation_beside_the_greedy_one():
    import random

    from himac_ray.evaluate import SAMPLED, run_eval

    rng = random.Random(0)
    gen = ScriptedGenerator(lambda chat, i: "<plan>\n1. push the box\n</plan>" if "<plan>" in chat[-1]["content"]
                            else f"<action>{rng.choice(['up', 'down', 'left', 'right'])}</action>")
    seen = []

    def rollout(**kw):
        seen.append((kw["group_size"], kw["planner_params"].temperature, kw["executor_params"].temperature))
        return run_rollout(generator=gen, env_id=SOKOBAN, env_kwargs=KWARGS, max_subgoals=2, **kw)

    greedy_only = load_config(None, ["env.eval_episodes=5"])
    out = run_eval(greedy_only, rollout)
    assert SAMPLED not in out and seen == [(1, 0.0, 0.0)] and len(out["won_by_seed"]) == 5
    seen.clear()
    cfg = load_config(None, ["env.eval_episodes=5", "env.eval_temperature=0.4", "env.eval_samples=3"])
    out = run_eval(cfg, rollout)
    assert seen == [(1, 0.0, 0.0), (3, 0.4, 0.4)]
    sampled = out[SAMPLED]
    assert sampled["episodes"] == 15 and sampled["temperature"] == 0.4 and sampled["samples"] == 3
    assert sorted(sampled["won_by_seed"]) == sorted(out["won_by_seed"])  # the same rooms, paired
    assert all(v in (0, 1 / 3, 2 / 3, 1) for v in sampled["won_by_seed"].values())
    assert sampled["success_rate"] == pytest.approx(sum(sampled["won_by_seed"].values()) / 5)
    with pytest.raises(ConfigError, match="env.eval_samples"):
        load_config(None, ["env.eval_samples=0"])
    with pytest.raises(ConfigError, match="env.eval_temperature"):
        load_config(None, ["env.eval_temperature=-1"])


def test_moves_line_marks_the_move_that_reaches_the_subgoal_cell():
    board = "######\n##P__#\n##X__#\n#__O_#\n######\n"
    walk = sokoban_text.sokoban_moves(board, "Move to (row 1, col 3), to the right of the box at (row 2, col 2)")
    assert "right: floor -> (row 1, col 3) completes the subgoal" in walk and walk.count("completes") == 1
    push = sokoban_text.sokoban_moves(board, "Push the box at (row 2, col 2) down to (row 3, col 2)")
    assert "down: push box to (row 3, col 2) completes the subgoal" in push and push.count("completes") == 1
    # a walk onto a push subgoal's cell completes nothing; nor does a cell the subgoal names only as the box's
    assert "completes" not in sokoban_text.sokoban_moves(board, "Push the box right to (row 1, col 3)")
    assert "completes" not in sokoban_text.sokoban_moves(board, "Move next to the box at (row 1, col 3)")
    merged = f"Move to (row 9, col 9){MERGE_SEPARATOR}Push the box down to (row 3, col 2)"
    assert "down: push box to (row 3, col 2) completes the subgoal" in sokoban_text.sokoban_moves(board, merged)
    assert "completes" not in sokoban_text.sokoban_moves(board)


def test_expert_says_sub_done_exactly_where_the_moves_line_marks_its_move():
    """The mark and the expert's `<sub_done>` agree on every expert step (what SFT teaches is decidable)."""
    fmt = prompts.PromptFormat(style="compact", answer="action")
    steps = [e for e in expert_demonstrations(SOKOBAN, range(100000, 100040), env_kwargs={"dim_room": (6, 6),
             "num_boxes": 1, "max_steps": 10}, max_subgoals=3, prompt_format=fmt) if e["level"] == "act"]
    done = 0
    for e in steps:
        target = e["messages"][-1]["content"]
        action = parsers.parse_action(target, ["up", "down", "left", "right"], env_id=SOKOBAN, require_think=False)[0]
        moves = next(line for line in e["messages"][-2]["content"].splitlines() if line.startswith("Moves: "))
        entry = re.search(rf"\b{action}: (.*?)(?=, (?:up|down|left|right): |$)", moves).group(1)
        marked = entry.endswith(sokoban_text.SUBGOAL_REACHED)
        assert marked == ("<sub_done>" in target), (entry, target)
        done += marked
    assert len(steps) > 60 and 0 < done < len(steps)
