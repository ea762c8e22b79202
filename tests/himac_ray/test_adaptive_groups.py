"""Adaptive group size (`algorithm.group_size: auto`, issue #19 item 4): the real `Trainer`, rollout
driver and Sokoban envs, with scripted policies that make groups tie or differ on purpose (and the tiny
model on vLLM in the slow test)."""

import json
from collections import Counter

import pytest

from himac_ray import metrics as M
from himac_ray.adaptive_groups import AdaptiveRollout, next_start, tied, wants_growth
from himac_ray.advantage import compute_advantages, member_scores
from himac_ray.config import AutoGroupConfig, ConfigError, load_config
from himac_ray.data import read_parquet, table_to_records
from himac_ray.generation import SamplingParams, ScriptedGenerator
from himac_ray.rollout_call import EpisodeSettings, RolloutCall
from himac_ray.rollout_result import ENV_STEPS, RolloutResult, best_blueprints
from himac_ray.trainer import Trainer
from tests.himac_ray.test_ablations import RecordingLearner

SOKOBAN = "himac/Sokoban-v0"
MAX_STEPS = 3
KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": MAX_STEPS}
PLAN = "<plan>\n1. first\n2. second\n3. third\n</plan>"


def tie_policy(chat, i):
    """Every member of every group does the same: identical returns, every group tied."""
    if "<plan>" in chat[-1]["content"] and "Subgoal" not in chat[-1]["content"]:
        return PLAN
    return "<action>up</action>"


def varied_policy(chat, i):
    """Blueprint j of a planner call is valid for odd j (an invalid one costs -0.1): macro groups differ."""
    if "<plan>" in chat[-1]["content"] and "Subgoal" not in chat[-1]["content"]:
        return PLAN if i % 2 else "not a plan"
    return "<action>up</action>"


def make_trainer(tmp_path, policy, *overrides, generator=None):
    cfg = load_config(None, [f"run.dir={tmp_path}", f"env.kwargs={json.dumps(KWARGS)}", "algorithm.group_size=auto",
                             "algorithm.num_groups=2", "rollout.prompt_style=compact", "rollout.answer_format=action",
                             "learner.skip_zero_advantage=false", *overrides])
    gen = generator or ScriptedGenerator(policy)
    calls = []

    def rollout(**kw):
        res = RolloutCall(settings=EpisodeSettings.from_config(cfg), **kw).run(generator=gen, env_id=SOKOBAN,
                                                                             env_kwargs=KWARGS)
        calls.append((kw, res))
        return res

    learner = RecordingLearner()
    trainer = Trainer(cfg, rollout=rollout, learner=learner, sync=lambda **kw: {"seconds": 0.0}, log=print)
    return trainer, learner, calls


def written(tmp_path, iteration):
    return table_to_records(read_parquet(tmp_path / "trajectories" / f"iter_{iteration:05d}.parquet"))


def check_invariants(records, calls, *, episode_score="return"):
    """What `compute_advantages` relies on, and that every record of every rollout call is written once."""
    keys = [(r.traj_id, r.level, r.step) for r in records]
    assert len(keys) == len(set(keys)), "a record is duplicated"
    # (adaptive rollouts pass z* to the micro calls: no call runs a macro pre-pass of its own)
    produced = Counter((r.traj_id, r.level, r.step) for _, res in calls for r in res.records)
    assert Counter(keys) == produced, "a record was lost or invented"
    group_of, seed_of = {}, {}
    for r in records:
        assert group_of.setdefault(r.traj_id, r.group_id) == r.group_id  # a trajectory lies in one group
        assert seed_of.setdefault(r.group_id, r.seed) == r.seed  # a group shares one seed
        assert r.traj_id.startswith(r.group_id + "/")
    for group in set(group_of.values()):  # member indices 0..n-1, each once
        members = sorted(int(t.rsplit("/", 1)[1]) for t, g in group_of.items() if g == group)
        assert members == list(range(len(members)))
    plans = Counter(r.traj_id for r in records if r.level == "plan")
    assert all(n == 1 for n in plans.values())  # one blueprint per macro trajectory
    # micro groups execute the best blueprint (z*) of the macro group of their seed, over all its members
    macro = [{"seed": r.seed, "group_id": r.group_id, "won": r.won, "return": r.episode_return,
              "subgoals": r.extra.get("subgoals", []), "member": int(r.traj_id.rsplit("/", 1)[1])}
             for r in records if r.level == "plan"]
    macro.sort(key=lambda e: (e["group_id"], e["member"]))
    best = best_blueprints(macro, episode_score)
    for r in records:
        if r.group_id.startswith("micro") and "subgoals" in r.extra:
            assert r.extra["subgoals"] == best[r.seed]
    compute_advantages(records, trainable=None)  # groups are complete and consistent
    return group_of


