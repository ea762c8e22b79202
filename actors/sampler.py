"""vLLM sampler actors (one engine each), started per role as an `ActorGroup` (`sampler_group`),
`SamplerPool`, a `Generator` spreading a batch over them, and `SamplerFleet`, the restartable set of
a run's samplers."""

from __future__ import annotations

import time

import ray

from actors.group import ActorGroup
from himac_ray.config import LoraConfig, ModelConfig, SamplerConfig
from himac_ray.generation import SamplingParams
from himac_ray.lora import adapter_name
from himac_ray.names import ROLES

SAMPLER_ROLES = (*ROLES, "both")
"""a sampler serves one policy role, or both (shared weights)"""


class SamplerDiedError(RuntimeError):
    """A sampler actor died (or hung past `run.generate_timeout_s`) mid-call; the owner of the
    samplers restarts it (`SamplerFleet.replace`) and the caller redoes the work.

    Positional args only, so it survives the trip through an env-pool actor's task error.
    """

    def __init__(self, message: str, role: str = "both", index: int = -1, epoch: int = 0):
        super().__init__(message, role, index, epoch)
        self.role, self.index, self.epoch = role, index, epoch

    def __str__(self) -> str:
        return str(self.args[0])


@ray.remote
class SamplerActor:
    """Hosts one vLLM generator (text or vision-language, by the model folder); `role` says which
    level's prompts it serves. With `lora` on, the engine serves LoRA adapters by name."""

    def __init__(self, model_path: str, *, role: str, model: ModelConfig, sampler: SamplerConfig, seed: int,
                 index: int = 0, weight_transfer: bool = False, lora: LoraConfig | None = None):
        from himac_ray.engines.vlm_engine import vllm_generator

        self.role = role
        lora_kwargs = {}
        if lora is not None and lora.enabled:
            lora_kwargs = {"max_lora_rank": lora.rank, "max_loras": 2 if lora.per_level else 1}
        self.gen = vllm_generator(
            model_path, seed=seed, max_model_len=model.max_model_len, kv_cache_gb=sampler.kv_cache_gb,
            dtype=model.dtype, gpu_memory_utilization=sampler.gpu_memory_utilization,
            tensor_parallel_size=sampler.tensor_parallel_size, in_process=sampler.tensor_parallel_size == 1,
            threads=sampler.threads or max(1, int(sampler.cpus_per_engine)), prefix_caching=sampler.prefix_caching,
            **({"weight_transfer_config": {"backend": "nccl"}} if weight_transfer else {}), **lora_kwargs,
        )
        served = f", LoRA adapters in vLLM (rank <= {lora.rank})" if lora_kwargs else ""
        print(f"[sampler {role} {index}] dtype {self.gen.dtype} ({self.gen.dtype_reason}), "
              f"{self.gen.threads} thread(s), prefix caching {'on' if sampler.prefix_caching else 'off'}{served}",
              flush=True)
        self.index, self.tensor_parallel_size = index, sampler.tensor_parallel_size
        self.started = time.time()

    def generate(self, prompts, params: SamplingParams, adapter: str | None = None):
        return self.gen.generate(prompts, params, adapter=adapter)

    def score(self, records, adapter: str | None = None) -> list[list[float]]:
        return self.gen.score([(r.prompt_ids, r.response_ids) for r in records], adapter=adapter)

    def load_adapter(self, path: str, name: str, version: int) -> float:
        """Adapter-only sync on the learner's node: load the PEFT folder at `path` as LoRA adapter `name`."""
        return self.gen.load_adapter(path, name=name, version=version)

    def load_adapter_from_ref(self, adapter: tuple, name: str, version: int) -> float:
        """Adapter-only sync across nodes: (config, tensors) from Ray's object store (resolved by Ray)."""
        return self.gen.load_adapter(tuple(adapter), name=name, version=version)

    def reload_weights(self, path: str, version: int) -> float:
        return self.gen.reload_weights(path, version=version)

    def reload_weights_from_refs(self, bucket_refs: list, version: int) -> float:
        """Cross-node sync: fetch the weight buckets from Ray's object store, then reload in place."""
        start = time.perf_counter()
        state = {}
        for bucket in ray.get(list(bucket_refs)):
            state.update(bucket)
        self.gen.reload_weights(state, version=version)
        return time.perf_counter() - start

    # vLLM's weight-sync control plane (`vllm.distributed.weight_transfer.base.VLLMWeightSyncClient`):
    # learner rank 0 calls these through `RayVLLMWeightSyncClient` on the NCCL path (GPU clusters only)

    def init_weight_transfer_engine(self, request) -> None:
        """Join the policy's NCCL group as engine `index` (blocks until everyone has joined);
        `request` is vLLM's `WeightTransferInitRequest`."""
        from himac_ray.weight_sync import engine_init_info

        info = engine_init_info(request.init_info, engine_index=self.index,
                                tensor_parallel_size=self.tensor_parallel_size)
        self.gen.init_weight_transfer(info)

    def start_weight_update(self) -> None:
        self.gen.start_weight_update()

    def update_weights(self, request) -> None:
        """Receive the tensors learner rank 0 broadcasts (`request`: vLLM's `WeightTransferUpdateRequest`)."""
        self.gen.receive_weights(request.update_info)

    def finish_weight_update(self) -> None:
        """Finalize vLLM's layerwise reload, then drop what the old weights computed (prefix cache)."""
        self.gen.finish_weight_update()

    def update_weight_version(self, version: int | str) -> None:
        self.gen.weights_version = int(version)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def weights_version(self) -> int:
        return self.gen.weights_version

    def close(self) -> None:
        """Remove the engine's adapter folder before the actor is killed (`SamplerFleet.shutdown`)."""
        self.gen.close()

    def stats(self) -> dict:
        up = max(time.time() - self.started, 1e-9)
        return {**self.gen.stats, "role": self.role, "weights_version": self.gen.weights_version,
                "busy_fraction": self.gen.stats["busy_seconds"] / up, "node_id": ray.get_runtime_context().get_node_id()}


