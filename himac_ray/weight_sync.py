"""Weight sync (learner -> vLLM samplers): every path and the one walk that exports weights.

`export_walk` is the single parameter/alias walk: `Learner.export_weights` buckets tensors in its
order and `export_layout` reports the same names without gathering. `sync_paths` picks each
sampler's path for `actors.coordinator.Coordinator.sync`:

- `shm`: a safetensors file in /dev/shm, reloaded in place, for samplers on learner rank 0's node
  (with `learner.lora`, a PEFT adapter folder loaded as a vLLM LoRA adapter instead);
- `object_store`: weight buckets through Ray's object store, for samplers on other nodes;
- `nccl`: vLLM's weight transfer (`vllm.distributed.weight_transfer`, backend "nccl"): learner
  rank 0 broadcasts the tensors from its GPU to every vLLM worker of the policy's engines. One
  NCCL group per policy: learner rank 0 is rank 0, engine i's tensor-parallel workers are ranks
  1 + i * tp ... (i + 1) * tp. The other learner ranks only take part in ZeRO-3's gathers.

The NCCL path runs on GPU clusters only; on CPU machines only the path choice, the init infos and
`learner_weight_source`'s metadata/iteration agreement are exercised. vLLM is imported inside the
functions that need it (importing it takes seconds), so choosing a path does not load it; torch
likewise. Pure: no Ray (the actors do the Ray calls).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch
    from vllm.distributed.weight_transfer.base import TrainerWeightTransferEngine, WeightSource
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    from himac_ray.learner import Learner


def uses_nccl(mode: str, *, learner_gpus: float, sampler_gpus: float) -> bool:
    """Whether `learner.weight_sync` = `mode` means NCCL: `nccl`, or `auto` with whole GPUs on both
    sides (NCCL cannot put two ranks on one GPU, which fractional GPUs may do)."""
    return mode == "nccl" or (mode == "auto" and learner_gpus >= 1 and sampler_gpus >= 1)


def sync_paths(mode: str, *, learner_node: str, sampler_nodes: Sequence[str], learner_gpus: float,
               sampler_gpus: float) -> list[str]:
    """Each sampler's weight-sync path: all `nccl` (one group per policy), or `shm` on learner rank
    0's node and `object_store` elsewhere."""
    if uses_nccl(mode, learner_gpus=learner_gpus, sampler_gpus=sampler_gpus):
        return ["nccl"] * len(sampler_nodes)
    return ["shm" if node == learner_node else "object_store" for node in sampler_nodes]


def shm_dir() -> Path:
    """Where the `shm` path writes its safetensors files: /dev/shm when it exists, else the temp dir."""
    return Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())


def sync_through_path(path: Path, *, save: Callable[[str], object], reload: Callable[[str], object]) -> None:
    """The `shm` path: `save(path)` writes the weights file (or a LoRA adapter folder), `reload(path)`
    has the samplers load it. It is removed afterwards whether or not both succeeded (a failed sync
    leaves nothing in /dev/shm, which is RAM)."""
    try:
        save(str(path))
        reload(str(path))
    finally:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def export_walk(module) -> tuple[list[tuple[torch.Tensor, list[str]]], list[tuple[str, torch.Tensor]]]:
    """The tensors a policy's weights are exported as, named like the HF model's `state_dict()`.

    Returns (params, buffers): each parameter the state dict holds, once, in `named_parameters`
    order, with every name it goes by (the first, then tied aliases such as `lm_head.weight`, which
    vLLM's in-place reload needs); then the state dict's buffers as (name, tensor).
    """
    keys = set(module.state_dict().keys())
    names: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if name in keys:
            names.setdefault(id(p), (p, []))[1].append(name)
    return list(names.values()), [(n, b) for n, b in module.named_buffers() if n in keys]


def trainer_init_info(*, rank: int, master_address: str, master_port: int, engines: int,
                      tensor_parallel_size: int) -> NCCLTrainerInitInfo:
    """vLLM's init info for learner rank `rank`: a group of learner rank 0 plus every worker of
    `engines` engines, meeting at `master_address:master_port` (a free port on rank 0's node)."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    return NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                               world_size=1 + engines * tensor_parallel_size, rank=rank)


def engine_init_info(init_info: dict, *, engine_index: int, tensor_parallel_size: int) -> dict:
    """The worker init info vLLM's trainer sends to every engine, shifted for engine `engine_index`.

    vLLM numbers a worker `rank_offset + dp_index * tp + tp_rank` and sends one `rank_offset` (1) to
    all engines; our engines are independent (dp_index 0), so each needs its own offset.
    """
    return {**init_info, "rank_offset": init_info["rank_offset"] + engine_index * tensor_parallel_size}


def export_layout(learner: Learner, policy: str) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, full shape) of every tensor `learner.export_weights(policy=...)` yields, in its
    order, without gathering: ZeRO-3 parameters report `ds_shape`, tied aliases follow their
    parameter, buffers come last (mirrors `Learner.export_weights`)."""
    params, buffers = export_walk(learner.policies[policy][0].module)
    layout = [(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for p, aliases in params for name in aliases]
    return layout + [(n, b.dtype, tuple(b.shape)) for n, b in buffers]


def learner_weight_source(learner: Learner, *, policy: str, bucket_mb: int,
                          device: torch.device | None = None) -> WeightSource:
    """A vLLM `WeightSource` over `learner.export_weights`: each pass re-exports (collective under
    ZeRO-3, so every rank iterates), moving tensors to `device` (rank 0's GPU for the broadcast;
    None keeps the CPU copies, enough for the other ranks)."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class LearnerWeightSource(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(name, dtype, shape) for name, dtype, shape in export_layout(learner, policy)]

        def __iter__(self):
            for bucket in learner.export_weights(policy=policy, bucket_mb=bucket_mb):
                for name, tensor in bucket.items():
                    yield name, tensor if device is None else tensor.to(device)

    return LearnerWeightSource()


def init_trainer(learner: Learner, *, policy: str, samplers: list, rank: int, master_address: str,
                 master_port: int, tensor_parallel_size: int, bucket_mb: int) -> TrainerWeightTransferEngine:
    """vLLM's NCCL trainer engine sending `policy` to `samplers` (Ray handles of
    `actors.sampler.SamplerActor`); called on every learner rank, rank 0 rendezvous with the
    samplers' workers. GPU clusters only (exercised there, not by this repo's CPU tests)."""
    import torch
    from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    device = torch.device("cuda", torch.cuda.current_device()) if rank == 0 else None
    source = learner_weight_source(learner, policy=policy, bucket_mb=bucket_mb, device=device)
    info = trainer_init_info(rank=rank, master_address=master_address, master_port=master_port,
                             engines=len(samplers), tensor_parallel_size=tensor_parallel_size)
    return WeightTransferTrainerFactory.trainer_init(info, client=RayVLLMWeightSyncClient(list(samplers)),
                                                     source=source)
