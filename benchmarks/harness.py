"""A training stack in the driver process, wired exactly as `actors.coordinator.Coordinator.setup`.

Same actors (vLLM `SamplerActor`s behind a `SamplerPool`, env-pool actors behind a
`RolloutDispatcher`, a DeepSpeed `LearnerGroup`) and the same `Trainer`; the only difference is
that the loop runs here instead of inside the coordinator actor, so the benchmarks can time the
pieces: each rollout's generation / env seconds, the sampler's vLLM busy time, and the weight
sync split into the learner's safetensors export and the samplers' in-place reload.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path

from benchmarks.common import log


class Stack:
    def __init__(self, cfg, *, model_path: str):
        import ray

        from actors.env_pool import RolloutDispatcher
        from actors.learner import LearnerGroup
        from actors.sampler import SamplerPool, sampler_group
        from himac_ray.rollout_call import EpisodeSettings
        from himac_ray.trainer import Trainer

        self.cfg = cfg
        self.run_id = uuid.uuid4().hex[:8]
        t0 = time.perf_counter()
        self.sampler_group = sampler_group(model_path, role="both", model=cfg.model, sampler=cfg.sampler)
        self.samplers = self.sampler_group.actors
        self.startup = {"samplers": time.perf_counter() - t0}
        t0 = time.perf_counter()
        model = dataclasses.replace(cfg.model, path=model_path, planner_path=None)
        self.learner = LearnerGroup(model=model, learner=cfg.learner, algorithm=cfg.algorithm, seed=cfg.run.seed)
        self.startup["learner"] = time.perf_counter() - t0
        r = cfg.rollout
        self.dispatcher = RolloutDispatcher(cfg.env.id, cfg.env.kwargs, num_pools=r.num_env_pools, log=log)
        self.pool, self.settings = SamplerPool(self.samplers), EpisodeSettings.from_config(cfg)
        self.rollouts: list[dict] = []
        self.syncs: list[dict] = []
        self._ray = ray
        self.trainer = Trainer(cfg, rollout=self.rollout, learner=self.learner, sync=self.sync, log=log)

    # ---------------------------------------------------------------- services
    def vllm_busy(self) -> float:
        return sum(s["busy_seconds"] for s in self._ray.get([a.stats.remote() for a in self.samplers]))

    def rollout(self, **kw):
        busy0, t0 = self.vllm_busy(), time.perf_counter()
        result = self._roll(**kw)
        wall = time.perf_counter() - t0
        m = dict(result.metrics)
        if result.pre is not None:  # micro mode's macro pre-pass
            for k in ("gen_seconds", "env_seconds", "gen_tokens", "env_steps", "gen_calls"):
                m[k] = m.get(k, 0) + result.pre.metrics.get(k, 0)
        self.rollouts.append({"wall": wall, "vllm_busy": self.vllm_busy() - busy0, "mode": kw.get("mode"),
                              "episodes": m.get("episodes", 0), **{k: m.get(k, 0) for k in (
                                  "gen_seconds", "env_seconds", "gen_tokens", "env_steps", "gen_calls")}})
        return result

    def sync(self, *, trainable, version: int) -> dict:
        """`Coordinator.sync` (one shared policy): learner writes /dev/shm safetensors, samplers reload it."""
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
        path = Path(shm) / f"himac-bench-{self.run_id}-executor-v{version}.safetensors"
        t0 = time.perf_counter()
        try:
            self.learner.save_weights(str(path), policy="executor")
            t1 = time.perf_counter()
            self._ray.get([s.reload_weights.remote(str(path), version) for s in self.samplers])
            t2 = time.perf_counter()
            size = path.stat().st_size if path.exists() else 0
        finally:  # never leave a weights file in /dev/shm (RAM), also when the sync fails
            path.unlink(missing_ok=True)
        part = {"seconds": t2 - t0, "save_seconds": t1 - t0, "reload_seconds": t2 - t1, "bytes": size}
        self.syncs.append(part)
        return {**part, "path": str(path), "method": "shm"}

    # ---------------------------------------------------------------- helpers
    def _roll(self, **kw):
        """The `Coordinator`'s rollout service: the run's episode settings, one shared policy."""
        from himac_ray.rollout_call import RolloutCall

        return self.dispatcher(RolloutCall(settings=self.settings, **kw), generator=self.pool)

    def warm_up(self) -> None:
        """One tiny untimed rollout so the first timed iteration does not pay vLLM's first-call costs."""
        from himac_ray.schedule import Phase, sampling_params

        planner, executor = sampling_params(self.cfg, Phase("planner", "macro"))
        self._roll(seeds=[987654], mode="macro", group_size=2, planner_params=planner, executor_params=executor)

    def iteration(self) -> dict:
        """One `Trainer.run_iteration`, with the rollout / sync breakdown of that iteration."""
        n_r, n_s = len(self.rollouts), len(self.syncs)
        t0 = time.perf_counter()
        row = self.trainer.run_iteration()
        wall = time.perf_counter() - t0
        return {"row": row, "wall": wall, "rollout": self.rollouts[n_r:][-1] if len(self.rollouts) > n_r else {},
                "sync": self.syncs[n_s:][-1] if len(self.syncs) > n_s else {}}

    def shutdown(self) -> None:
        try:
            self.learner.shutdown()
        finally:
            self.sampler_group.shutdown()
            self.dispatcher.shutdown()
