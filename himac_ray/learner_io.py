"""The learner's weights out and in: weight export for the samplers (full, in buckets, or only the
LoRA adapter), safetensors files for the in-place reload, and checkpoints (an HF folder per policy,
per-rank optimizer state, counters). A mixin of `himac_ray.learner.Learner`, which supplies
`policies`, `adapters`, `cfg`, `rank`, `world_size`, `serve_dtype`, `steps`, `processor` / `tokenizer`,
`_unique_policies()` and `_lora_layout()`. Collective methods must run on every rank.

Checkpoints never unpickle: weights are safetensors; per-rank optimizer state goes through
`torch.save` after non-tensor objects (DeepSpeed's LossScaler, enums, fragment addresses) are
replaced by a marker (`optim_state.to_plain`), and comes back with `weights_only=True`, merged into
the live optimizer's own state dict, which supplies those objects.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from himac_ray.atomic import publish_file
from himac_ray.lora import (
    adapter_config,
    adapter_params,
    load_adapter_state,
    merged_walk,
    read_adapter,
    write_adapter,
)
from himac_ray.optim_state import apply_hyperparams, from_plain, to_plain
from himac_ray.weight_sync import export_walk

STATE_FILE = "learner_state.json"
"""a checkpoint's learner counters and layout (world size, ZeRO stage, policies, LoRA adapters)"""


