"""Co-evolution phases, iteration seeds, atomic checkpoints, run directories and the resume-safe
metrics log."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from himac_ray import metrics as M
from himac_ray import run_state
from himac_ray.config import ConfigError, load_config
from himac_ray.run_state import (
    RUN_MARKER,
    CoordinatorState,
    RunStateError,
    begin_checkpoint,
    check_run_dir,
    checkpoint_problem,
    clean_partial_checkpoints,
    commit_checkpoint,
    complete_checkpoints,
    latest_checkpoint,
    prepare_run_dir,
)
from himac_ray.schedule import extra_seeds, iteration_seeds, phase_of, sampling_params


def test_himac_phases_alternate_and_pick_rollout_modes():
    cfg = load_config(None, ["coevolution.planner_iters=2", "coevolution.executor_iters=1"])
    phases = [phase_of(cfg, i) for i in range(6)]
    assert [p.trainable for p in phases] == ["planner", "planner", "executor"] * 2
    assert [p.mode for p in phases] == ["macro", "macro", "micro"] * 2


def test_flat_and_no_coevolution_phases():
    assert phase_of(load_config(None, ["algorithm.name=gigpo"]), 3).mode == "flat"
    # without co-evolution both levels train on one rollout of both phases (macro pre-pass + micro)
    both = phase_of(load_config(None, ["coevolution.enabled=false"]), 0)
    assert both.trainable is None and both.mode == "micro"


def test_planner_phase_scores_blueprints_greedily_and_executor_phase_samples():
    cfg = load_config(None, ["rollout.executor_temperature=0.7"])
    planner, scoring = sampling_params(cfg, phase_of(cfg, 0))
    _, sampling = sampling_params(cfg, phase_of(cfg, 1))
    assert planner.stop == ("</plan>",) and scoring.temperature == 0.0 and sampling.temperature == 0.7


def test_iteration_seeds_are_disjoint_and_a_function_of_the_iteration():
    cfg = load_config(None, ["algorithm.num_groups=3", "env.train_seed_start=50"])
    assert iteration_seeds(cfg, 0) == [50, 51, 52]
    assert iteration_seeds(cfg, 2) == [56, 57, 58]
    assert not set(iteration_seeds(cfg, 1)) & set(range(cfg.env.eval_seed_start, cfg.env.eval_seed_start + 32))


def test_train_pool_cycles_a_fixed_set_of_tasks_disjoint_from_held_out():
    cfg = load_config(None, ["algorithm.num_groups=3", "env.train_seed_start=50", "env.train_pool=4"])
    assert [iteration_seeds(cfg, i) for i in range(3)] == [[50, 51, 52], [53, 50, 51], [52, 53, 50]]
    assert extra_seeds(cfg, 3, 2) == [53, 50]  # extra groups draw from the same 4 tasks
    assert extra_seeds(load_config(None, ["env.train_seed_start=50"]), 3, 2) == [10_000_053, 10_000_054]
    with pytest.raises(ConfigError, match="env.train_pool=40 from env.train_seed_start=0 overlaps the held-out"):
        load_config(None, ["env.train_seed_start=0", "env.train_pool=40", "env.eval_seed_start=30"])


def test_partial_checkpoints_are_never_picked(tmp_path):
    tmp = begin_checkpoint(tmp_path)
    CoordinatorState(iteration=2).save(tmp / "coordinator.json")
    first = commit_checkpoint(tmp, tmp_path, 2, keep=2)
    assert latest_checkpoint(tmp_path) == first
    crashed = begin_checkpoint(tmp_path)  # a crash while writing the next one
    (crashed / "coordinator.json").write_text("{")
    assert latest_checkpoint(tmp_path) == first
    clean_partial_checkpoints(tmp_path)
    assert not crashed.exists()
    assert CoordinatorState.load(first / "coordinator.json").iteration == 2


def test_old_checkpoints_are_pruned(tmp_path):
    for it in (1, 2, 3):
        commit_checkpoint(begin_checkpoint(tmp_path), tmp_path, it, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_00002", "iter_00003"]


def test_metrics_log_drops_redone_iterations_on_resume(tmp_path):
    log = M.MetricsLog(tmp_path)
    for i in range(4):
        log.append({M.ITERATION: i, M.SUCCESS_RATE: i / 4})
    log.append_eval({M.ITERATION: 2, "success_rate": 0.5})
    log.append_eval({M.ITERATION: 4, "success_rate": 0.75})
    log.truncate_from(2)
    assert [r[M.ITERATION] for r in log.rows()] == [0, 1]
    assert [r[M.ITERATION] for r in log.eval_rows()] == [2]
    assert M.plot_curve(log.rows(), tmp_path / "curve.png", evals=log.eval_rows()).exists()


# ------------------------------------------------------------------ checkpoints survive, sort, sync


def test_iteration_directories_sort_by_number(tmp_path):
    for it in (99999, 100000):
        commit_checkpoint(begin_checkpoint(tmp_path), tmp_path, it, keep=2)
    assert latest_checkpoint(tmp_path).name == "iter_100000"
    commit_checkpoint(begin_checkpoint(tmp_path), tmp_path, 100001, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["iter_100000", "iter_100001"]


def _written(run_dir, iteration: int, weights: int = 1):
    """A temporary checkpoint holding a loadable (fake) learner state and the coordinator state."""
    tmp = begin_checkpoint(run_dir)
    _fake_learner_checkpoint(tmp / "learner", weights)
    CoordinatorState(iteration=iteration).save(tmp / "coordinator.json")
    return tmp


def test_previous_checkpoint_survives_a_crash_inside_the_commit(tmp_path, monkeypatch):
    first = commit_checkpoint(_written(tmp_path, 3), tmp_path, 3, keep=1)

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(run_state.os, "replace", crash)
    # the same iteration again (an exit checkpoint): the complete one is kept, never deleted first
    assert commit_checkpoint(_written(tmp_path, 3, weights=2), tmp_path, 3, keep=1) == first
    assert latest_checkpoint(tmp_path) == first
    with pytest.raises(OSError):  # the next one: nothing is pruned before it is in place
        commit_checkpoint(_written(tmp_path, 4), tmp_path, 4, keep=1)
    assert latest_checkpoint(tmp_path) == first and checkpoint_problem(first) is None
    monkeypatch.undo()
    # a corrupt checkpoint of the same iteration is replaced, not kept
    (first / "coordinator.json").write_text("{")
    assert commit_checkpoint(_written(tmp_path, 3), tmp_path, 3, keep=1) == first
    assert checkpoint_problem(first) is None
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_checkpoint_files_and_directories_are_fsynced_before_the_marker(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def record(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(run_state.os, "fsync", record)
    tmp = begin_checkpoint(tmp_path).resolve()
    (tmp / "learner" / "policy").mkdir(parents=True)
    (tmp / "learner" / "policy" / "model.safetensors").write_bytes(b"w" * 64)
    CoordinatorState(iteration=1).save(tmp / "coordinator.json")
    final = commit_checkpoint(tmp, tmp_path, 1, keep=2).resolve()
    paths = synced
    for rel in ("learner/policy/model.safetensors", "coordinator.json", "learner/policy", "learner", ""):
        assert tmp / rel in paths, rel
    marker = paths.index(tmp / run_state.COMPLETE)
    assert all(paths.index(tmp / rel) < marker for rel in ("learner/policy/model.safetensors", "coordinator.json"))
    assert final.parent in paths[marker:]  # the rename is made durable too


def _fake_learner_checkpoint(directory: Path, weights: int) -> None:
    """The learner's checkpoint layout (`himac_ray.learner.Learner.save_checkpoint`), tiny."""
    from safetensors.numpy import save_file

    (directory / "policy").mkdir(parents=True)
    save_file({"w": np.full(4, weights, dtype=np.float32)}, str(directory / "policy" / "model.safetensors"))
    (directory / "policy" / "optim_rank0.pt").write_bytes(b"optimizer")
    (directory / "rng_rank0.pt").write_bytes(b"rng")
    (directory / "learner_state.json").write_text(json.dumps(
        {"world_size": 1, "zero_stage": 2, "steps": weights, "policies": ["policy"]}))