def test_tied_groups_grow_to_the_cap_and_only_they_grow(tmp_path):
    trainer, learner, calls = make_trainer(tmp_path, tie_policy, "algorithm.auto_group.start=2",
                                           "algorithm.auto_group.max=6", "coevolution.iteration=paper")
    row = trainer.run_iteration()
    records = written(tmp_path, 0)
    group_of = check_invariants(records, calls)
    sizes = Counter(group_of.values())
    assert len(sizes) == 4 and set(sizes.values()) == {6}  # 2 macro + 2 micro groups, 2 -> 4 -> 6 (the cap)
    # rounds: macro 2, +2, +2; z*; micro 2, +2, +2: one rollout call each, every later call a growth
    assert [(kw["mode"], kw["group_size"], kw.get("first_member", 0)) for kw, _ in calls] == [
        ("macro", 2, 0), ("macro", 2, 2), ("macro", 2, 4), ("micro", 2, 0), ("micro", 2, 2), ("micro", 2, 4)]
    assert row[M.GROUP_SIZE_MEAN["macro"]] == row[M.GROUP_SIZE_MEAN["micro"]] == 6
    # every group tied at its start: the next start doubles (capped by max)
    assert row[M.GROUP_START["macro"]] == row[M.GROUP_START["micro"]] == 4
    assert trainer.state.group_starts == {"macro": 4, "micro": 4}
    # every env step of every member counts
    assert row[M.ENV_STEPS] == sum(res.metrics["env_steps"] for _, res in calls) == sum(
        r.level == "act" for r in records)


def test_informative_groups_keep_their_start_size_and_high_variance_shrinks_it(tmp_path):
    trainer, learner, calls = make_trainer(tmp_path, varied_policy, "algorithm.auto_group.start=4",
                                           "algorithm.auto_group.shrink_std=0.01")
    row = trainer.run_iteration()  # alternate, planner first: the macro phase only
    assert [kw["mode"] for kw, _ in calls] == ["macro"]  # no group tied: no growth round
    check_invariants(written(tmp_path, 0), calls)
    assert row[M.GROUP_SIZE_MEAN["macro"]] == 4
    assert trainer.state.group_starts == {"macro": 2}  # std ~0.06 >= 0.01 in every group: halved
    trainer.run_iteration()  # the executor phase: its own levels' starts
    assert trainer.state.group_starts["macro"] == 2  # halved again, but min is 2


def test_the_env_step_budget_is_never_exceeded(tmp_path):
    # 2 levels x 2 groups x 2 members x 3 steps = 24 for the first round; growth and dynamic sampling's
    # extra groups get what remains of 40 (each new member may take 3 steps)
    budget = 40
    trainer, learner, calls = make_trainer(
        tmp_path, tie_policy, "algorithm.auto_group.start=2", "algorithm.auto_group.max=16",
        f"algorithm.auto_group.env_steps={budget}", "coevolution.iteration=paper",
        "algorithm.min_informative_groups=2", "algorithm.max_extra_groups=4")
    before = 0
    for it in range(3):
        n_calls = len(calls)
        row = trainer.run_iteration()
        spent = trainer.state.env_steps - before
        before = trainer.state.env_steps
        taken = 0
        for kw, res in calls[n_calls:]:  # each round was started only if its worst case still fitted
            assert taken + kw["group_size"] * len(kw["seeds"]) * MAX_STEPS <= budget
            taken += res.metrics["env_steps"]
        assert spent == taken <= budget and row[M.ENV_STEPS] == trainer.state.env_steps
        group_of = check_invariants(written(tmp_path, it), calls[n_calls:])
        assert max(Counter(group_of.values()).values()) < 16  # the budget stopped growth before the cap
        if it == 0:  # ... but not before some growth (later, every group tied: the start took what fits)
            assert len(calls) - n_calls > 2
        else:
            assert trainer.state.group_starts == {"macro": 3, "micro": 3}  # 40 // (2 levels x 2 groups x 3 steps)


