"""Ray binding of `himac_ray.learner.Learner`: one `LearnerWorker` actor per DeepSpeed rank.

All logic lives in `himac_ray.learner`; this file only places the ranks, sets the
torch.distributed rendezvous variables and forwards calls.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import ray

from actors.group import ActorDiedError, ActorGroup
from himac_ray.config import AlgorithmConfig, LearnerConfig, ModelConfig
from himac_ray.data import Record, records_to_table


class LearnerDiedError(ActorDiedError):
    """A learner rank died or hung past `run.learner_timeout_s`; the group is unusable (the other
    ranks may hang in a collective): `shutdown()` it and start a new one."""


@ray.remote
class LearnerWorker:
    """One rank. Built empty, then `setup` (called on all ranks at once) creates the `Learner`."""

    def __init__(self, *, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.learner = None
        self.nccl: dict = {}
        """policy -> vLLM NCCL trainer engine (`init_nccl_sync`)"""

    def address_and_free_port(self) -> tuple[str, int]:
        """This node's IP and a free TCP port on it (for the rendezvous on rank 0)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, *, model: ModelConfig, learner: LearnerConfig, algorithm: AlgorithmConfig, seed: int,
              master_addr: str, master_port: int) -> None:
        # Ray limits each actor to its own GPU(s) (CUDA_VISIBLE_DEVICES), so the local rank is 0
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        from himac_ray.learner import Learner

        self.learner = Learner(model=model, learner=learner, algorithm=algorithm, rank=self.rank,
                               world_size=self.world_size, seed=seed)

    def train_step(self, records: pa.Table, *, trainable: str) -> dict[str, float]:
        return self.learner.train_step(records, trainable=trainable)

    def compute_logprobs(self, records: pa.Table, *, policy: str | None = None) -> list[list[float]]:
        return self.learner.compute_logprobs(records, policy=policy)

    def save_weights(self, path: str, *, policy: str) -> str:
        return str(self.learner.save_weights(path, policy=policy))

    def export_to_object_store(self, *, policy: str, bucket_mb: int) -> list:
        """Cross-node sync: rank 0 puts the weight buckets (serving dtype) into Ray's object store and
        returns their refs."""
        refs = []
        for bucket in self.learner.export_weights(policy=policy, bucket_mb=bucket_mb, dtype=self.learner.serve_dtype):
            if self.rank == 0:
                refs.append(ray.put(bucket))
        return refs

    def save_adapter(self, path: str, *, policy: str) -> str:
        return str(self.learner.save_adapter(path, policy=policy))

    def export_adapter_to_object_store(self, *, policy: str):
        """Cross-node adapter sync: rank 0 puts (config, tensors) of `policy`'s LoRA adapter (serving
        dtype) into Ray's object store and returns its ref (None on the other ranks)."""
        adapter = self.learner.export_adapter(policy=policy, dtype=self.learner.serve_dtype)
        return ray.put(adapter) if self.rank == 0 else None

    def init_nccl_sync(self, *, policy: str, samplers: list, master_addr: str, master_port: int,
                       tensor_parallel_size: int, bucket_mb: int) -> None:
        """Set up vLLM's NCCL trainer engine for `policy` (all ranks at once; rank 0 joins the
        samplers' NCCL group at master_addr:master_port). GPU clusters only."""
        from himac_ray.weight_sync import init_trainer

        self.nccl[policy] = init_trainer(self.learner, policy=policy, samplers=samplers, rank=self.rank,
                                         master_address=master_addr, master_port=master_port,
                                         tensor_parallel_size=tensor_parallel_size, bucket_mb=bucket_mb)

    def send_weights_nccl(self, *, policy: str) -> None:
        """Broadcast `policy`'s weights to its samplers (all ranks: ZeRO-3 gathers; rank 0 sends)."""
        self.nccl[policy].send_weights()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def save_checkpoint(self, directory: str) -> str:
        return str(self.learner.save_checkpoint(directory))

    def load_checkpoint(self, directory: str) -> None:
        self.learner.load_checkpoint(directory)


