"""The coordinator actor: starts samplers, env pools and the learner group, then runs `Trainer`.

All loop logic lives in `himac_ray.trainer.Trainer`; this actor only binds it to Ray: rollouts
go to `RolloutDispatcher` (env pools + `SamplerPool`), learning to `LearnerGroup`, and weight
sync pushes the trained policy into its samplers in place (`sync`: shared memory, Ray's object
store or vLLM's NCCL weight transfer, by `himac_ray.weight_sync.sync_paths`).
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import ray

from actors.env_pool import RolloutDispatcher
from actors.learner import LearnerGroup
from actors.metrics import RunMetrics
from actors.sampler import SamplerPool, create_samplers
from himac_ray.config import config_from_dict
from himac_ray.rollout import episode_settings
from himac_ray.trainer import Trainer
from himac_ray.weight_sync import shm_dir, sync_paths, uses_nccl


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
        self.nccl_policies: set[str] = set()
        """policies whose NCCL weight-transfer group is open (set up at their first sync)"""

    def setup(self) -> dict:
        cfg = self.cfg
        self.status_["phase"] = "starting samplers"
        self.planners, self.placement_groups = [], []
        role = "executor" if self.planner_path else "both"
        nccl = uses_nccl(cfg.learner.weight_sync, learner_gpus=cfg.learner.gpus_per_rank,
                         sampler_gpus=cfg.sampler.gpus_per_engine)
        self.executors, pg = create_samplers(self.model_path, role=role, model=cfg.model, sampler=cfg.sampler,
                                             weight_transfer=nccl)
        self.placement_groups.append(pg)
        if self.planner_path:
            self.planners, pg = create_samplers(self.planner_path, role="planner", model=cfg.model,
                                                sampler=cfg.sampler, seed_offset=1000, weight_transfer=nccl)
            self.placement_groups.append(pg)
        self.status_["phase"] = "starting learner"
        model = dataclasses.replace(cfg.model, path=self.model_path, planner_path=self.planner_path)
        self.learner = LearnerGroup(model=model, learner=cfg.learner, algorithm=cfg.algorithm, seed=cfg.run.seed)
        self.status_["phase"] = "starting env pools"
        r = cfg.rollout
        dispatcher = RolloutDispatcher(cfg.env.id, cfg.env.kwargs, num_pools=r.num_env_pools,
                                       resources=r.env_pool_resources)
        fixed = dict(
            generator=SamplerPool(self.executors),
            planner_generator=SamplerPool(self.planners) if self.planners else None,
            **episode_settings(cfg),
        )
        self.dispatcher = dispatcher
        self.metrics = RunMetrics(self.run_id)
        self.trainer = Trainer(cfg, rollout=lambda **kw: dispatcher(**fixed, **kw), learner=self.learner,
                               sync=self.sync, log=print)
        self.placement = self._placement()
        print(format_placement(self.placement), flush=True)
        return {"samplers": len(self.executors) + len(self.planners), "learner_ranks": cfg.learner.num_ranks,
                "placement": self.placement}

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
        """Push the trained policy (both when `trainable` is None) to its samplers; returns timing.

        Paths (`himac_ray.weight_sync.sync_paths`, by `learner.weight_sync`): `nccl` broadcasts from
        learner rank 0's GPU to every engine of the policy (its group is opened at the policy's first
        sync); otherwise samplers on learner rank 0's node reload a shared-memory safetensors file
        and samplers on other nodes get the weights as buckets through Ray's object store.
        """
        start = time.perf_counter()
        cfg = self.cfg
        if not self.planners:
            jobs = [("executor", self.executors)]
        else:
            jobs = [(p, s) for p, s in (("planner", self.planners), ("executor", self.executors))
                    if trainable in (None, p)]
        learner_node = self.learner.node_ids()[0]
        methods = set()
        for policy, samplers in jobs:
            nodes = ray.get([s.node_id.remote() for s in samplers])
            paths = sync_paths(cfg.learner.weight_sync, learner_node=learner_node, sampler_nodes=nodes,
                               learner_gpus=cfg.learner.gpus_per_rank, sampler_gpus=cfg.sampler.gpus_per_engine)
            by_path = {path: [s for s, p in zip(samplers, paths) if p == path] for path in set(paths)}
            if "nccl" in by_path:
                if policy not in self.nccl_policies:
                    t0 = time.perf_counter()
                    self.learner.init_nccl_sync(policy=policy, samplers=samplers,
                                                tensor_parallel_size=cfg.sampler.tensor_parallel_size)
                    self.nccl_policies.add(policy)
                    print(f"NCCL weight transfer for {policy}: {len(samplers)} engine(s) joined in "
                          f"{time.perf_counter() - t0:.2f}s", flush=True)
                self.learner.send_weights_nccl(policy=policy)
                ray.get([s.update_weight_version.remote(version) for s in samplers])
            if "shm" in by_path:
                path = shm_dir() / f"himac-{self.run_id}-{policy}-v{version}.safetensors"
                self.learner.save_weights(str(path), policy=policy)
                ray.get([s.reload_weights.remote(str(path), version) for s in by_path["shm"]])
                path.unlink(missing_ok=True)
            if "object_store" in by_path:
                refs = self.learner.export_to_object_store(policy=policy)
                ray.get([s.reload_weights_from_refs.remote(refs, version) for s in by_path["object_store"]])
            methods.update(by_path)
        seconds = time.perf_counter() - start
        method = "+".join(sorted(methods))
        print(f"weight sync v{version} ({method}): {seconds:.2f}s", flush=True)
        return {"seconds": seconds, "method": method}

    def run(self, resume: bool = False, iterations: int | None = None) -> list[dict]:
        if self.trainer is None:
            self.setup()
        if resume:
            self.trainer.restore()
        self.trainer.status = self.status_
        return self.trainer.run(iterations, on_iteration=self._on_iteration)

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
        for actor in getattr(self, "executors", []) + getattr(self, "planners", []):
            ray.kill(actor)
        if getattr(self, "dispatcher", None) is not None:
            self.dispatcher.shutdown()
        for pg in getattr(self, "placement_groups", []):
            ray.util.remove_placement_group(pg)
        self.placement_groups = []

    def status(self) -> dict:
        return {**self.status_, "last": self.rows[-1] if self.rows else None, "done": len(self.rows)}

    def sampler_stats(self) -> list[dict]:
        return ray.get([s.stats.remote() for s in self.executors + self.planners])

    def sampler_logprobs(self, records: list) -> list[list[float]]:
        """Sampler-side logprobs of fixed responses (teacher forcing through vLLM), for sync checks."""
        return ray.get(self.executors[0].score.remote(records))

    def learner_logprobs(self, records: list) -> list[list[float]]:
        return self.learner.compute_logprobs(records)