def test_checkpoint_problem_finds_truncated_and_missing_files(tmp_path):
    tmp = begin_checkpoint(tmp_path)
    _fake_learner_checkpoint(tmp / "learner", 1)
    CoordinatorState(iteration=1).save(tmp / "coordinator.json")
    ckpt = commit_checkpoint(tmp, tmp_path, 1, keep=2)
    assert checkpoint_problem(ckpt) is None
    weights = ckpt / "learner" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    assert "truncated" in checkpoint_problem(ckpt)
    (ckpt / "coordinator.json").write_text("{")
    assert "JSONDecodeError" in checkpoint_problem(ckpt)


def test_metrics_log_drops_a_partial_last_line(tmp_path):
    log = M.MetricsLog(tmp_path)
    for i in range(3):
        log.append({M.ITERATION: i})
    with log.path.open("a") as f:
        f.write('{"iteration": 3, "charts/succ')  # a crash mid-write
    assert [r[M.ITERATION] for r in log.rows()] == [0, 1, 2]
    log.truncate_from(3)
    log.append({M.ITERATION: 3})
    assert [r[M.ITERATION] for r in log.rows()] == [0, 1, 2, 3]
    log.path.write_text('{"iteration": 0}\n{broken\n{"iteration": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        log.rows()


# ------------------------------------------------------------------ run directories


def test_only_a_himac_ray_run_directory_is_moved_aside(tmp_path):
    mine = tmp_path / "run"
    assert prepare_run_dir(mine, resume=False) is None and (mine / RUN_MARKER).exists()
    (mine / "metrics.jsonl").write_text("{}\n")
    aside = prepare_run_dir(mine, resume=False)
    assert aside.name.startswith("run.old-") and (aside / "metrics.jsonl").exists()
    assert (mine / RUN_MARKER).exists() and not (mine / "metrics.jsonl").exists()
    # a run from before the marker: config.json and only files a run writes
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.json").write_text("{}")
    assert prepare_run_dir(legacy, resume=False) is not None
    # anything else is refused and left alone
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text("{}")
    (home / "thesis.tex").write_text("years of work")
    for path in (home, Path("/")):
        with pytest.raises(RunStateError, match="not a himac-ray run directory"):
            check_run_dir(path, resume=False)
    with pytest.raises(RunStateError):
        prepare_run_dir(home, resume=False)
    assert (home / "thesis.tex").read_text() == "years of work"
    with pytest.raises(RunStateError, match="is not a directory"):
        check_run_dir(home / "thesis.tex", resume=False)
    check_run_dir(tmp_path / "new", resume=False)  # absent or empty: fine
