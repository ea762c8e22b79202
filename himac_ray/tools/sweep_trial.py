"""One `himac-ray sweep` trial under Ray Tune: `TrialRun` drives a training run through a
`Coordinator` actor and hands Tune one report per himac-ray iteration; `trial_trainable()` is the
Tune class around it. Ray, `actors/` and `himac_ray.train` are imported lazily.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from himac_ray import metrics as M
from himac_ray.config import config_from_dict
from himac_ray.tools.sweep_grid import REPORT_KEYS, read_rows, short_params, trial_config_dict

TIME_ATTR = "iterations_done"
"""Tune time attribute: himac-ray iterations finished (survives trial restarts, unlike training_iteration)"""


def report_of(row: dict) -> dict:
    out = {"iteration": int(row[M.ITERATION]), TIME_ATTR: int(row[M.ITERATION]) + 1,
           "trainable": str(row.get(M.TRAINABLE, ""))}
    for name, key in REPORT_KEYS.items():
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class TrialRun:
    """One trial's training run, driven through a `Coordinator` actor, one iteration per `next()`.

    The run's placement groups belong to the sweep's driver job, not to the trial: `close()` must
    release them (the trainable's `cleanup` calls it, also when Tune stops a trial early), or the
    next trial cannot place its samplers.
    """

    def __init__(self, params: dict, spec: dict, trial_name: str, *, log=print):
        import ray

        from actors.coordinator import Coordinator
        from himac_ray.run_state import latest_checkpoint
        from himac_ray.train import _resolve_models

        self.run_dir = Path(spec["exp_dir"]) / trial_name / "run"
        cfg_dict = trial_config_dict(spec["base"], params, self.run_dir)
        self.cfg = config_from_dict(cfg_dict)
        resume = latest_checkpoint(self.run_dir) is not None
        if not resume and (self.run_dir / "metrics.jsonl").exists():  # an attempt that failed before its first checkpoint
            self.run_dir.rename(self.run_dir.with_name(f"run.failed-{time.strftime('%Y%m%d-%H%M%S')}"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2))
        log(f"[himac-ray sweep] trial {trial_name}: {short_params(params) or 'base config'}; run dir {self.run_dir}"
            + ("; resuming from its latest checkpoint" if resume else ""))
        self.pending: list[dict] = []
        self.reported = -1  # last himac-ray iteration handed to Tune
        self.seen = 0  # rows the coordinator's status has shown
        self.finished = False
        self.coordinator = None
        model_path, planner_path = _resolve_models(self.cfg, self.run_dir, resume, log)
        self.coordinator = Coordinator.remote(cfg_dict, model_path=model_path, planner_path=planner_path)
        try:
            ray.get(self.coordinator.setup.remote())
            self.ref = self.coordinator.run.remote(resume=resume)
        except BaseException:
            self.close()  # setup may have placed samplers before failing
            raise

    def _add(self, rows: list[dict]) -> None:
        known = {r[M.ITERATION] for r in self.pending}
        for row in sorted(rows, key=lambda r: r[M.ITERATION]):
            if row[M.ITERATION] > self.reported and row[M.ITERATION] not in known:
                self.pending.append(row)
                known.add(row[M.ITERATION])
        self.pending.sort(key=lambda r: r[M.ITERATION])

    def _poll(self, timeout: float = 1.0) -> None:
        import ray

        ready, _ = ray.wait([self.ref], timeout=timeout)
        if ready:
            self._add(ray.get(self.ref))  # raises the run's error, if any
            self.finished = True
            return
        status = ray.get(self.coordinator.status.remote())
        last = status.get("last")
        if status.get("done", 0) > self.seen and last:
            if status["done"] - self.seen > 1:  # rows between two polls: the run's log has them
                self._add([r for r in read_rows(self.run_dir) if r[M.ITERATION] < last[M.ITERATION]])
            self._add([last])
            self.seen = status["done"]

    def next(self) -> dict:
        """The next iteration's report (blocks until it exists); `done` on the run's last one."""
        final = self.cfg.run.iterations - 1
        while not self.finished and not (self.pending and self.pending[0][M.ITERATION] < final):
            self._poll()  # the final row is handed over once the run has checkpointed and returned
        if not self.pending:  # nothing left to run (e.g. a restored trial that had finished)
            rows = read_rows(self.run_dir)
            return {**(report_of(rows[-1]) if rows else {TIME_ATTR: 0}), "done": True}
        row = self.pending.pop(0)
        self.reported = row[M.ITERATION]
        return {**report_of(row), "done": self.finished and not self.pending}

    def close(self) -> None:
        """Release the run's samplers, learner, env pools and placement groups (idempotent)."""
        import ray

        coordinator, self.coordinator = self.coordinator, None
        if coordinator is None:
            return
        try:
            ray.get(coordinator.shutdown.remote(), timeout=120)
        except ray.exceptions.RayError:
            pass
        ray.kill(coordinator, no_restart=True)


_TRAINABLE = None


def trial_trainable():
    """The Tune trainable class (built on first use: Ray is imported lazily)."""
    global _TRAINABLE
    if _TRAINABLE is None:
        from ray import tune

        class HimacTrial(tune.Trainable):
            """setup: start the run (resuming from its run dir); step: one iteration; cleanup: release it."""

            def setup(self, config, spec=None):
                self.run = None
                self.run = TrialRun(dict(config), spec, self.trial_name)

            def step(self):
                return self.run.next()

            def cleanup(self):
                if self.run is not None:
                    self.run.close()

            def save_checkpoint(self, checkpoint_dir):
                # the run dir's own checkpoints are what a restarted trial resumes from
                reported = self.run.reported if self.run is not None else -1
                Path(checkpoint_dir, "trial.json").write_text(json.dumps({"reported_iteration": reported}))

            def load_checkpoint(self, checkpoint):
                pass

        _TRAINABLE = HimacTrial
    return _TRAINABLE

