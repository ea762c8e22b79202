"""Co-evolution phases, iteration seeds, atomic checkpoints and the resume-safe metrics log."""

from himac_ray import metrics as M
from himac_ray.config import load_config
from himac_ray.run_state import (
    CoordinatorState,
    begin_checkpoint,
    clean_partial_checkpoints,
    commit_checkpoint,
    latest_checkpoint,
)
from himac_ray.trainer import iteration_seeds, phase_of, sampling_params


def test_himac_phases_alternate_and_pick_rollout_modes():
    cfg = load_config(None, ["coevolution.planner_iters=2", "coevolution.executor_iters=1"])
    phases = [phase_of(cfg, i) for i in range(6)]
    assert [p.trainable for p in phases] == ["planner", "planner", "executor"] * 2
    assert [p.mode for p in phases] == ["macro", "macro", "micro"] * 2


def test_flat_and_no_coevolution_phases():
    assert phase_of(load_config(None, ["algorithm.name=gigpo"]), 3).mode == "flat"
    both = phase_of(load_config(None, ["coevolution.enabled=false"]), 0)
    assert both.trainable is None and both.mode == "macro"


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
