"""The coordinator actor: starts samplers, env pools and the learner group, then runs `Trainer`.

All loop logic lives in `himac_ray.trainer.Trainer`; this actor only binds it to Ray: rollouts
go to `RolloutDispatcher` (env pools + the `SamplerFleet`), learning to `LearnerGroup`, and weight
sync pushes the trained policy into its samplers in place (`actors.weight_sync.WeightSync`:
shared memory, Ray's object store or vLLM's NCCL weight transfer).

Faults: a dead or hung env pool or sampler is replaced during the rollout and its part redone
(`RolloutDispatcher`, `SamplerFleet`); a dead or hung learner rank restarts the learner group from
the latest complete checkpoint and the iterations since are redone (`run.max_learner_restarts`).
Each recovered fault is logged and appended to the run's `faults.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

import ray

from actors.env_pool import RolloutDispatcher
from actors.learner import LearnerDiedError, LearnerGroup
from actors.metrics import RunMetrics
from actors.sampler import SamplerFleet
from actors.weight_sync import WeightSync
from himac_ray.config import config_from_dict
from himac_ray.metrics import ITERATION
from himac_ray.rollout_call import EpisodeSettings, RolloutCall
from himac_ray.trainer import Trainer
from himac_ray.weight_sync import uses_nccl


def format_placement(rows: list[dict]) -> str:
    lines = [f"{'actor':<14}{'node':<18}{'ip':<16}resources"]
    lines += [f"{r['actor']:<14}{r['node'][:16]:<18}{r['ip']:<16}{r['resources']}" for r in rows]
    return "\n".join(lines)


@ray.remote(num_cpus=0, max_concurrency=4)
class Coordinator:
    """Methods block; `status()` answers while `run()` is busy (threaded actor)."""

    def __init__(self, cfg_dict: dict, *, model_path: str, planner_path: str | None = None):
        self.cfg = config_from_dict(cfg_dict)
        self.model_path, self.planner_path = model_path, planner_path
        self.status_ = {"phase": "starting", "iteration": 0}
        self.rows: list[dict] = []
        self.trainer: Trainer | None = None
        self.run_id = uuid.uuid4().hex[:8]
        self.learner_restarts = 0

    @property
    def executors(self) -> list:
        return self.fleet.actors.get("executor", self.fleet.actors.get("both", []))

    @property
    def planners(self) -> list:
        return self.fleet.actors.get("planner", [])

    def setup(self) -> dict:
        cfg = self.cfg
        self.status_["phase"] = "starting samplers"
        nccl = not cfg.learner.lora.enabled and uses_nccl(  # adapters go by shm / object store
            cfg.learner.weight_sync, learner_gpus=cfg.learner.gpus_per_rank, sampler_gpus=cfg.sampler.gpus_per_engine)
        paths = {"executor": self.model_path, "planner": self.planner_path} if self.planner_path else {
            "both": self.model_path}
        self.fleet = SamplerFleet(paths, model=cfg.model, sampler=cfg.sampler, weight_transfer=nccl,
                                  timeout_s=cfg.run.generate_timeout_s, lora=cfg.learner.lora)
        self.status_["phase"] = "starting learner"
        self.learner = self._start_learner()
        self.weight_sync = WeightSync(learner=self.learner, fleet=self.fleet, cfg=cfg, run_id=self.run_id,
                                      log=self._log, on_fault=self._record_fault)
        self.status_["phase"] = "starting env pools"
        r = cfg.rollout
        self.dispatcher = RolloutDispatcher(
            cfg.env.id, cfg.env.kwargs, num_pools=r.num_env_pools, resources=r.env_pool_resources,
            max_restarts=cfg.run.max_restarts, timeout_s=cfg.run.rollout_timeout_s, samplers=self.fleet,
            log=self._log, on_fault=self._record_fault)
        self.metrics = RunMetrics(self.run_id)
        self.trainer = self._new_trainer()
        self.placement = self._placement()
        print(format_placement(self.placement), flush=True)
        return {"samplers": len(self.fleet.all()), "learner_ranks": cfg.learner.num_ranks,
                "placement": self.placement}

    def _start_learner(self) -> LearnerGroup:
        cfg = self.cfg
        model = dataclasses.replace(cfg.model, path=self.model_path, planner_path=self.planner_path)
        return LearnerGroup(model=model, learner=cfg.learner, algorithm=cfg.algorithm, seed=cfg.run.seed,
                            timeout_s=cfg.run.learner_timeout_s)

    def _new_trainer(self) -> Trainer:
        settings = EpisodeSettings.from_config(self.cfg)
        return Trainer(self.cfg, rollout=lambda **kw: self.dispatcher(RolloutCall(settings=settings, **kw)),
                       learner=self.learner, sync=self.sync, log=self._log)

    def _log(self, message: str) -> None:
        print(message, flush=True)

    def _record_fault(self, kind: str, actor: str, error: str) -> None:
        """One recovered fault: a line in the run's faults.jsonl (what the fault bench counts)."""
        row = {"time": time.time(), "iteration": self.status_.get("iteration", 0), "kind": kind, "actor": actor,
               "error": error[:500]}
        with (Path(self.cfg.run.dir) / "faults.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def _placement(self) -> list[dict]:
        """actor -> node -> resources, for the start-up table and the sync-path choice."""
        cfg = self.cfg
        nodes = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
        rows = []
        for kind, actors, res in (("sampler", self.executors + self.planners,
                                   {"CPU": cfg.sampler.cpus_per_engine, "GPU": cfg.sampler.gpus_per_engine,
                                    **cfg.sampler.resources}),):
            for i, node in enumerate(ray.get([a.node_id.remote() for a in actors])):
                rows.append({"actor": f"{kind}[{i}]", "node": node, "ip": nodes.get(node, "?"), "resources": res})
        for i, node in enumerate(self.learner.node_ids()):
            rows.append({"actor": f"learner[{i}]", "node": node, "ip": nodes.get(node, "?"),
                         "resources": {"CPU": cfg.learner.cpus_per_rank, "GPU": cfg.learner.gpus_per_rank,
                                       **cfg.learner.resources}})
        for i, node in enumerate(ray.get([p.node_id.remote() for p in self.dispatcher.pools])):
            rows.append({"actor": f"env_pool[{i}]", "node": node, "ip": nodes.get(node, "?"),
                         "resources": {"CPU": 0, **cfg.rollout.env_pool_resources}})
        return rows

    def sync(self, *, trainable: str | None, version: int) -> dict:
        """Push the trained policy (both when `trainable` is None) to its samplers; returns timing."""
        return self.weight_sync(trainable=trainable, version=version)

    def run(self, resume: bool = False, iterations: int | None = None) -> list[dict]:
        """Run the iterations; a failed learner rank is recovered (`_recover_learner`) up to
        `run.max_learner_restarts` times. Returns the rows of the iterations run (redone ones once)."""
        if self.trainer is None:
            self.setup()
        if resume:
            self.trainer.restore()
        first, failure = len(self.rows), None
        while True:
            try:
                if failure is not None:
                    self._recover_learner(failure)
                self.trainer.status = self.status_
                self.trainer.run(iterations, on_iteration=self._on_iteration)
                break
            except LearnerDiedError as err:  # also one that strikes during a recovery
                failure = err
        return list({row[ITERATION]: row for row in self.rows[first:]}.values())

    def _recover_learner(self, err: LearnerDiedError) -> None:
        """A new learner group from the latest complete checkpoint (the base weights without one);
        the samplers get its weights and the iterations since are redone."""
        self.learner_restarts += 1
        if self.learner_restarts > self.cfg.run.max_learner_restarts:
            raise err
        self._log(f"{err}; restarting the learner group from the latest checkpoint "
                  f"({self.learner_restarts}/{self.cfg.run.max_learner_restarts})")
        self.learner.shutdown()
        self.learner = self.weight_sync.learner = self._start_learner()
        self.trainer.learner = self.learner
        if not self.trainer.restore():  # no checkpoint yet: from the start
            self.trainer = self._new_trainer()
            self.trainer.metrics.truncate_from(0)
            self.sync(trainable=None, version=0)
        self._record_fault("learner", f"learner[{err.rank}]", str(err))

    def _on_iteration(self, row: dict) -> None:
        self.rows.append(row)
        try:  # Prometheus gauges (ray_himac_*); never stop training for them
            self.metrics.record_iteration(row, self.sampler_stats())
        except Exception as err:
            print(f"metrics: could not record iteration {row.get('iteration')}: {err}", flush=True)

    def shutdown(self) -> None:
        """Release every actor and placement group this coordinator started."""
        if getattr(self, "learner", None) is not None:
            self.learner.shutdown()
        if getattr(self, "fleet", None) is not None:
            self.fleet.shutdown()
        if getattr(self, "dispatcher", None) is not None:
            self.dispatcher.shutdown()

    def actors(self) -> dict[str, list]:
        """Handles of the run's actors by kind (for fault-injection tests: `ray.kill` one)."""
        return {"learner": list(self.learner.group.actors), "sampler": self.fleet.all(),
                "env_pool": list(self.dispatcher.pools)}

    def status(self) -> dict:
        return {**self.status_, "last": self.rows[-1] if self.rows else None, "done": len(self.rows)}

    def sampler_stats(self) -> list[dict]:
        return ray.get([s.stats.remote() for s in self.fleet.all()], timeout=60)

    def sampler_logprobs(self, records: list, policy: str = "executor") -> list[list[float]]:
        """Sampler-side logprobs of fixed responses (teacher forcing through vLLM) under `policy`'s
        weights (and LoRA adapter), for sync checks."""
        sampler = (self.planners or self.executors)[0] if policy == "planner" else self.executors[0]
        return ray.get(sampler.score.remote(records, self.fleet.adapter(policy)))

    def learner_logprobs(self, records: list) -> list[list[float]]:
        return self.learner.compute_logprobs(records)
