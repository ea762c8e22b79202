"""Weight-sync path choice, `learner.weight_sync` validation and the NCCL path's CPU-checkable parts.

The NCCL broadcast itself needs GPUs and is not run here. What runs: the path choice, the config
rule, the init infos against vLLM's own dataclasses, and `learner_weight_source` on a real 1-rank
DeepSpeed `Learner` (tiny model, ZeRO-2 and ZeRO-3): its metadata must agree with its iteration
element for element (checked also by vLLM's sender-side `_checked_iter`), and its tensors must equal
`export_weights`' exactly.
"""

from pathlib import Path

import pytest
import torch

from himac_ray.config import AlgorithmConfig, ConfigError, LearnerConfig, ModelConfig, load_config
from himac_ray.learner import Learner
from himac_ray.weight_sync import (
    engine_init_info,
    export_layout,
    learner_weight_source,
    sync_paths,
    trainer_init_info,
    uses_nccl,
)


@pytest.mark.parametrize("mode, learner_gpus, sampler_gpus, expected", [
    ("auto", 0, 0, ["shm", "object_store", "shm"]),                      # CPU machine
    ("auto", 1, 0.5, ["shm", "object_store", "shm"]),                    # fractional GPUs: no NCCL
    ("auto", 1, 2, ["nccl", "nccl", "nccl"]),                            # GPUs on both sides
    ("shm_object_store", 1, 2, ["shm", "object_store", "shm"]),          # forced host path
    ("nccl", 1, 1, ["nccl", "nccl", "nccl"]),
])
def test_sync_paths(mode, learner_gpus, sampler_gpus, expected):
    paths = sync_paths(mode, learner_node="n0", sampler_nodes=["n0", "n1", "n0"], learner_gpus=learner_gpus,
                       sampler_gpus=sampler_gpus)
    assert paths == expected
    assert uses_nccl(mode, learner_gpus=learner_gpus, sampler_gpus=sampler_gpus) == (expected[0] == "nccl")


def test_weight_sync_config():
    assert load_config().learner.weight_sync == "auto"
    gpus = ["learner.gpus_per_rank=1", "sampler.gpus_per_engine=2"]
    assert load_config(None, ["learner.weight_sync=nccl", *gpus]).learner.weight_sync == "nccl"
    with pytest.raises(ConfigError, match="learner.weight_sync='nccl' needs whole GPUs"):
        load_config(None, ["learner.weight_sync=nccl"])
    with pytest.raises(ConfigError, match="learner.weight_sync='nccl' needs whole GPUs"):
        load_config(None, ["learner.weight_sync=nccl", "learner.gpus_per_rank=0.5", "sampler.gpus_per_engine=1"])
    with pytest.raises(ConfigError, match="learner.weight_sync='ipc' is not allowed"):
        load_config(None, ["learner.weight_sync=ipc"])


def test_init_infos_give_every_worker_its_own_rank():
    """3 engines of tensor-parallel size 2: the workers take NCCL ranks 1..6 of a 7-rank group, in
    the worker-side init info vLLM's trainer sends (parsed back by vLLM's own dataclass)."""
    from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload

    trainer = trainer_init_info(rank=0, master_address="10.0.0.1", master_port=29555, engines=3,
                                tensor_parallel_size=2)
    assert trainer.world_size == 7 and trainer.is_sender and trainer.backend == "nccl"
    assert not trainer_init_info(rank=1, master_address="10.0.0.1", master_port=29555, engines=3,
                                 tensor_parallel_size=2).is_sender
    sent = worker_init_payload(NCCLWeightTransferInitInfo(  # as NCCLTrainerWeightTransferEngine.trainer_init builds it
        master_address=trainer.master_address, master_port=trainer.master_port, rank_offset=1,
        world_size=trainer.world_size, packed=trainer.packed))
    ranks = []
    for engine in range(3):
        info = NCCLWeightTransferInitInfo(**engine_init_info(sent, engine_index=engine, tensor_parallel_size=2))
        assert (info.world_size, info.master_port, info.packed) == (7, 29555, True)
        ranks += [info.rank_offset + tp_rank for tp_rank in range(2)]
    assert ranks == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def learner(request):
    return Learner(model=ModelConfig(path="tiny", dtype="float32"),
                   learner=LearnerConfig(zero_stage=request.param, micro_batch_size=2, max_len=256),
                   algorithm=AlgorithmConfig(kl_coef=0.0), seed=0)


def test_weight_source_metadata_matches_iteration(learner):
    from vllm.distributed.weight_transfer.base import WeightSource
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

    source = learner_weight_source(learner, policy="executor", bucket_mb=1, device=torch.device("cpu"))
    assert isinstance(source, WeightSource)
    meta = source.metadata()
    sent = list(NCCLTrainerWeightTransferEngine._checked_iter(source, meta))  # the sender's own check
    assert [(m.name, m.dtype, m.shape) for m in meta] == [(n, t.dtype, tuple(t.shape)) for n, t in sent]
    assert [(m.name, m.dtype, m.shape) for m in meta] == export_layout(learner, "executor")
    names = [m.name for m in meta]
    assert len(names) == len(set(names)) and "lm_head.weight" in names  # tied alias sent as its own tensor
    exported = [(n, t) for bucket in learner.export_weights(policy="executor", bucket_mb=1) for n, t in bucket.items()]
    assert [n for n, _ in exported] == names
    for (name, got), (_, want) in zip(sent, exported):
        assert torch.equal(got, want), name
    assert all(t.device.type == "cpu" for _, t in sent)
    assert [n for n, _ in source] == names  # a fresh pass each time


def test_shm_file_is_removed_when_the_sync_fails(tmp_path):
    from himac_ray.weight_sync import sync_through_path

    path = tmp_path / "w.safetensors"

    def reload(p):
        assert Path(p).exists()
        raise OSError("sampler gone")

    with pytest.raises(OSError, match="sampler gone"):
        sync_through_path(path, save=lambda p: Path(p).write_bytes(b"w"), reload=reload)
    assert not path.exists()
    sync_through_path(path, save=lambda p: Path(p).write_bytes(b"w"), reload=lambda p: None)
    assert not path.exists()
