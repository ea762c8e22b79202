"""Experiment trackers beside `metrics.jsonl`: TensorBoard, Weights & Biases, MLflow (`run.loggers`).

`metrics.MetricsLog` hands every row it writes to the trackers opened here, step = the row's
`iteration`, with the same keys as `metrics.jsonl` (numeric values only; nested dicts flattened
with `/`). Rows of `eval.jsonl` go under `heldout/` (`heldout/success_rate`, ...) at step = the
iterations finished before that evaluation, as eval.jsonl counts them.

Defaults never touch the network: TensorBoard writes event files to RUN_DIR/tensorboard, W&B runs
in offline mode in RUN_DIR/wandb (`wandb sync` uploads later), MLflow logs to a file store in
RUN_DIR/mlruns. Each library is an optional extra imported only when its tracker opens; a missing
one is reported by `missing_package` (config validation calls it). No Ray, no torch here.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Mapping
from pathlib import Path

LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")
"""`run.loggers` values; jsonl (metrics.jsonl, eval.jsonl) is always on"""
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow"}
"""logger -> the module it imports; the setup.cfg extra has the logger's name"""
HELDOUT_PREFIX = "heldout/"
SKIPPED_KEYS = ("won_by_seed",)
"""eval.jsonl entries not sent to trackers (one value per room: the table, not a curve)"""


def missing_package(name: str) -> str | None:
    """One line naming the extra to install when logger `name` cannot be imported, else None."""
    module = PACKAGES.get(name)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return (f"logger {name!r} needs the {module} package, which is not installed: "
            f"pip install 'himac-ray[{name}]'")


def numeric_items(row: Mapping, prefix: str = "") -> dict[str, float]:
    """The row's numbers (booleans and strings left out, nested dicts flattened with `/`)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in SKIPPED_KEYS:
            continue
        if isinstance(value, Mapping):
            out.update(numeric_items(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class TensorBoardTracker:
    """Scalars in RUN_DIR/tensorboard (tensorboardX: no TensorFlow, no `tensorboard` package needed)."""

    def __init__(self, run_dir: Path, settings: Mapping, *, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        # purge_step: a resumed run drops the events of the iterations it redoes
        self.writer = SummaryWriter(logdir=str(run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # the trainer has no close hook: every row is on disk when logged

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in RUN_DIR/wandb; offline unless `run.wandb_mode` says otherwise."""

    def __init__(self, run_dir: Path, settings: Mapping, *, purge_step: int | None = None):
        import wandb

        self.run = wandb.init(project=settings.get("wandb_project", "himac-ray"), name=str(settings.get("dir") or run_dir),
                              dir=str(run_dir), mode=settings.get("wandb_mode", "offline"),
                              config={"run_dir": str(run_dir)})
        # rows arrive out of step order (a held-out evaluation is logged before the eval keys are
        # added to the iteration's row): log against our own step metric, not W&B's monotonic step
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "iteration": step})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run; a local file store in RUN_DIR/mlruns unless `run.mlflow_tracking_uri` is set."""

    def __init__(self, run_dir: Path, settings: Mapping, *, purge_step: int | None = None):
        from mlflow.tracking import MlflowClient

        uri = settings.get("mlflow_tracking_uri") or (run_dir / "mlruns").absolute().as_uri()
        self.client = MlflowClient(tracking_uri=uri)  # no global mlflow state: several runs per process work
        name = settings.get("mlflow_experiment", "himac-ray")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=str(settings.get("dir") or run_dir)).info.run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items() if math.isfinite(value)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(run_dir: str | Path, settings: Mapping, *, purge_step: int | None = None) -> list:
    """The trackers `settings["loggers"]` names (`run.*` config keys as a mapping), opened.

    Raises:
        RuntimeError: a tracker's package is missing (the message names the extra to install).
    """
    run_dir = Path(run_dir)
    opened = []
    for name in dict.fromkeys(settings.get("loggers") or ()):  # keeps order, drops repeats
        if name == "jsonl":
            continue
        if name not in TRACKERS:
            raise ValueError(f"run.loggers: {name!r} is not a logger; choose from {list(LOGGERS)}")
        if (missing := missing_package(name)) is not None:
            raise RuntimeError(f"run.loggers: {missing}")
        opened.append(TRACKERS[name](run_dir, settings, purge_step=purge_step))
    return opened