class SamplerPool:
    """A `Generator` over sampler actors: splits each batch into contiguous chunks, one per actor.

    Picklable (it holds actor handles), so env-pool actors call the samplers directly. A sampler
    that dies, or does not answer within `timeout_s` (None: no limit), raises `SamplerDiedError`
    naming it (`role`, index and `epochs[index]`, its restart count, for `SamplerFleet.replace`).
    """

    def __init__(self, actors: list, *, role: str = "both", epochs: list[int] | None = None,
                 timeout_s: float | None = None, adapter: str | None = None):
        if not actors:
            raise ValueError("SamplerPool needs at least one sampler actor")
        self.actors = list(actors)
        self.role, self.timeout_s, self.adapter = role, timeout_s, adapter
        """`adapter`: the LoRA adapter every request of this pool uses (None: the engine's weights)"""
        self.epochs = list(epochs) if epochs is not None else [0] * len(self.actors)

    def generate(self, prompts, params: SamplingParams):
        prompts = list(prompts)
        k = len(self.actors)
        bounds = [round(j * len(prompts) / k) for j in range(k + 1)]
        calls = [(i, self.actors[i].generate.remote(prompts[lo:hi], params, self.adapter))
                 for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])) if hi > lo]
        _, pending = ray.wait([ref for _, ref in calls], num_returns=len(calls), timeout=self.timeout_s or None)
        chunks = []
        for i, ref in calls:
            name = f"sampler {self.role}[{i}]"
            if ref in pending:
                raise SamplerDiedError(f"{name} did not answer a generate call of {bounds[i + 1] - bounds[i]} "
                                       f"prompt(s) within {self.timeout_s:.0f}s (run.generate_timeout_s)",
                                       self.role, i, self.epochs[i])
            try:
                chunks.append(ray.get(ref))
            except ray.exceptions.RayActorError as err:
                raise SamplerDiedError(f"{name} died during generation: {err}", self.role, i, self.epochs[i]) from err
        return [samples for chunk in chunks for samples in chunk]