class LearnerWeights:
    """Export, save and load of a `Learner`'s weights (see the module docstring)."""

    # ----------------------------------------------------------------- weights

    def export_weights(self, *, policy: str, bucket_mb: int,
                       dtype: torch.dtype | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Full weights of `policy` as HF-named CPU tensors, in buckets of about `bucket_mb` MB (collective).

        `dtype` casts floating-point tensors (weight sync sends the samplers' serving dtype, e.g.
        bfloat16: half the bytes of the float32 master weights); None keeps the training dtype.

        Names are the keys of the HF model's `state_dict()`: the checkpoint's names plus tied
        aliases such as `lm_head.weight` (a copy of `model.embed_tokens.weight`). vLLM's in-place
        reload needs the alias: without it the LM head keeps its old weights ("ParallelLMHead:
        Failed to load weights"). Under ZeRO-3 each bucket is gathered with ONE
        `GatheredParameters` call, so every rank must exhaust the iterator. A LoRA policy exports
        the HF model with its adapter merged in (`himac_ray.lora.merged_walk`; the module is not
        changed): what checkpoints hold, while weight sync sends only the adapter (`export_adapter`).
        """
        import deepspeed

        module, adapter = self.policies[policy][0].module, self.adapters[policy]
        if adapter is None:
            params, named_buffers = export_walk(module)
            params = [(p, aliases, None) for p, aliases in params]
        else:
            params, named_buffers = merged_walk(module, adapter, export_walk)
        unique = [p for p, _, _ in params]
        names = {id(p): (aliases, layer) for p, aliases, layer in params}
        limit, bucket, size = bucket_mb * 2**20, [], 0
        for i, p in enumerate(unique):
            bucket.append(p)
            size += getattr(p, "ds_numel", p.numel()) * p.element_size()
            if size < limit and i < len(unique) - 1:
                continue
            out = {}
            factors = [f for q in bucket if (layer := names[id(q)][1]) is not None
                       for f in (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight)]
            with deepspeed.zero.GatheredParameters(bucket + factors, enabled=self.cfg.zero_stage == 3), torch.no_grad():
                for q in bucket:
                    (first, *aliases), layer = names[id(q)]
                    cast = dtype if dtype is not None and q.is_floating_point() else q.dtype
                    w = q.detach() if layer is None else q.detach() + layer.get_delta_weight(adapter)
                    out[first] = w.to("cpu", dtype=cast, copy=True).contiguous()
                    out.update({alias: out[first].clone() for alias in aliases})  # safetensors refuses shared storage
            yield out
            bucket, size = [], 0
        buffers = {n: b.detach().to("cpu", copy=True) for n, b in named_buffers}
        if buffers:
            yield buffers

    def _full_state_dict(self, policy: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        state = {}
        for bucket in self.export_weights(policy=policy, bucket_mb=self.cfg.sync_bucket_mb, dtype=dtype):
            if self.rank == 0:
                state.update(bucket)
        return state

    def save_weights(self, path: str | os.PathLike, *, policy: str) -> Path:
        """Write `policy`'s full weights in the serving dtype to one safetensors file (rank 0; atomic),
        for the samplers' in-place reload."""
        from safetensors.torch import save_file

        path = Path(path)
        state = self._full_state_dict(policy, dtype=self.serve_dtype)
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            publish_file(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        dist.barrier()
        return path

    def export_adapter(self, *, policy: str, dtype: torch.dtype | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """(adapter_config.json content, CPU tensors named as in PEFT's adapter_model.safetensors)
        of `policy`'s LoRA adapter (collective: ZeRO-3 gathers it); `dtype` casts as in `export_weights`."""
        import deepspeed

        module, name = self.policies[policy][0].module, self.adapters[policy]
        if name is None:
            raise ValueError("export_adapter needs learner.lora (this learner trains the full weights)")
        named = adapter_params(module, name)
        with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=self.cfg.zero_stage == 3):
            state = {k: p.detach().to("cpu", dtype=dtype or p.dtype, copy=True).contiguous() for k, p in named}
        return adapter_config(module, name), state

    def save_adapter(self, directory: str | os.PathLike, *, policy: str) -> Path:
        """Write `policy`'s adapter as a PEFT folder in the serving dtype (rank 0), for the samplers'
        LoRA load (the adapter-only weight sync)."""
        config, state = self.export_adapter(policy=policy, dtype=self.serve_dtype)
        if self.rank == 0:
            write_adapter(directory, config=config, state=state)
        dist.barrier()
        return Path(directory)

    # ------------------------------------------------------------- checkpoints

    def save_checkpoint(self, directory: str | os.PathLike) -> Path:
        """HF model folder per policy (rank 0) + per-rank optimizer state + counters; replaces `directory`.

        Layout: `<dir>/<policy>/` (config, tokenizer, model.safetensors; "policy" in shared mode,
        else "planner" and "executor"), `<dir>/<policy>/optim_rank<r>.pt`, `<dir>/learner_state.json`.
        With LoRA, model.safetensors holds the merged weights (an HF model eval and `model.path`
        can use) and `<dir>/<policy>/adapter/` the float32 adapter that a resume loads.
        Written into `<dir>.partial` and renamed at the end; `directory` must be on storage all ranks see.
        """
        from safetensors.torch import save_file

        final = Path(directory)
        tmp = final.with_name(final.name + ".partial")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        for name, (engine, _) in self._unique_policies().items():
            sub = tmp / name
            policy = "executor" if name == "policy" else name
            state = self._full_state_dict(policy)
            adapter = self.export_adapter(policy=policy) if self.adapters[policy] else None
            if self.rank == 0:
                if adapter is not None:
                    write_adapter(sub / "adapter", config=adapter[0], state=adapter[1])
                sub.mkdir(exist_ok=True)
                save_file(state, str(sub / "model.safetensors"), metadata={"format": "pt"})
                engine.module.config.save_pretrained(sub)
                if getattr(engine.module, "generation_config", None) is not None:
                    engine.module.generation_config.save_pretrained(sub)
                (self.processor or self.tokenizer).save_pretrained(sub)
            dist.barrier()
            optim = {"optimizer": to_plain(engine.optimizer.state_dict()), "global_steps": engine.global_steps,
                     "global_samples": engine.global_samples}
            if self.level_moments is not None:  # the stashed level's moments too (one shared policy only)
                optim["level_moments"] = to_plain(self.level_moments.state_dict())
            torch.save(optim, sub / f"optim_rank{self.rank}.pt")
        torch.save({"torch_rng": torch.get_rng_state()}, tmp / f"rng_rank{self.rank}.pt")
        dist.barrier()
        if self.rank == 0:
            meta = {"world_size": self.world_size, "zero_stage": self.cfg.zero_stage, "steps": self.steps,
                    "policies": list(self._unique_policies()), "lora": self._lora_layout()}
            (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        dist.barrier()
        return final

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        """Restore a `save_checkpoint` folder written with the same world size, ZeRO stage and policies.

        The optimizer state holds the fp32 master weights, so weights, Adam moments and step
        counters come back exactly. (To start a new run from a checkpoint with another layout,
        point `model.path` at `<dir>/<policy>` instead.)
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / STATE_FILE).read_text())
        want = {"world_size": self.world_size, "zero_stage": self.cfg.zero_stage,
                "policies": list(self._unique_policies()), "lora": self._lora_layout()}
        got = {k: meta.get(k) for k in want}
        if got != want:
            raise ValueError(f"checkpoint {directory} was saved with {got}; this learner has {want}")
        for name, (engine, _) in self._unique_policies().items():
            adapter = self.adapters["executor" if name == "policy" else name]
            if self.cfg.zero_stage < 3 and adapter is not None:  # the base is model.path's, frozen
                load_adapter_state(engine.module, adapter, read_adapter(directory / name / "adapter")[1])
            elif self.cfg.zero_stage < 3:  # ZeRO-2 restores only the fp32 masters: load the module's copy too
                engine.module.load_state_dict(load_file(str(directory / name / "model.safetensors")))
            saved = torch.load(directory / name / f"optim_rank{self.rank}.pt", weights_only=True)
            state = from_plain(saved["optimizer"], engine.optimizer.state_dict())
            sd_list = [None] * self.world_size
            sd_list[self.rank] = state
            engine.optimizer.load_state_dict(sd_list, load_optimizer_states=True, load_from_fp32_weights=True)
            engine.global_steps = saved["global_steps"]
            engine.global_samples = saved["global_samples"]
            if self.level_moments is not None and "level_moments" in saved:
                self.level_moments.load_state_dict(saved["level_moments"])
            # the saved param groups carry the old run's lr / weight decay: this run's config wins
            # (a resume with --allow-config-change must really train with the new values)
            apply_hyperparams(engine.optimizer.param_groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        rng = torch.load(directory / f"rng_rank{self.rank}.pt", weights_only=True)
        torch.set_rng_state(rng["torch_rng"])
        self.steps = meta["steps"]
        dist.barrier()
