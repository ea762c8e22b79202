"""Ray binding of the weight sync: pushes the learner's weights into a `SamplerFleet`'s samplers.

The paths and the export walk live in `himac_ray.weight_sync`; this class only does the remote
calls. With `learner.lora` only the adapters travel (`_push_adapter`): a PEFT adapter folder in
/dev/shm, or (config, tensors) through the object store, loaded into vLLM as a LoRA adapter; the
log names the path (`lora-shm`, `lora-object_store`) (`Coordinator.sync` is one call of it). Every call is bounded by `run.sync_timeout_s`; a
sampler that dies or hangs during a sync is replaced through the fleet (within `run.max_restarts`)
and the sync is done again; the shared-memory weights file is removed in every case. The fleet's
restarted samplers, also those restarted during a rollout, get the learner's current weights here.
"""

from __future__ import annotations

import time

import ray

from actors.sampler import SamplerDiedError
from himac_ray.config import TrainConfig
from himac_ray.names import ROLES
from himac_ray.weight_sync import shm_dir, sync_paths, sync_through_path


class WeightSync:
    """`sync(trainable=..., version=...)` for the Trainer; owns the NCCL groups it opened.

    Args:
        learner: a `LearnerGroup` (or anything with its `save_weights`, `export_to_object_store`,
            `node_ids`, `init_nccl_sync`, `send_weights_nccl`).
        fleet: the `SamplerFleet`; its `on_restart` is set to push the current weights.
        cfg: the run's config (`learner.weight_sync`, GPUs, `run.sync_timeout_s`, `run.max_restarts`).
        run_id: names the shared-memory files (`himac-<run_id>-<policy>-v<version>.safetensors`).
    """

    def __init__(self, *, learner, fleet, cfg: TrainConfig, run_id: str, log=print, on_fault=None):
        self.learner, self.fleet, self.cfg, self.run_id, self.log = learner, fleet, cfg, run_id, log
        self.on_fault = on_fault or (lambda kind, actor, error: None)
        self.version = 0
        """the version of the learner's weights: what a restarted sampler is given"""
        self.nccl_policies: set[str] = set()
        """policies whose NCCL weight-transfer group is open (set up at their first sync)"""
        fleet.on_restart = self._on_restart

    def jobs(self, trainable: str | None) -> list[tuple[str, str]]:
        """(policy, sampler role) pairs a sync of `trainable` (None: both levels) updates."""
        lora = self.cfg.learner.lora
        if "planner" not in self.fleet.actors and lora.enabled and lora.per_level:  # one engine, two adapters
            return [(p, "both") for p in ROLES if trainable in (None, p)]
        if "planner" not in self.fleet.actors:
            return [("executor", "both")]
        return [(p, p) for p in ROLES if trainable in (None, p)]

    def __call__(self, *, trainable: str | None, version: int) -> dict:
        """Push the trained policy (both when `trainable` is None) to its samplers; returns timing.

        Paths (`himac_ray.weight_sync.sync_paths`, by `learner.weight_sync`): `nccl` broadcasts from
        learner rank 0's GPU to every engine of the policy (its group is opened at the policy's first
        sync); otherwise samplers on learner rank 0's node reload a shared-memory safetensors file
        and samplers on other nodes get the weights as buckets through Ray's object store.
        """
        start = time.perf_counter()
        self.version = version
        methods: set[str] = set()
        for policy, role in self.jobs(trainable):
            for attempt in range(self.cfg.run.max_restarts + 1):
                try:
                    methods |= self._push(policy, role, list(enumerate(self.fleet.actors[role])), version)
                    break
                except SamplerDiedError as err:
                    if attempt == self.cfg.run.max_restarts:
                        raise
                    if self.fleet.replace(err):  # the replacement gets these weights in `_on_restart`
                        self.log(f"sampler {role}[{err.index}] failed during weight sync v{version} ({err}); "
                                 "restarted it, syncing again")
                        self.on_fault("sampler", f"{role}[{err.index}]", str(err))
        seconds = time.perf_counter() - start
        method = "+".join(sorted(methods))
        self.log(f"weight sync v{version} ({method}): {seconds:.2f}s")
        return {"seconds": seconds, "method": method}

    def _on_restart(self, role: str, index: int, actor) -> None:
        """A new engine starts from the model folder (version 0): give it the learner's weights."""
        if self.version == 0:
            return
        for policy, _ in [job for job in self.jobs(None) if job[1] == role]:
            self._push(policy, role, [(index, actor)], self.version)

    def _push(self, policy: str, role: str, samplers: list[tuple[int, object]], version: int) -> set[str]:
        """`policy`'s weights into `samplers` ((fleet index, actor) pairs) as `version`; the paths used."""
        cfg = self.cfg
        learner_node = self.learner.node_ids()[0]
        nodes = self._call(samplers, role, "node_id")
        mode = "shm_object_store" if cfg.learner.lora.enabled else cfg.learner.weight_sync  # adapters: MBs, no NCCL
        paths = sync_paths(mode, learner_node=learner_node, sampler_nodes=nodes,
                           learner_gpus=cfg.learner.gpus_per_rank, sampler_gpus=cfg.sampler.gpus_per_engine)
        by_path = {path: [s for s, p in zip(samplers, paths) if p == path] for path in set(paths)}
        if cfg.learner.lora.enabled:
            return self._push_adapter(policy, role, by_path, version)
        if "nccl" in by_path:
            if len(by_path["nccl"]) < len(self.fleet.actors[role]):
                raise RuntimeError(f"sampler {role} restarted on the NCCL weight-sync path: its NCCL group cannot "
                                   "take a new engine; stop the run and continue it with --resume")
            if policy not in self.nccl_policies:
                t0 = time.perf_counter()
                self.learner.init_nccl_sync(policy=policy, samplers=[a for _, a in samplers],
                                            tensor_parallel_size=cfg.sampler.tensor_parallel_size)
                self.nccl_policies.add(policy)
                self.log(f"NCCL weight transfer for {policy}: {len(samplers)} engine(s) joined in "
                         f"{time.perf_counter() - t0:.2f}s")
            self.learner.send_weights_nccl(policy=policy)
            self._call(samplers, role, "update_weight_version", version)
        if "shm" in by_path:
            path = shm_dir() / f"himac-{self.run_id}-{policy}-v{version}.safetensors"
            sync_through_path(path, save=lambda p: self.learner.save_weights(p, policy=policy),
                              reload=lambda p: self._call(by_path["shm"], role, "reload_weights", p, version))
        if "object_store" in by_path:
            refs = self.learner.export_to_object_store(policy=policy)
            self._call(by_path["object_store"], role, "reload_weights_from_refs", refs, version)
        return set(by_path)

    def _push_adapter(self, policy: str, role: str, by_path: dict[str, list], version: int) -> set[str]:
        """Only `policy`'s LoRA adapter into the samplers, as vLLM adapter `fleet.adapter(policy)`;
        the paths used (`lora-shm`, `lora-object_store`). The config rules keep LoRA off NCCL."""
        adapter = self.fleet.adapter(policy)
        if "shm" in by_path:
            path = shm_dir() / f"himac-{self.run_id}-{adapter}-v{version}"
            sync_through_path(path, save=lambda p: self.learner.save_adapter(p, policy=policy),
                              reload=lambda p: self._call(by_path["shm"], role, "load_adapter", p, adapter, version))
        if "object_store" in by_path:
            ref = self.learner.export_adapter_to_object_store(policy=policy)
            self._call(by_path["object_store"], role, "load_adapter_from_ref", ref, adapter, version)
        return {f"lora-{path}" for path in by_path}

    def _call(self, samplers: list[tuple[int, object]], role: str, method: str, *args) -> list:
        """`method(*args)` on every sampler within `run.sync_timeout_s`; a dead or hung one raises
        SamplerDiedError naming it (`SamplerFleet.replace` takes it)."""
        timeout = self.cfg.run.sync_timeout_s or None
        refs = [getattr(actor, method).remote(*args) for _, actor in samplers]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        out = []
        for (i, _), ref in zip(samplers, refs):
            epoch = self.fleet.epochs[role][i]
            if ref in pending:
                raise SamplerDiedError(f"sampler {role}[{i}] did not answer {method} within {timeout:.0f}s "
                                       "(run.sync_timeout_s)", role, i, epoch)
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError as err:
                raise SamplerDiedError(f"sampler {role}[{i}] died in {method}: {err}", role, i, epoch) from err
        return out