class SamplerFleet:
    """The run's sampler actors by role ("both", or "planner" and "executor"), restartable in place.

    One `sampler_group` per role. `generators()` gives the rollout's `generator` /
    `planner_generator` over the current actors; `replace(err)` kills the sampler a
    `SamplerDiedError` names (by handle), starts a new engine in the same placement-group bundle
    (`ActorGroup.restart`) and calls `on_restart(role, index, actor)` (the coordinator pushes the
    learner's current weights into it). A second report of the same death is a no-op.
    """

    def __init__(self, paths: dict[str, str], *, model: ModelConfig, sampler: SamplerConfig,
                 weight_transfer: bool = False, timeout_s: float | None = None, ready_timeout_s: float = 600.0,
                 lora: LoraConfig | None = None):
        self.model, self.sampler, self.weight_transfer = model, sampler, weight_transfer
        self.lora = lora if lora is not None and lora.enabled else None
        self.paths, self.timeout_s, self.ready_timeout_s = dict(paths), timeout_s, ready_timeout_s
        self.groups: dict[str, ActorGroup] = {}
        self.epochs: dict[str, list[int]] = {}
        self.on_restart = None
        """callable(role, index, actor), set by the owner: bring a new engine up to the current weights"""
        for role, path in self.paths.items():
            self.groups[role] = sampler_group(path, role=role, model=model, sampler=sampler,
                                              seed_offset=self._seed_offset(role), weight_transfer=weight_transfer,
                                              lora=self.lora)
            self.epochs[role] = [0] * len(self.groups[role])

    @property
    def actors(self) -> dict[str, list]:
        """role -> its sampler actors in index order (a replaced one appears in place)"""
        return {role: group.actors for role, group in self.groups.items()}

    @staticmethod
    def _seed_offset(role: str) -> int:
        return 1000 if role == "planner" else 0

    def adapter(self, policy: str) -> str | None:
        """The LoRA adapter `policy`'s requests use (`himac_ray.lora.adapter_name`), None without LoRA."""
        if self.lora is None:
            return None
        return adapter_name(policy, per_level=self.lora.per_level, shared="planner" not in self.actors)

    def pool(self, role: str, policy: str | None = None) -> SamplerPool:
        """The samplers of `role`, their requests using `policy`'s adapter (default: the role's)."""
        return SamplerPool(self.actors[role], role=role, epochs=self.epochs[role], timeout_s=self.timeout_s,
                           adapter=self.adapter(policy or ("executor" if role == "both" else role)))

    def generators(self) -> dict:
        """`generator` and `planner_generator` keyword arguments of `run_rollout` (per-level LoRA:
        one engine, planner requests with the planner adapter, executor requests with the executor's)."""
        if "planner" in self.actors:
            return {"generator": self.pool("executor"), "planner_generator": self.pool("planner")}
        if self.lora is not None and self.lora.per_level:
            return {"generator": self.pool("both", "executor"), "planner_generator": self.pool("both", "planner")}
        return {"generator": self.pool("both"), "planner_generator": None}

    def all(self) -> list:
        return [a for actors in self.actors.values() for a in actors]

    def replace(self, err: SamplerDiedError) -> bool:
        """Restart the sampler `err` names, unless that happened already; returns whether it did."""
        role, i = err.role, err.index
        if role not in self.groups or not 0 <= i < len(self.groups[role]) or self.epochs[role][i] != err.epoch:
            return False
        actor = self.groups[role].restart(i)  # same seed, same bundle
        ready, _ = ray.wait([actor.weights_version.remote()], timeout=self.ready_timeout_s)
        if not ready:
            ray.kill(actor, no_restart=True)
            raise RuntimeError(f"the restarted sampler {role}[{i}] did not start within {self.ready_timeout_s:.0f}s")
        self.epochs[role][i] += 1
        if self.on_restart is not None:
            self.on_restart(role, i, actor)
        return True

    def shutdown(self, close_timeout_s: float = 10.0) -> None:
        """Kill every sampler (after letting each remove its adapter folder: a hung one cannot, and
        the next engine started on its node removes it) and release the placement groups."""
        closing = [actor.close.remote() for actor in self.all()]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=close_timeout_s)
        for group in self.groups.values():
            group.shutdown()
        self.groups = {}


def sampler_group(model_path: str, *, role: str, model: ModelConfig, sampler: SamplerConfig,
                  seed_offset: int = 0, pg_timeout_s: float = 120.0,
                  weight_transfer: bool = False, lora: LoraConfig | None = None) -> ActorGroup:
    """Start `sampler.num_engines` sampler actors for `role` as an `ActorGroup` (one placement
    group, `sampler.placement_strategy`; engine i gets seed `sampler.seed + seed_offset + i`, also
    when restarted); `weight_transfer` enables vLLM's NCCL weight transfer in their engines, `lora`
    LoRA adapters. Returns once every engine is up; `shutdown()` the group when done.

    Fails with a clear message when the cluster cannot host them (instead of waiting forever for
    resources).
    """
    if role not in SAMPLER_ROLES:
        raise ValueError(f"role must be one of {SAMPLER_ROLES}, got {role!r}")

    def kwargs_for_rank(i: int) -> dict:
        return dict(model_path=model_path, role=role, model=model, sampler=sampler,
                    seed=sampler.seed + seed_offset + i, index=i, weight_transfer=weight_transfer, lora=lora)

    try:
        group = ActorGroup(SamplerActor, sampler.num_engines, cpus_per_actor=sampler.cpus_per_engine,
                           gpus_per_actor=sampler.gpus_per_engine, strategy=sampler.placement_strategy,
                           resources=sampler.resources, kwargs_for_rank=kwargs_for_rank,
                           ready_timeout_s=pg_timeout_s, capture_child_tasks=None)
    except TimeoutError:
        bundle = {"CPU": sampler.cpus_per_engine, **sampler.resources}
        if sampler.gpus_per_engine:
            bundle["GPU"] = sampler.gpus_per_engine
        raise RuntimeError(
            f"cannot place {sampler.num_engines} {role} sampler(s) needing {bundle} each within {pg_timeout_s:.0f}s; "
            f"cluster has {ray.cluster_resources()} (lower sampler.num_engines / sampler.cpus_per_engine)"
        ) from None
    ray.get([a.weights_version.remote() for a in group.actors])  # wait until every engine is up
    return group
