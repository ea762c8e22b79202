"""Group-relative advantages against hand-computed values; loop vs vectorized."""

import math

import numpy as np
import pytest

from himac_ray.advantage import (
    compute_advantages,
    discounted_returns,
    episode_advantages,
    group_normalize,
    group_normalize_loop,
    rloo_advantages,
    step_advantages,
)
from himac_ray.data import Record

EPS = 1e-6


def rec(level, group, traj, step, *, ret=0.0, reward=0.0, anchor="", won=False, sub=-1,
        sub_done=False, k=0):
    return Record(group_id=group, traj_id=traj, level=level, env_id="e", seed=0, step=step,
                  subgoal_index=sub, prompt_ids=[1], response_ids=[2], logprobs=[-1.0],
                  reward=reward, anchor=anchor, episode_return=ret, won=won, sub_done=sub_done,
                  num_subgoals=k)


def adv(records):
    return [r.advantage for r in records]


# --------------------------------------------------------------------------- primitives


@pytest.mark.parametrize("fn", [group_normalize, group_normalize_loop])
def test_group_normalize_hand_values(fn):
    scores = [1.0, 2.0, 3.0, 5.0, 4.0, 4.0]
    groups = ["a", "a", "a", "b", "c", "c"]
    # group a: mean 2, sample std 1; b singleton; c constant
    np.testing.assert_allclose(
        fn(scores, groups), [-1 / (1 + EPS), 0, 1 / (1 + EPS), 0, 0, 0], rtol=0, atol=1e-15
    )
    np.testing.assert_array_equal(fn(scores, groups, norm_std=False), [-1, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("norm_std", [True, False])
def test_group_normalize_loop_matches_vectorized(norm_std):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, size=200)
    scores = rng.normal(size=200) * 5
    scores[groups == 3] = 0.1  # a constant group whose mean is not exactly 0.1 in float
    groups[7] = 99  # a singleton group
    fast = group_normalize(scores, groups, norm_std=norm_std)
    slow = group_normalize_loop(scores, groups, norm_std=norm_std)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    assert np.all(fast[groups == 3] == 0) and fast[7] == 0
    # string group keys give the same answer as integer ones
    np.testing.assert_array_equal(group_normalize(scores, [f"g{g}" for g in groups],
                                                  norm_std=norm_std), fast)


def test_constant_and_singleton_groups_never_nan():
    for fn in (group_normalize, group_normalize_loop):
        out = fn([0.1, 0.1, 0.1, 7.0, -0.0, 0.0], [0, 0, 0, 1, 2, 2], eps=0.0)
        assert np.all(np.isfinite(out)) and np.all(out == 0)
    out = rloo_advantages([0.1, 0.1, 0.1, 7.0], [0, 0, 0, 1])
    assert np.all(out == 0)
    assert group_normalize([], []).shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        group_normalize([1.0, float("nan")], [0, 0])


def test_rloo_hand_values():
    # group g: R = 3, 0, 0 -> 3 - 0, 0 - 1.5, 0 - 1.5 ; group h singleton -> 0
    np.testing.assert_allclose(rloo_advantages([3, 0, 0, 5], ["g", "g", "g", "h"]),
                               [3, -1.5, -1.5, 0])


def test_episode_advantages_count_trajectories_once():
    # trajectory t1 has 3 records with R=10, t2 has one with R=0
    scores, groups, trajs = [10, 10, 10, 0], ["u"] * 4, ["t1", "t1", "t1", "t2"]
    a = 5 / (math.sqrt(50) + EPS)  # per trajectory: mean 5, sample std sqrt(50)
    np.testing.assert_allclose(episode_advantages(scores, groups, trajs), [a, a, a, -a])
    # over_steps (verl-agent cross-steps): mean 7.5, sample std 5 over the 4 records
    np.testing.assert_allclose(
        episode_advantages(scores, groups, trajs, over_steps=True),
        [2.5 / (5 + EPS)] * 3 + [-7.5 / (5 + EPS)],
    )
    np.testing.assert_allclose(episode_advantages(scores, groups, trajs, estimator="rloo"),
                               [10, 10, 10, -10])


def test_discounted_returns_order_and_reset():
    # traj a given out of step order; traj b interleaved
    rewards = [10.0, 0.0, 1.0, 0.0, 2.0]
    trajs = ["a", "a", "b", "a", "b"]
    steps = [2, 0, 0, 1, 1]
    out = discounted_returns(rewards, trajs, steps, gamma=0.95)
    np.testing.assert_allclose(out, [10.0, 9.025, 1 + 0.95 * 2, 9.5, 2.0])


def test_step_advantages_group_within_episode_group():
    out = step_advantages([5.0, -0.05, 3.0], ["g", "g", "h"], ["s0", "s0", "s0"], norm_std=False)
    np.testing.assert_allclose(out, [2.525, -2.525, 0.0])


# --------------------------------------------------------------------------- compute_advantages


def _himac_batch():
    # macro group m: three blueprints, returns 10, 0, 0; trajectories t1,t2 also have act records
    # in micro group u (t1: 3 steps, R=10; t2: 1 step, R=0)
    return [
        rec("plan", "m", "t1", -1, ret=10), rec("plan", "m", "t2", -1, ret=0),
        rec("plan", "m", "t3", -1, ret=0),
        rec("act", "u", "t1", 0, ret=10), rec("act", "u", "t1", 1, ret=10),
        rec("act", "u", "t1", 2, ret=10, reward=10), rec("act", "u", "t2", 0, ret=0),
    ]


def test_himac_macro_and_micro_hand_values():
    batch = compute_advantages(_himac_batch(), algorithm="himac", trainable=None)
    std = math.sqrt(((20 / 3) ** 2 + 2 * (10 / 3) ** 2) / 2)  # sample std of 10, 0, 0
    macro = [(20 / 3) / (std + EPS), -(10 / 3) / (std + EPS), -(10 / 3) / (std + EPS)]
    micro = 5 / (math.sqrt(50) + EPS)
    np.testing.assert_allclose(adv(batch), macro + [micro] * 3 + [-micro])


def test_himac_phase_masks_other_level():
    batch = compute_advantages(_himac_batch(), algorithm="himac", trainable="planner")
    assert adv(batch)[3:] == [0.0] * 4 and adv(batch)[0] > 0
    batch = compute_advantages(_himac_batch(), algorithm="himac", trainable="executor")
    assert adv(batch)[:3] == [0.0] * 3 and adv(batch)[3] > 0


def test_himac_won_score_and_norm_std_off():
    batch = _himac_batch()
    batch[0].won = True  # only t1's plan record says won; the trajectory counts as won
    compute_advantages(batch, algorithm="himac", trainable="planner", episode_score="won",
                       norm_std=False)
    np.testing.assert_allclose(adv(batch)[:3], [2 / 3, -1 / 3, -1 / 3])


def test_himac_subgoal_shaping():
    # both blueprints fail (R=0); t1's executor declares subgoal 0 of K=2 done, t2's none
    batch = [
        rec("plan", "m", "t1", -1, k=2), rec("plan", "m", "t2", -1, k=2),
        rec("act", "u", "t1", 0, sub=0, sub_done=True), rec("act", "u", "t1", 1, sub=1),
        rec("act", "u", "t2", 0, sub=0),
    ]
    compute_advantages(batch, algorithm="himac", norm_std=False, subgoal_shaping_w=1.0)
    # scores 0.5 and 0.0 at both levels
    np.testing.assert_allclose(adv(batch), [0.25, -0.25, 0.25, 0.25, -0.25])
    compute_advantages(batch, algorithm="himac", norm_std=False)
    assert adv(batch) == [0.0] * 5


def test_grpo_and_rloo_flat():
    batch = [rec("act", "g", "a", 0, ret=3), rec("act", "g", "a", 1, ret=3),
             rec("act", "g", "b", 0, ret=0), rec("act", "g", "c", 0, ret=0),
             rec("plan", "p", "a", -1, ret=3)]
    compute_advantages(batch, algorithm="rloo", trainable="executor")
    assert adv(batch) == [3.0, 3.0, -1.5, -1.5, 0.0]
    compute_advantages(batch, algorithm="grpo")
    std = math.sqrt((2 ** 2 + 1 + 1) / 2)  # trajectories 3, 0, 0: mean 1
    np.testing.assert_allclose(adv(batch), [2 / (std + EPS)] * 2 + [-1 / (std + EPS)] * 2 + [0])
    with pytest.raises(ValueError, match="planner"):
        compute_advantages(batch, algorithm="grpo", trainable="planner")


@pytest.mark.parametrize("algorithm", ["himac", "grpo"])
def test_trajectory_step_weighting_balances_long_failures(algorithm):
    # one winner of 1 step, two losers of 3 steps each: uniform steps weigh the losers 6 : 1
    batch = [rec("act", "g", "w", 0, ret=1.0), *(rec("act", "g", t, i, ret=0.0) for t in "ab" for i in range(3))]
    compute_advantages(batch, algorithm=algorithm, trainable="executor", norm_std=False)
    uniform = adv(batch)
    np.testing.assert_allclose(uniform, [2 / 3] + [-1 / 3] * 6)
    assert sum(uniform) < 0  # the failures' negative mass dominates
    compute_advantages(batch, algorithm=algorithm, trainable="executor", norm_std=False, step_weighting="trajectory")
    mean = 7 / 3  # act records per trajectory
    np.testing.assert_allclose(adv(batch), [2 / 3 * mean] + [-1 / 3 * mean / 3] * 6)
    assert abs(sum(adv(batch))) < 1e-12  # the group's positive and negative weight balance


def _gigpo_batch(level="act"):
    # episode group g: traj a visits s0 -> s1 and wins (rewards 0, 10);
    # traj b visits s0 -> s1 -> s1 (rewards 0, -0.1, 0). Group h: one traj, also at "s0".
    return [
        rec(level, "g", "a", 0, ret=10, reward=0, anchor="s0"),
        rec(level, "g", "a", 1, ret=10, reward=10, anchor="s1"),
        rec(level, "g", "b", 0, ret=-0.1, reward=0, anchor="s0"),
        rec(level, "g", "b", 1, ret=-0.1, reward=-0.1, anchor="s1"),
        rec(level, "g", "b", 2, ret=-0.1, reward=0, anchor="s1"),
        rec(level, "h", "c", 0, ret=10, reward=10, anchor="s0"),
    ]


def test_gigpo_mean_norm_hand_values():
    batch = compute_advantages(_gigpo_batch(), algorithm="gigpo", norm_std=False, gamma=0.5,
                               step_advantage_w=1.0)
    # step returns (gamma 0.5): a: 5, 10; b: -0.05, -0.1, 0
    # episode term: mean 4.95 -> a +5.05, b -5.05
    # step group s0: {5, -0.05} -> +-2.525; s1: {10, -0.1, 0}, mean 3.3 -> 6.7, -3.4, -3.3
    np.testing.assert_allclose(adv(batch), [7.575, 11.75, -7.575, -8.45, -8.35, 0.0])
    # w scales only the step term
    batch = compute_advantages(_gigpo_batch(), algorithm="gigpo", norm_std=False, gamma=0.5,
                               step_advantage_w=0.5)
    np.testing.assert_allclose(adv(batch), [6.3125, 8.4, -6.3125, -6.75, -6.7, 0.0])


def test_gigpo_mean_std_norm_hand_values():
    batch = compute_advantages(_gigpo_batch(), algorithm="gigpo", gamma=0.5)
    ep = 5.05 / (5.05 * math.sqrt(2) + EPS)
    s0 = 2.525 / (2.525 * math.sqrt(2) + EPS)
    s1_std = math.sqrt((6.7 ** 2 + 3.4 ** 2 + 3.3 ** 2) / 2)
    s1 = [x / (s1_std + EPS) for x in (6.7, -3.4, -3.3)]
    np.testing.assert_allclose(
        adv(batch), [ep + s0, ep + s1[0], -ep - s0, -ep + s1[1], -ep + s1[2], 0.0], rtol=1e-12
    )


def test_himac_micro_step_term_is_gigpo_on_act_records():
    gigpo = compute_advantages(_gigpo_batch(), algorithm="gigpo", gamma=0.5)
    himac = compute_advantages(_gigpo_batch(), algorithm="himac", trainable="executor",
                               gamma=0.5, micro_step_term=True)
    assert adv(himac) == adv(gigpo)
    plain = compute_advantages(_gigpo_batch(), algorithm="himac", trainable="executor", gamma=0.5)
    assert adv(plain) == adv(compute_advantages(_gigpo_batch(), algorithm="grpo"))


@pytest.mark.parametrize("algorithm", ["himac", "grpo", "gigpo", "rloo"])
def test_degenerate_batches_are_zero_not_nan(algorithm):
    batch = [rec("plan", "m", "t1", -1, ret=1), rec("plan", "m", "t2", -1, ret=1),
             rec("act", "u", "t1", 0, ret=1, reward=1, anchor="s"),
             rec("act", "u", "t2", 0, ret=1, reward=1, anchor="s"),
             rec("plan", "solo", "t3", -1, ret=5), rec("act", "solo", "t3", 0, ret=5, reward=5)]
    compute_advantages(batch, algorithm=algorithm, eps=0.0)
    assert adv(batch) == [0.0] * 6
    assert compute_advantages([], algorithm=algorithm) == []


def test_compute_advantages_rejects_bad_options():
    with pytest.raises(ValueError, match="algorithm"):
        compute_advantages([], algorithm="ppo")
    with pytest.raises(ValueError, match="trainable"):
        compute_advantages([], trainable="both")
    with pytest.raises(ValueError, match="episode_score"):
        compute_advantages([], episode_score="success")
    with pytest.raises(ValueError, match="step_weighting"):
        compute_advantages([], step_weighting="token")
