"""`himac-ray sweep` without Ray (tools/sweep.py, sweep_grid.py, sweep_trial.py): grid parsing, trial configs,
summaries, table and plot, the trial's hand-over to Tune."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from himac_ray.config import ConfigError
from himac_ray.tools import sweep, sweep_grid, sweep_trial

ROOT = Path(__file__).parents[3]
CONFIG = str(ROOT / "configs" / "sweep_tiny_cpu.yaml")


def args(*argv):
    return sweep.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_parse_grid_values_and_brackets():
    grid = sweep_grid.parse_grid(["algorithm.group_size=2,4,8", "learner.lr=1e-6, 3e-6",
                                  "env.kwargs.dim_room=[6,6],[7,7]", "coevolution.enabled=true,false"])
    assert grid["algorithm.group_size"] == [2, 4, 8]
    assert [float(v) for v in grid["learner.lr"]] == [1e-6, 3e-6]
    assert grid["env.kwargs.dim_room"] == [[6, 6], [7, 7]]
    assert grid["coevolution.enabled"] == [True, False]
    for bad in (["algorithm.group_size"], ["a.b=1", "a.b=2"], ["run.dir=a,b"], ["a.b=1,,2"]):
        with pytest.raises(ConfigError):
            sweep_grid.parse_grid(bad)


def test_grid_points_cover_every_combination():
    points = sweep_grid.grid_points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(points) == 6 and points[0] == {"a": 1, "b": "x"} and points[-1] == {"a": 2, "b": "z"}


def test_build_spec_validates_every_point_and_samples_add_seeds():
    spec = sweep.build_spec(args("--config", CONFIG, "--grid", "algorithm.group_size=2,4,8"))
    assert spec["points"] == [{"algorithm.group_size": g} for g in (2, 4, 8)]
    spec = sweep.build_spec(args("--config", CONFIG, "--grid", "algorithm.group_size=2,4", "--samples", "2",
                                 "--set", "run.seed=7"))
    assert spec["grid"]["run.seed"] == [7, 8] and len(spec["points"]) == 4
    with pytest.raises(ConfigError, match="group_size"):
        sweep.build_spec(args("--config", CONFIG, "--grid", "algorithm.group_size=1,4"))  # himac needs G >= 2
    with pytest.raises(ConfigError, match="unknown config key"):
        sweep.build_spec(args("--config", CONFIG, "--grid", "algorithm.group_sise=2,4"))
    with pytest.raises(ConfigError):
        sweep.build_spec(args("--config", CONFIG))  # no grid


def test_trial_config_sets_overrides_and_run_dir(tmp_path):
    spec = sweep.build_spec(args("--config", CONFIG, "--grid", "algorithm.group_size=2,8",
                                 "--grid", "env.kwargs.max_steps=10"))
    cfg = sweep_grid.trial_config_dict(spec["base"], spec["points"][1], tmp_path / "t1" / "run")
    assert cfg["algorithm"]["group_size"] == 8 and cfg["env"]["kwargs"]["max_steps"] == 10
    assert cfg["env"]["kwargs"]["dim_room"] == [6, 6] and cfg["run"]["dir"] == str(tmp_path / "t1" / "run")
    assert spec["base"]["algorithm"]["group_size"] == 4  # the base is not modified


def test_resources_and_concurrency():
    from himac_ray.config import load_config

    cfg = load_config(CONFIG)
    assert sweep.trial_resources(cfg) == {"CPU": 2.0, "GPU": 0.0}
    assert sweep.max_concurrent([{"CPU": 2.0, "GPU": 0.0}], {"CPU": 2.0}) == 1
    assert sweep.max_concurrent([{"CPU": 2.0, "GPU": 0.0}], {"CPU": 9.0}) == 4
    assert sweep.max_concurrent([{"CPU": 2, "GPU": 4}, {"CPU": 2, "GPU": 2}], {"CPU": 64, "GPU": 8}) == 2
    assert sweep.max_concurrent([{"CPU": 4.0}], {"CPU": 2.0}) == 1


def rows(successes, steps_per_iter=100):
    return [{"iteration": i, "trainable": "planner" if i % 2 == 0 else "executor", "charts/success_rate": s,
             "charts/mean_return": s - 1, "charts/env_steps_total": (i + 1) * steps_per_iter}
            for i, s in enumerate(successes)]


def test_summary_table_and_plot(tmp_path):
    s = sweep_grid.summarize_rows(rows([0.0, 0.5, 0.25, 0.5]))
    assert (s["best_success"], s["env_steps_to_best"], s["iteration_of_best"]) == (0.5, 200, 1)
    assert s["final_success"] == 0.5 and s["iterations"] == 4
    # a resumed trial may repeat iterations: the last copy wins
    assert sweep_grid.summarize_rows(rows([0.0, 0.5]) + rows([0.0, 0.75]))["best_success"] == 0.75
    assert sweep_grid.summarize_rows([])["best_success"] is None

    keys = ["algorithm.group_size"]
    trials = [
        {"trial": f"abc_0000{i}_group_size={g}", "params": {"algorithm.group_size": g}, "status": "OK",
         "error": None, "run_dir": "", **sweep_grid.summarize_rows(r), "rows": r}
        for i, (g, r) in enumerate([(2, rows([0.0, 0.25])), (4, rows([0.5, 0.5], 200)), (8, [])])
    ]
    trials[2].update(status="ERROR", error="RuntimeError: boom")
    table = sweep_grid.write_results(trials, tmp_path, keys, title="t")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["trial", "group_size", "status"]
    assert "abc_00001" in lines[3] and "0.500 *" in lines[3] and " 200 " in lines[3]
    assert "ERROR" in lines[4] and lines[-1] == "error in abc_00002: RuntimeError: boom"
    assert (tmp_path / sweep_grid.PLOT_FILE).stat().st_size > 1000
    assert (tmp_path / sweep_grid.TABLE_FILE).read_text().strip() == table
    assert len(__import__("json").loads((tmp_path / sweep_grid.SUMMARY_FILE).read_text())) == 3


def test_short_names():
    assert sweep_grid.short_params({"algorithm.group_size": 4, "learner.lr": 1e-6}) == "group_size=4,lr=1e-06"
    assert sweep_grid.trial_id("27938_00001_group_size=4") == "27938_00001"


def test_cli_has_sweep_and_stays_ray_free():
    from himac_ray.cli import build_parser

    parsed = build_parser().parse_args(["sweep", "--config", CONFIG, "--grid", "algorithm.group_size=2,4,8"])
    assert parsed.func is sweep.run and parsed.grid == ["algorithm.group_size=2,4,8"]
    code = "import sys, himac_ray.cli, himac_ray.tools.sweep; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_resume_without_a_sweep_fails_clearly(tmp_path, capsys):
    assert sweep.run(args("--resume", "--storage", str(tmp_path))) == 2
    assert "no sweep to resume" in capsys.readouterr().err


class FakeRun(sweep_trial.TrialRun):
    """TrialRun's hand-over logic with a scripted coordinator: each poll reveals the next event."""

    def __init__(self, iterations, events, run_dir):
        from himac_ray.config import load_config

        self.cfg = load_config(CONFIG, [f"run.iterations={iterations}"])
        self.run_dir, self.pending, self.reported, self.seen, self.finished = run_dir, [], -1, 0, False
        self.events, self.polls, self.coordinator = list(events), 0, None

    def _poll(self, timeout=1.0):
        self.polls += 1
        kind, rows = self.events.pop(0)
        self._add(rows)
        self.finished = kind == "returned"


def test_trial_run_hands_over_one_iteration_per_step_and_the_last_after_the_run_returned(tmp_path):
    r = rows([0.0, 0.5, 0.25])
    run = FakeRun(3, [("status", r[:1]), ("status", r[:3]), ("returned", r)], tmp_path)
    first = run.next()
    assert (first["iteration"], first["done"], first["iterations_done"]) == (0, False, 1)
    second = run.next()  # iteration 1 arrived together with 2 (a missed poll)
    assert (second["iteration"], second["done"]) == (1, False) and run.polls == 2
    last = run.next()  # the final iteration waits for the run to return (final checkpoint)
    assert (last["iteration"], last["done"], last["success_rate"]) == (2, True, 0.25) and run.polls == 3


def test_trial_run_with_nothing_left_reports_done(tmp_path):
    run = FakeRun(2, [("returned", [])], tmp_path)
    assert run.next() == {"iterations_done": 0, "done": True}
    run.close()  # no coordinator: nothing to release
