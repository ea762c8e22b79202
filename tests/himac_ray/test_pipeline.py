"""The async pipeline's rules (himac_ray/pipeline.py) and the trainer running one rollout ahead.

Fast: in-process scripted rollouts on Sokoban and the fake learner of test_resume (no Ray, no
DeepSpeed); the real stack is in tests/e2e/test_train_async.py.
"""

import threading
import time

import pytest

from himac_ray.data import Record
from himac_ray.pipeline import RolloutAhead, busy_seconds, lookahead, staleness_histogram, staleness_split
from himac_ray.run_state import CoordinatorState
from himac_ray.schedule import EXTRA_SEED_OFFSET, iteration_seeds
from tests.himac_ray.test_resume import make_trainer


def rec(version: int) -> Record:
    return Record(group_id="g", traj_id="t", level="act", env_id="e", seed=0, step=0, subgoal_index=-1,
                  prompt_ids=[1], response_ids=[2], logprobs=[0.0], weights_version=version)


def test_staleness_split_and_histogram():
    records = [rec(v) for v in (5, 4, 4, 3, 1)]
    kept, dropped = staleness_split(records, version=5, max_staleness=1)
    assert [r.weights_version for r in kept] == [5, 4, 4] and [r.weights_version for r in dropped] == [3, 1]
    assert staleness_histogram(records, version=5) == {0: 1, 1: 2, 2: 1, 4: 1}


def test_lookahead_only_in_async_mode_with_staleness_allowed():
    assert lookahead(pipeline="async", max_staleness=1) == 1 == lookahead(pipeline="async", max_staleness=3)
    assert lookahead(pipeline="async", max_staleness=0) == 0 == lookahead(pipeline="sync", max_staleness=1)


def test_busy_seconds_counts_the_window_only():
    assert busy_seconds([(0.0, 2.0), (3.0, 10.0)], lo=1.0, hi=5.0) == pytest.approx(3.0)
    assert busy_seconds([], lo=0.0, hi=1.0) == 0.0


def test_rollout_ahead_works_on_a_copy_and_hands_changes_over_when_taken():
    ahead, state = RolloutAhead(), CoordinatorState(iteration=3, extra_groups=7)
    release = threading.Event()

    def collect(copy):
        release.wait(5)
        copy.extra_groups += 2
        return "result"

    ahead.start(iteration=4, state=state, collect=collect)
    assert state.extra_groups == 7  # a checkpoint now holds the cursor from before the rollout
    state.iteration, state.weights_version = 4, 9  # the trainer's own changes meanwhile
    release.set()
    result, seconds, waited = ahead.take(4, state)
    assert result == "result" and seconds >= waited >= 0
    assert (state.iteration, state.weights_version, state.extra_groups) == (4, 9, 9)
    assert ahead.take(5, state) is None


def test_rollout_ahead_for_another_iteration_is_dropped_and_errors_reach_the_taker():
    ahead, state = RolloutAhead(), CoordinatorState()
    ahead.start(iteration=2, state=state, collect=lambda s: time.sleep(0.01))
    assert ahead.take(1, state) is None and ahead.take(2, state) is None  # dropped by the first take

    def fail(_):
        raise RuntimeError("env pool gone")

    ahead.start(iteration=1, state=state, collect=fail)
    with pytest.raises(RuntimeError, match="env pool gone"):
        ahead.take(1, state)


def _recording(trainer, calls: list) -> None:
    """Remember each rollout's seeds; stamp its records with the version the samplers hold (the
    scripted generator has no weights: the fake sync's versions are the trainer's)."""
    inner = trainer.rollout

    def roll(**kw):
        calls.append(list(kw["seeds"]))
        version = trainer.state.weights_version
        result = inner(**kw)
        for r in result.records:
            r.weights_version = version
        return result

    trainer.rollout = roll


def test_async_trainer_trains_each_seed_once_across_a_failure_and_resume(tmp_path):
    """Dynamic sampling draws exactly one extra group per iteration (one group per iteration, two
    informative ones wanted) while the next iteration's rollout runs ahead; the sync after iteration
    2's update fails, with iteration 3's rollout (and its extra group) already drawn ahead. The
    resume rolls out iterations 2, 3, 4 and their extra groups on exactly the seeds they would have
    had: the cursor in the checkpoint excludes the rollout that was ahead."""
    overrides = ("run.pipeline=async", "run.iterations=5", "algorithm.min_informative_groups=2",
                 "algorithm.max_extra_groups=1")
    trainer, _ = make_trainer(tmp_path, *overrides, fail_sync_at=3)
    first: list[list[int]] = []
    _recording(trainer, first)
    with pytest.raises(RuntimeError, match="sampler died"):
        trainer.run()
    cfg = trainer.cfg
    base = cfg.env.train_seed_start + EXTRA_SEED_OFFSET
    train_seeds = [iteration_seeds(cfg, i) for i in range(5)]
    assert [c for c in first if c[0] >= base] == [[base + k] for k in range(4)]  # 3's drawn ahead
    assert [c for c in first if c in train_seeds] == train_seeds[:4]

    trainer2, _ = make_trainer(tmp_path, *overrides)
    again: list[list[int]] = []
    _recording(trainer2, again)
    assert trainer2.restore()
    assert (trainer2.state.iteration, trainer2.state.extra_groups) == (2, 2)
    rows = trainer2.run()
    assert [r["iteration"] for r in rows] == [2, 3, 4] and [r["groups/extra"] for r in rows] == [1, 1, 1]
    assert [c for c in again if c[0] >= base] == [[base + k] for k in (2, 3, 4)]
    assert [c for c in again if c in train_seeds] == train_seeds[2:]
    assert trainer2.state.extra_groups == 5
    assert [(r["async/dropped_stale"], r["async/staleness_1"] > 0) for r in rows] == [(0, False), (0, True), (0, True)]


def test_sync_mode_rolls_nothing_out_ahead(tmp_path):
    trainer, _ = make_trainer(tmp_path, "run.iterations=2")
    calls: list[list[int]] = []
    _recording(trainer, calls)
    trainer.ahead.start = None  # sync mode must never call it
    rows = trainer.run()
    assert [r["time/rollout_wait"] == r["time/rollout"] for r in rows] == [True, True]
    assert "async/dropped_stale" not in rows[0]


def test_records_staler_than_the_bound_are_counted_and_not_trained(tmp_path):
    """Scripted records all say version 0 (as if the samplers never got new weights): from
    learner version 2 on, with max_staleness=1, every record is too old."""
    trainer, logs = make_trainer(tmp_path, "run.pipeline=async", "run.iterations=3", "run.max_staleness=1",
                               "learner.skip_zero_advantage=false")
    rows = trainer.run()
    assert [r["async/staleness_max"] for r in rows] == [0, 1, 0]
    assert rows[2]["async/dropped_stale"] > 0 and rows[2]["learner/records"] == 0
    assert rows[1]["async/dropped_stale"] == 0 and rows[1]["learner/records"] == rows[1]["async/staleness_1"] > 0
    assert any("older than run.max_staleness=1" in line for line in logs)