def test_extra_groups_are_drawn_while_the_budget_covers_them(tmp_path):
    budget = 2 * 2 * MAX_STEPS + 3 * 2 * MAX_STEPS  # the first round, then room for 3 more tasks (no growth: max = start)
    trainer, learner, calls = make_trainer(
        tmp_path, tie_policy, "algorithm.auto_group.start=2", "algorithm.auto_group.max=2",
        f"algorithm.auto_group.env_steps={budget}", "algorithm.min_informative_groups=2",
        "algorithm.max_extra_groups=8")
    row = trainer.run_iteration()
    taken = 0
    for kw, res in calls:
        assert taken + kw["group_size"] * len(kw["seeds"]) * MAX_STEPS <= budget
        taken += res.metrics["env_steps"]
    # at least 3 tasks fit at worst; drawing stopped when the next one's worst case (2 x 3) did not
    assert 3 <= row[M.GROUPS_EXTRA] == trainer.state.extra_groups < 8
    assert row[M.ENV_STEPS] == taken <= budget < taken + 2 * MAX_STEPS
    check_invariants(written(tmp_path, 0), calls)


def test_a_budget_too_small_for_one_round_is_a_config_error(tmp_path):
    trainer, _, _ = make_trainer(tmp_path, tie_policy, "algorithm.auto_group.env_steps=5")
    with pytest.raises(ConfigError, match="cannot cover one round"):
        trainer.run_iteration()


def test_flat_groups_grow_too(tmp_path):
    trainer, learner, calls = make_trainer(tmp_path, tie_policy, "algorithm.name=grpo", "algorithm.auto_group.start=2",
                                           "algorithm.auto_group.max=4")
    row = trainer.run_iteration()
    assert [(kw["mode"], kw["group_size"]) for kw, _ in calls] == [("flat", 2), ("flat", 2)]
    assert row[M.GROUP_SIZE_MEAN["flat"]] == 4
    check_invariants(written(tmp_path, 0), calls)


def test_start_size_rules():
    auto = AutoGroupConfig(min=2, start=4, max=16, shrink_std=1.0)
    assert tied([1.0, 1.0]) and tied([3.0]) and not tied([0.0, 1.0])
    assert next_start(4, [[0.0, 0.0], [1.0, 1.0], [0.0, 5.0]], [True, True, False], auto=auto, fit=16) == 8  # most tied
    assert next_start(4, [[0.0, 0.0], [1.0, 1.0], [0.0, 5.0]], [True, True, False], auto=auto, fit=6) == 6  # ... fits
    assert next_start(4, [[0.0, 0.0], [1.0, 1.0], [0.0, 5.0]], [True, False, False], auto=auto, fit=16) == 4  # 1 grew
    assert next_start(4, [[0.0, 5.0], [1.0, 1.0]], [False, True], auto=auto, fit=16) == 2  # half high-variance: halve
    assert next_start(2, [[0.0, 5.0]], [False], auto=auto, fit=16) == 2  # not below min
    assert next_start(4, [[0.0, 0.5], [1.0, 1.0]], [False, True], auto=auto, fit=16) == 4  # neither
    assert wants_growth([0.0, 0.0], False, "tied") and wants_growth([0.0, 0.0], False, "unsolved")
    assert wants_growth([1.0, 1.0], True, "tied") and not wants_growth([1.0, 1.0], True, "unsolved")
    assert not wants_growth([0.0, 1.0], True, "tied") and not wants_growth([0.0, 1.0], True, "unsolved")
    assert member_scores([{"group_id": "g", "won": True, "return": 2.0}], episode_score="won") == {"g": [1.0]}


@pytest.mark.parametrize("bad, match", [
    ("algorithm.group_size=big", "integer >= 2 or 'auto'"),
    ("algorithm.auto_group.min=1", "2 <= min <= start <= max"),
    ("algorithm.auto_group.start=20", "2 <= min <= start <= max"),
    ("algorithm.auto_group.shrink_std=0", "must be > 0"),
    ("algorithm.auto_group.grow=always", "choose one of"),
    ("algorithm.auto_group.env_steps=-1", "must be >= 0"),
])
def test_bad_auto_settings_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["algorithm.group_size=auto", bad])


