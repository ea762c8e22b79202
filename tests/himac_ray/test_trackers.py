"""Experiment trackers (`run.loggers`): what each one writes for the rows of a real tiny run, and the
one-line error naming the extra when a tracker's package is missing. W&B and MLflow are optional
extras: where they are not installed, their write tests are skipped and the error is tested."""

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from himac_ray import metrics as M
from himac_ray import trackers
from himac_ray.config import ConfigError, config_to_dict, load_config
from tests.himac_ray.test_resume import make_trainer

INSTALLED = {name: importlib.util.find_spec(module) is not None for name, module in trackers.PACKAGES.items()}


def read_scalars(logdir: Path) -> dict[tuple[str, int], float]:
    """`(tag, step) -> value` from every TensorBoard event file under `logdir` (TFRecord framing:
    length u64, its crc u32, the Event proto, its crc u32)."""
    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out[(value.tag, event.step)] = value.simple_value
    return out


ROWS = [
    {M.ITERATION: 0, M.TRAINABLE: "planner", M.SUCCESS_RATE: 0.25, M.MEAN_RETURN: -1.5, M.SYNC_METHOD: "shm",
     "time/rollout": 2.0},
    {M.ITERATION: 1, M.TRAINABLE: "executor", M.SUCCESS_RATE: 0.5, M.MEAN_RETURN: 0.5, M.SYNC_METHOD: "shm",
     "time/rollout": 3.0},
]
EVAL = {M.ITERATION: 2, M.ENV_STEPS: 40, "success_rate": 0.75, "mean_return": 1.0, "episodes": 4,
        "won_by_seed": {"0": 1, "1": 0}, "by_task_type": {"all": {"success_rate": 0.75, "episodes": 4}}}


def write_rows(log: M.MetricsLog) -> None:
    """Two iterations, a held-out evaluation, its keys added to the last row (the trainer's order)."""
    for row in ROWS:
        log.append(row)
    log.append_eval(EVAL)
    log.rewrite_last({**ROWS[1], M.EVAL_SUCCESS: 0.75})
    log.close()


def test_numeric_items_keeps_numbers_and_flattens():
    assert trackers.numeric_items({"a": 1, "b": True, "c": "x", "d": {"e": 2.5}, "won_by_seed": {"0": 1}}, "p/") \
        == {"p/a": 1.0, "p/d/e": 2.5}


@pytest.mark.skipif(not INSTALLED["tensorboard"], reason="tensorboardX is not installed (pip install 'himac-ray[tensorboard]')")
def test_tensorboard_gets_the_metrics_rows_and_the_eval_rows(tmp_path):
    write_rows(M.MetricsLog(tmp_path, run={"loggers": ["jsonl", "tensorboard"]}))
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars[(M.SUCCESS_RATE, 0)] == 0.25 and scalars[(M.SUCCESS_RATE, 1)] == 0.5
    assert scalars[(M.MEAN_RETURN, 0)] == -1.5 and scalars[("time/rollout", 1)] == 3.0
    assert scalars[(M.EVAL_SUCCESS, 1)] == 0.75  # rewrite_last's new key, at the row's step
    assert scalars[("heldout/success_rate", 2)] == 0.75
    assert scalars[("heldout/by_task_type/all/success_rate", 2)] == 0.75
    assert not any("won_by_seed" in tag or tag in (M.TRAINABLE, M.SYNC_METHOD) for tag, _ in scalars)
    assert len(M.MetricsLog(tmp_path).rows()) == 2  # metrics.jsonl is still written


def test_a_log_that_only_reads_opens_no_tracker(tmp_path):
    log = M.MetricsLog(tmp_path, run={"loggers": ["tensorboard"]})
    assert log.rows() == [] and log.eval_rows() == []
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.skipif(not INSTALLED["tensorboard"], reason="tensorboardX is not installed (pip install 'himac-ray[tensorboard]')")
def test_a_two_iteration_tiny_run_logs_to_tensorboard_from_its_config_json(tmp_path):
    """The trainer's own MetricsLog reads run.loggers from the run's config.json (written by train.py)."""
    trainer, _ = make_trainer(tmp_path, "run.iterations=2", "run.eval_every=1", "run.loggers=[jsonl,tensorboard]")
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(trainer.cfg)))
    rows = trainer.run()
    trainer.metrics.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    for row in rows:
        for key, value in trackers.numeric_items(row).items():
            assert scalars[(key, row[M.ITERATION])] == pytest.approx(value, rel=1e-6), key
    evals = M.MetricsLog(tmp_path).eval_rows()
    assert [e[M.ITERATION] for e in evals] == [0, 1, 2]
    for e in evals:
        assert scalars[("heldout/success_rate", e[M.ITERATION])] == pytest.approx(e["success_rate"])


@pytest.mark.skipif(not INSTALLED["mlflow"], reason="mlflow is not installed (optional extra: pip install 'himac-ray[mlflow]')")
def test_mlflow_logs_to_a_local_file_store(tmp_path):
    from mlflow.tracking import MlflowClient

    write_rows(M.MetricsLog(tmp_path, run={"loggers": ["mlflow"], "mlflow_experiment": "t"}))
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").absolute().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, M.SUCCESS_RATE)}
    assert history == {0: 0.25, 1: 0.5}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "heldout/success_rate")] == [0.75]


@pytest.mark.skipif(not INSTALLED["wandb"], reason="wandb is not installed (optional extra: pip install 'himac-ray[wandb]')")
def test_wandb_writes_an_offline_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    write_rows(M.MetricsLog(tmp_path, run={"loggers": ["wandb"]}))
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(folder.glob("*.wandb")), "the offline run holds its history file"


@pytest.mark.parametrize("name", [n for n, ok in INSTALLED.items() if not ok] or ["none-missing"])
def test_a_logger_whose_package_is_missing_fails_at_config_validation(name):
    if name == "none-missing":
        pytest.skip("every tracker package is installed; the simulated case below covers the error")
    with pytest.raises(ConfigError, match=rf"pip install 'himac-ray\[{name}\]'"):
        load_config(None, [f"run.loggers=[jsonl,{name}]"])


def test_a_missing_tracker_package_is_named_in_one_line(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "tensorboardX" else real(m, *a))
    with pytest.raises(ConfigError) as err:
        load_config(None, ["run.loggers=[tensorboard]"])
    assert str(err.value) == ("run.loggers: logger 'tensorboard' needs the tensorboardX package, which is not "
                              "installed: pip install 'himac-ray[tensorboard]'")
    log = M.MetricsLog(tmp_path, run={"loggers": ["tensorboard"]})
    with pytest.raises(RuntimeError, match=r"pip install 'himac-ray\[tensorboard\]'"):
        log.append(ROWS[0])


def test_loggers_are_validated_and_free_to_change_on_resume():
    with pytest.raises(ConfigError, match="'tb' is not a logger"):
        load_config(None, ["run.loggers=[tb]"])
    with pytest.raises(ConfigError, match="expected a list"):
        load_config(None, ["run.loggers=tensorboard"])
    with pytest.raises(ConfigError, match="run.wandb_mode"):
        load_config(None, ["run.wandb_mode=cloud"])
    from himac_ray.run_state import config_changes

    saved = config_to_dict(load_config(None, []))
    assert config_changes(json.loads(json.dumps(saved)), load_config(None, ["run.loggers=[jsonl,tensorboard]"])) == {}
