"""vLLM sampler actors (one engine each) and `SamplerPool`, a `Generator` spreading a batch over them."""

from __future__ import annotations

import time

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from himac_ray.config import ModelConfig, SamplerConfig
from himac_ray.generation import SamplingParams
from himac_ray.names import ROLES

SAMPLER_ROLES = (*ROLES, "both")
"""a sampler serves one policy role, or both (shared weights)"""


class SamplerDiedError(RuntimeError):
    """A sampler actor died mid-call; the caller restarts it and redoes the work."""


@ray.remote
class SamplerActor:
    """Hosts one vLLM generator (text or vision-language, by the model folder); `role` says which
    level's prompts it serves."""

    def __init__(self, model_path: str, *, role: str, model: ModelConfig, sampler: SamplerConfig, seed: int,
                 index: int = 0, weight_transfer: bool = False):
        from himac_ray.engines.vlm_engine import vllm_generator

        self.role = role
        self.gen = vllm_generator(
            model_path, seed=seed, max_model_len=model.max_model_len, kv_cache_gb=sampler.kv_cache_gb,
            dtype=model.dtype, gpu_memory_utilization=sampler.gpu_memory_utilization,
            tensor_parallel_size=sampler.tensor_parallel_size, in_process=sampler.tensor_parallel_size == 1,
            threads=sampler.threads or max(1, int(sampler.cpus_per_engine)), prefix_caching=sampler.prefix_caching,
            **({"weight_transfer_config": {"backend": "nccl"}} if weight_transfer else {}),
        )
        print(f"[sampler {role} {index}] dtype {self.gen.dtype} ({self.gen.dtype_reason}), "
              f"{self.gen.threads} thread(s), prefix caching {'on' if sampler.prefix_caching else 'off'}", flush=True)
        self.index, self.tensor_parallel_size = index, sampler.tensor_parallel_size
        self.started = time.time()

    def generate(self, prompts, params: SamplingParams):
        return self.gen.generate(prompts, params)

    def score(self, records) -> list[list[float]]:
        return self.gen.score([(r.prompt_ids, r.response_ids) for r in records])

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

    def stats(self) -> dict:
        up = max(time.time() - self.started, 1e-9)
        return {**self.gen.stats, "role": self.role, "weights_version": self.gen.weights_version,
                "busy_fraction": self.gen.stats["busy_seconds"] / up, "node_id": ray.get_runtime_context().get_node_id()}


class SamplerPool:
    """A `Generator` over sampler actors: splits each batch into contiguous chunks, one per actor.

    Picklable (it holds actor handles), so env-pool actors call the samplers directly.
    """

    def __init__(self, actors: list):
        if not actors:
            raise ValueError("SamplerPool needs at least one sampler actor")
        self.actors = list(actors)

    def generate(self, prompts, params: SamplingParams):
        prompts = list(prompts)
        k = len(self.actors)
        bounds = [round(j * len(prompts) / k) for j in range(k + 1)]
        refs = [a.generate.remote(prompts[lo:hi], params) for a, lo, hi in zip(self.actors, bounds, bounds[1:]) if hi > lo]
        try:
            chunks = ray.get(refs)
        except ray.exceptions.RayActorError as err:
            raise SamplerDiedError(f"a sampler actor died during generation: {err}") from err
        return [samples for chunk in chunks for samples in chunk]


def create_samplers(model_path: str, *, role: str, model: ModelConfig, sampler: SamplerConfig,
                    seed_offset: int = 0, pg_timeout_s: float = 120.0,
                    weight_transfer: bool = False) -> tuple[list, object]:
    """Start `sampler.num_engines` actors for `role` in a placement group (`sampler.placement_strategy`);
    `weight_transfer` enables vLLM's NCCL weight transfer in their engines.

    Returns (actors, placement_group). Fails with a clear message when the cluster cannot
    host them (instead of waiting forever for resources).
    """
    if role not in SAMPLER_ROLES:
        raise ValueError(f"role must be one of {SAMPLER_ROLES}, got {role!r}")
    bundle = {"CPU": sampler.cpus_per_engine, **sampler.resources}
    if sampler.gpus_per_engine:
        bundle["GPU"] = sampler.gpus_per_engine
    pg = placement_group([dict(bundle) for _ in range(sampler.num_engines)], strategy=sampler.placement_strategy)
    ready, _ = ray.wait([pg.ready()], timeout=pg_timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RuntimeError(
            f"cannot place {sampler.num_engines} {role} sampler(s) needing {bundle} each within {pg_timeout_s:.0f}s; "
            f"cluster has {ray.cluster_resources()} (lower sampler.num_engines / sampler.cpus_per_engine)"
        )
    actors = [
        SamplerActor.options(
            num_cpus=sampler.cpus_per_engine, num_gpus=sampler.gpus_per_engine,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            name=None,
        ).remote(model_path, role=role, model=model, sampler=sampler, seed=sampler.seed + seed_offset + i,
                 index=i, weight_transfer=weight_transfer)
        for i in range(sampler.num_engines)
    ]
    ray.get([a.weights_version.remote() for a in actors])  # wait until every engine is up
    return actors, pg