def test_auto_with_a_fixed_level_size_is_a_config_error():
    with pytest.raises(ConfigError, match="must be null with algorithm.group_size=auto"):
        load_config(None, ["algorithm.group_size=auto", "algorithm.planner_group_size=4"])
    assert load_config(None, ["algorithm.group_size=auto"]).algorithm.group_size_of("micro") == 4


@pytest.mark.slow
def test_tiny_model_on_vllm_keeps_the_invariants_and_the_budget(tmp_path):
    pytest.importorskip("vllm")
    from himac_ray.engines.vllm_engine import VLLMGenerator
    from himac_ray.models import build_tiny_llama

    gen = VLLMGenerator(build_tiny_llama(), seed=0, max_model_len=2048, kv_cache_gb=1.0)
    budget = 60
    trainer, learner, calls = make_trainer(
        tmp_path, None, "algorithm.auto_group.start=2", "algorithm.auto_group.max=8",
        f"algorithm.auto_group.env_steps={budget}", "coevolution.iteration=paper", "rollout.plan_max_tokens=48",
        "rollout.action_max_tokens=16", "algorithm.min_informative_groups=2", "algorithm.max_extra_groups=2",
        generator=gen)
    for it in range(2):
        n_calls, before = len(calls), trainer.state.env_steps
        row = trainer.run_iteration()
        assert trainer.state.env_steps - before <= budget
        records = written(tmp_path, it)
        group_of = check_invariants(records, calls[n_calls:])
        sizes = Counter(group_of.values())
        assert all(2 <= n <= 8 for n in sizes.values())
        # a random model's groups mostly tie (every member invalid): the first iteration grows some
        if it == 0:
            assert len(calls) - n_calls > 2 and max(sizes.values()) > 2
        assert row[M.GROUP_SIZE_MEAN["macro"]] >= 2 and row[M.GROUP_SIZE_MEAN["micro"]] >= 2
        assert learner.steps[-1][1]  # the scheduled level's records reached the learner


def test_start_sizes_are_part_of_the_checkpointed_state(tmp_path):
    from himac_ray.run_state import CoordinatorState

    trainer, _, _ = make_trainer(tmp_path, tie_policy, "algorithm.auto_group.start=2", "algorithm.auto_group.max=4")
    trainer.run_iteration()
    trainer.state.save(tmp_path / "coordinator.json")
    assert CoordinatorState.load(tmp_path / "coordinator.json").group_starts == {"macro": 4}
    older = {k: v for k, v in json.loads((tmp_path / "coordinator.json").read_text()).items() if k != "group_starts"}
    (tmp_path / "old.json").write_text(json.dumps(older))  # a checkpoint from before the field
    assert CoordinatorState.load(tmp_path / "old.json").group_starts == {}


@pytest.mark.parametrize("grow, grown", [("tied", {0: 8, 1: 8}), ("unsolved", {0: 2, 1: 8})])
def test_unsolved_grows_only_groups_no_member_won(grow, grown):
    """Seed 0's members all win, seed 1's all fail: both tie; `unsolved` spends samples on seed 1 only."""
    def rollout(*, seeds, group_size, group_ids=None, first_member=0, **_):
        episodes = [{"seed": s, "group_id": (group_ids or {}).get(s, f"flat-{s}"), "won": s == 0,
                     "return": float(s == 0), "traj_id": f"flat-{s}/{first_member + m}"}
                    for s in seeds for m in range(group_size)]
        return RolloutResult(records=[], episodes=episodes, metrics={ENV_STEPS: MAX_STEPS * len(episodes)})

    auto = AutoGroupConfig(min=2, start=2, max=8, grow=grow)
    sizer = AdaptiveRollout(rollout=rollout, mode="flat", planner_params=SamplingParams(),
                            executor_params=SamplingParams(), starts={}, auto=auto, episode_score="return",
                            num_groups=2, step_cap=MAX_STEPS, budget=0)
    result = sizer.roll([0, 1])
    assert dict(Counter(e["seed"] for e in result.episodes)) == grown
    assert sizer.next_starts() == {"flat": 4 if grow == "tied" else 2}  # doubles only when most groups wanted more