class LearnerGroup:
    """`learner.num_ranks` LearnerWorkers in a PACK placement group (see `ActorGroup`).

    Methods named `async_*` return one ObjectRef per rank; the others block and return rank 0's
    answer (the learner makes every rank's answer identical). A rank that dies, or does not answer
    within `timeout_s` (None: no limit), raises `LearnerDiedError` naming it; from then on every
    call raises it at once (a hung rank is not waited for twice); call `shutdown()` afterwards.
    """

    def __init__(self, *, model: ModelConfig, learner: LearnerConfig, algorithm: AlgorithmConfig, seed: int = 0,
                 timeout_s: float | None = None):
        n = learner.num_ranks
        self.learner_cfg = learner
        self.timeout_s = timeout_s
        self.failed: LearnerDiedError | None = None
        self.group = ActorGroup(LearnerWorker, n, cpus_per_actor=learner.cpus_per_rank,
                                gpus_per_actor=learner.gpus_per_rank, strategy=learner.placement_strategy,
                                resources=learner.resources,
                                kwargs_for_rank=lambda rank: {"rank": rank, "world_size": n})
        try:
            addr, port = self.get([self.group.actors[0].address_and_free_port.remote()])[0]
            self._call("setup", model=model, learner=learner, algorithm=algorithm, seed=seed, master_addr=addr,
                       master_port=port)
        except BaseException:
            self.shutdown()
            raise

    def get(self, refs: list[ray.ObjectRef], *, what: str = "a call") -> list:
        """Per-rank results of `async_*` refs (blocks); a dead or hung rank raises LearnerDiedError naming it."""
        if self.failed is not None:
            raise LearnerDiedError(f"learner group unusable since: {self.failed}", rank=self.failed.rank)
        try:
            return self.group.get(refs, timeout_s=self.timeout_s, what=what, key="run.learner_timeout_s")
        except ActorDiedError as err:  # ActorHungError included
            self.failed = LearnerDiedError(f"learner {err}", rank=err.rank)
            raise self.failed from err

    def _call(self, method: str, *args, **kwargs) -> list:
        """`method` on every rank (blocks); per-rank results."""
        return self.get(self.group.async_run_method(method, *args, **kwargs), what=method)

    @staticmethod
    def _put(records: pa.Table | Sequence[Record]) -> ray.ObjectRef:
        table = records if isinstance(records, pa.Table) else records_to_table(records)
        return ray.put(table)  # once in the object store, read by every rank

    def async_train_step(self, records: pa.Table | Sequence[Record], *, trainable: str) -> list[ray.ObjectRef]:
        return self.group.async_run_method("train_step", self._put(records), trainable=trainable)

    def train_step(self, records: pa.Table | Sequence[Record], *, trainable: str) -> dict[str, float]:
        """One update on every rank (same records everywhere); rank 0's metrics."""
        return self.get(self.async_train_step(records, trainable=trainable), what="train_step")[0]

    def async_compute_logprobs(self, records, *, policy: str | None = None) -> list[ray.ObjectRef]:
        return self.group.async_run_method("compute_logprobs", self._put(records), policy=policy)

    def compute_logprobs(self, records, *, policy: str | None = None) -> list[list[float]]:
        return self.get(self.async_compute_logprobs(records, policy=policy), what="compute_logprobs")[0]

    def async_save_weights(self, path: str | os.PathLike, *, policy: str) -> list[ray.ObjectRef]:
        return self.group.async_run_method("save_weights", str(path), policy=policy)

    def save_weights(self, path: str | os.PathLike, *, policy: str) -> Path:
        """One safetensors file of `policy`'s HF-named weights, written by rank 0 (on rank 0's node)."""
        return Path(self.get(self.async_save_weights(path, policy=policy), what="save_weights")[0])

    def save_adapter(self, path: str | os.PathLike, *, policy: str) -> Path:
        """`policy`'s LoRA adapter as a PEFT folder (serving dtype), written by rank 0 (on rank 0's node)."""
        return Path(self._call("save_adapter", str(path), policy=policy)[0])

    def export_adapter_to_object_store(self, *, policy: str) -> ray.ObjectRef:
        """`policy`'s LoRA adapter as one object-store entry (ref owned by rank 0) for samplers on other nodes."""
        return self._call("export_adapter_to_object_store", policy=policy)[0]

    def export_to_object_store(self, *, policy: str) -> list[ray.ObjectRef]:
        """`policy`'s weights as object-store buckets (refs owned by rank 0) for samplers on other nodes."""
        bucket_mb = self.learner_cfg.sync_bucket_mb
        return self._call("export_to_object_store", policy=policy, bucket_mb=bucket_mb)[0]

    def init_nccl_sync(self, *, policy: str, samplers: list, tensor_parallel_size: int) -> None:
        """Open `policy`'s NCCL weight-transfer group: learner rank 0 plus every worker of `samplers`
        (`SamplerActor`s started with `weight_transfer=True`). Once per policy; GPU clusters only."""
        addr, port = self.get([self.group.actors[0].address_and_free_port.remote()])[0]
        self._call("init_nccl_sync", policy=policy, samplers=list(samplers), master_addr=addr, master_port=port,
                   tensor_parallel_size=tensor_parallel_size, bucket_mb=self.learner_cfg.sync_bucket_mb)

    def send_weights_nccl(self, *, policy: str) -> None:
        """Push `policy`'s weights over its NCCL group (`init_nccl_sync` first); vLLM reloads them in place."""
        self._call("send_weights_nccl", policy=policy)

    def node_ids(self) -> list[str]:
        """Node of each rank, in rank order."""
        return self._call("node_id")

    def save_checkpoint(self, directory: str | os.PathLike) -> Path:
        """`Learner.save_checkpoint` on all ranks; `directory` must be storage every rank sees."""
        return Path(self._call("save_checkpoint", str(directory))[0])

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        self._call("load_checkpoint", str(directory))

    def shutdown(self) -> None:
        self.group.shutdown()
