"""The DeepSpeed learner: one data-parallel rank of the policy update (no Ray; deepspeed imported lazily).

Owns the ZeRO-2/3 engine(s), the frozen KL reference, the clipped-PG step, logprob checks,
weight export for the samplers and checkpoints; `actors/learner.py` runs one `Learner` per rank.
One shared policy plays both levels (paper default), or with `model.planner_path` two policies
"planner" / "executor". `trainable="planner"` trains `plan` records, "executor" `act` records.

Loss scale (DESIGN): with `token-mean` a mini-batch's loss is sum(token losses) / N, N = trained
tokens of the whole mini-batch on ALL ranks (all-reduced before the first micro-batch;
`seq-mean-token-mean` counts trained sequences instead). Each micro-batch's `compute_policy_loss`
(a mean over its own n items) is scaled by n / N * world_size; `* world_size` undoes DeepSpeed's
gradient averaging over ranks. Loss, gradient and metrics thus do not depend on world size or
micro-batch split. DeepSpeed runs with `managed_gradient_accumulation: false` (one `backward` per
micro-batch, one `step` per mini-batch), and every rank runs the same number of micro-batches: a
rank short of records runs a 2-token dummy with zero mask so ZeRO's collectives still match.

Logprobs use temperature 1, like vLLM's default `raw_logprobs` sampling logprobs.

Old-policy logprobs (the PPO ratio's denominator): the sampler's sampling logprobs as recorded
(`Record.logprobs`, no extra forward pass), or with `algorithm.tis_cap` > 0 the learner's own
recomputation with the weights about to be updated, each token's policy-gradient term then weighted
by the truncated importance weight min(pi_old / pi_sampler, tis_cap) (`loss.truncated_is_weights`):
the correction for stale weights in async mode and for sampler/learner numerics in both modes.

LoRA (`learner.lora`, `himac_ray.lora`): the policy module is a PeftModel over the frozen base;
each adapter has its own DeepSpeed engine whose optimizer holds only that adapter (per-level
adapters: two engines over one module, the active adapter switched before every forward), the KL
reference is the base with adapters disabled, weight sync exports only the adapter
(`export_adapter` / `save_adapter`) and checkpoints add the adapter to the merged HF weights.

Vision-language policies (a model folder with a `vision_config`, e.g. the local Idefics3 VLM or
Qwen2.5-VL): records carry the PNG of the observation they saw (`Record.image`) and prompt ids
with the image tokens already expanded (as vLLM saw them); every forward feeds the same pixels
through the model's image processor, so logprobs match the sampler's.

Weight export, weight files and checkpoints: `himac_ray.learner_io.LearnerWeights` (a mixin).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import torch
import torch.distributed as dist

from himac_ray import metrics as M
from himac_ray.batch import pad_batch
from himac_ray.config import AlgorithmConfig, LearnerConfig, ModelConfig
from himac_ray.data import LEVELS, Record, png_image, table_to_records
from himac_ray.hardware import resolve_dtype
from himac_ray.learner_io import LearnerWeights
from himac_ray.level_moments import LevelMoments, optimizer_steps
from himac_ray.lora import (
    FrozenBase,
    adapter_name,
    hf_forward,
    wrap_with_adapters,
)
from himac_ray.loss import (
    compute_policy_loss,
    token_entropy,
    token_logprobs,
    truncated_is_weights,
)
from himac_ray.models import is_vision_model, resolve_model, trainable_parameters
from himac_ray.names import JOINT, LEVEL_OF, ROLE_OF, ROLES
from himac_ray.optim_state import apply_hyperparams

PIXEL_KEYS = ("pixel_values", "pixel_attention_mask")
"""image-processor outputs a vision-language forward takes"""


def stable_order(records: Sequence[Record]) -> list[int]:
    """Indices of `records` sorted by (level, group, trajectory, step, subgoal); ties keep input order.

    Mini-batches are contiguous runs of this order and rank r trains every world_size-th record
    of a mini-batch from position r, so every rank derives the same partition from the same list.
    """
    return sorted(range(len(records)), key=lambda i: (records[i].level, records[i].group_id, records[i].traj_id,
                                                      records[i].step, records[i].subgoal_index))


def with_response_window(batch: dict, response_lengths: Sequence[int]) -> dict:
    """Narrow a `pad_batch` batch to its response window: columns [start, stop) hold every response
    token's predictor (plus one). Only their logits are computed (HF `logits_to_keep`), which skips
    the prompt's (T, V) logits; `response_mask` / `old_logprobs` are cut to the same columns."""
    R = torch.tensor(list(response_lengths))
    P = batch["attention_mask"].sum(-1) - R
    window = slice(int((P - 1).clamp(min=0).min()), int((P + R).max()))
    batch["window"] = window
    batch["response_mask"] = batch["response_mask"][:, window]
    batch["old_logprobs"] = batch["old_logprobs"][:, window]
    if "is_weights" in batch:
        batch["is_weights"] = batch["is_weights"][:, window]
    return batch


def _split(items: list, parts: int) -> list[list]:
    """Contiguous split into `parts` lists whose sizes differ by at most one (numpy.array_split)."""
    q, r = divmod(len(items), parts)
    bounds = [i * q + min(i, r) for i in range(parts + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _dummy(level: str, pad_token_id: int) -> Record:
    return Record(group_id="", traj_id="", level=level, env_id="", seed=0, step=0, subgoal_index=0,
                  prompt_ids=[pad_token_id], response_ids=[pad_token_id], logprobs=[0.0])


class Learner(LearnerWeights):
    """One DeepSpeed data-parallel rank training the HiMAC policy (or planner + executor policies).

    Every public method is collective: all ranks call it with the same arguments (records,
    paths) in the same order, as `actors.learner.LearnerGroup` does.
    """

    def __init__(self, *, model: ModelConfig, learner: LearnerConfig, algorithm: AlgorithmConfig,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        import deepspeed
        from transformers import AutoTokenizer

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.model_cfg, self.cfg, self.algo = model, learner, algorithm
        self.rank, self.world_size = rank, world_size
        self.backend = learner.backend if learner.backend != "auto" else (
            "nccl" if torch.cuda.is_available() else "gloo")
        self._init_distributed(deepspeed)
        if learner.torch_threads:
            torch.set_num_threads(learner.torch_threads)
        self.serve_dtype = getattr(torch, resolve_dtype(model.dtype)[0])
        """dtype the samplers serve in (`model.dtype`, auto resolved): weight sync exports it"""
        self.cpu_autocast = self.backend != "nccl" and self.serve_dtype == torch.bfloat16
        """CPU ranks keep float32 weights and optimizer state but run forwards under bfloat16
        autocast where the CPU computes it natively (`model.dtype` auto): ~2x faster steps"""
        torch.manual_seed(seed)
        executor_path = resolve_model(model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(executor_path)
        self.processor = None
        """the image processor's owner (AutoProcessor) of a vision-language policy, else None"""
        if is_vision_model(executor_path):
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(executor_path)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.pad_token_id = self.tokenizer.eos_token_id if self.pad_token_id is None else self.pad_token_id
        lora = learner.lora if learner.lora.enabled else None
        shared = model.planner_path is None
        self.adapters = {p: adapter_name(p, per_level=lora.per_level, shared=shared) if lora else None
                         for p in ROLES}
        """policy -> its LoRA adapter's name (`himac_ray.lora.adapter_name`), None without LoRA"""
        if shared:
            names = tuple(dict.fromkeys(self.adapters.values())) if lora else ()
            built = self._build_policies(deepspeed, executor_path, adapters=names)
            planner, executor = built[0], built[-1]  # per-level: one module, an engine per adapter
        else:
            executor = self._build_policies(deepspeed, executor_path, adapters=("executor",) if lora else ())[0]
            planner = self._build_policies(deepspeed, resolve_model(model.planner_path),
                                           adapters=("planner",) if lora else ())[0]
        self.policies = {"planner": planner, "executor": executor}
        """policy name -> (engine, frozen reference or None); shared mode maps both to one pair
        (per-level LoRA: two engines over one module, one per adapter, each with its own optimizer)"""
        self.level_moments = (LevelMoments() if planner is executor and learner.level_moments == "per_level"
                              else None)
        """the shared policy's Adam state per trainable level (`learner.level_moments`); None when each
        level has an optimizer of its own (two models, per-level LoRA) or the state is shared"""
        self._keeps_logits = all("logits_to_keep" in inspect.signature(hf_forward(e.module)).parameters
                                 for e, _ in self.policies.values())
        """every policy's forward takes `logits_to_keep` (logits only for the response window)"""
        self.steps = 0
        """train_step calls that ran at least one optimizer step"""

    # ------------------------------------------------------------------ setup

    def _init_distributed(self, deepspeed) -> None:
        if not dist.is_initialized():
            env = {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0"}
            if self.world_size == 1:
                # a lone process still goes through deepspeed's init, on a fresh local port: never one
                # inherited from a parent process whose own store may still listen on it
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
            elif not {"MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():
                raise RuntimeError("world_size > 1 needs MASTER_ADDR and MASTER_PORT in the environment")
            for key, value in env.items():
                os.environ.setdefault(key, value)
            if self.backend == "nccl":
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            deepspeed.init_distributed(dist_backend=self.backend, auto_mpi_discovery=False, verbose=False,
                                       timeout=timedelta(minutes=30), rank=self.rank, world_size=self.world_size)
        if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
            raise RuntimeError(f"torch.distributed is rank {dist.get_rank()} of {dist.get_world_size()}, "
                               f"but this Learner was given rank {self.rank} of {self.world_size}")

    def _ds_config(self, *, train: bool) -> dict:
        gpu = self.backend == "nccl"
        dtype = self.model_cfg.dtype if gpu else "float32"  # fp32 on CPU
        return {
            "train_micro_batch_size_per_gpu": self.cfg.micro_batch_size,
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "gradient_clipping": self.cfg.grad_clip if train else 0.0,
            "zero_optimization": {"stage": self.cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": dtype == "bfloat16"},
            "fp16": {"enabled": dtype == "float16"},
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }

    def _build_policies(self, deepspeed, path: Path, *, adapters: tuple[str, ...]) -> list[tuple]:
        """(engine, frozen KL reference or None) of the model at `path`: one, fully trained, or with
        LoRA one per adapter over one frozen base module (each engine's optimizer holds only its
        adapter, so training one adapter never moves the other's weights or Adam moments)."""
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        auto = AutoModelForImageTextToText if is_vision_model(path) else AutoModelForCausalLM
        module = auto.from_pretrained(path, dtype=torch.float32)
        if adapters:
            module = wrap_with_adapters(module, self.cfg.lora, adapters)
        engines = []
        for name in adapters or (None,):
            if name is not None:  # ZeRO hooks only the parameters that require grad at initialize
                module.set_adapter(name)
            params = trainable_parameters(module, self.cfg.train_layers or None)
            optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=self._ds_config(train=True))
            engines.append(engine)
        ref = None
        if self.algo.kl_coef != 0.0 and adapters:
            ref = FrozenBase(module)  # the base under the adapters: no second copy
        elif self.algo.kl_coef != 0.0:
            ref_module = auto.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
            if self.cfg.zero_stage == 3:  # partition the reference too; forwards gather it layer by layer
                ref, *_ = deepspeed.initialize(model=ref_module, config=self._ds_config(train=False))
            else:
                ref = ref_module.to(engines[0].device)
            ref.eval()
        return [(engine, ref) for engine in engines]

    def _engine(self, policy: str):
        """`policy`'s DeepSpeed engine, with its LoRA adapter made the active (and trainable) one."""
        engine = self.policies[policy][0]
        if self.adapters[policy] is not None:
            engine.module.set_adapter(self.adapters[policy])
        return engine

    def _lora_layout(self) -> dict | None:
        """What a checkpoint's adapters must match: rank, alpha, targets and adapter names (None without LoRA)."""
        lora = self.cfg.lora
        if not lora.enabled:
            return None
        return {"rank": lora.rank, "alpha": lora.alpha, "target_modules": sorted(lora.target_modules),
                "adapters": sorted(set(self.adapters.values()))}

    def _unique_policies(self) -> dict[str, tuple]:
        p = self.policies
        return {"policy": p["executor"]} if p["planner"] is p["executor"] else dict(p)

    # --------------------------------------------------------------- training

    def _forward_logprobs(self, model, batch: dict, *, entropy: str = "none"):
        """(B, W) logprobs over the batch's column window and entropy ("none" -> None, "metric" ->
        detached, "loss" -> with grad), at trained positions only: a (B, T, V) softmax is the
        costliest op here."""
        ids = batch["input_ids"].to(model.device)
        window = batch["window"]
        kwargs = {"logits_to_keep": window} if self._keeps_logits else {}
        kwargs.update({k: batch[k].to(model.device) for k in PIXEL_KEYS if k in batch})
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast):
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(model.device), use_cache=False,
                           **kwargs).logits
        logits = logits if self._keeps_logits else logits[:, window]
        ent = None
        if entropy != "none":
            trained = batch["response_mask"].to(model.device) > 0
            with torch.set_grad_enabled(entropy == "loss" and torch.is_grad_enabled()):
                picked = token_entropy(logits[trained].unsqueeze(0))[0]
                ent = picked.new_zeros(trained.shape).masked_scatter(trained, picked)
        return token_logprobs(logits, ids[:, window]), ent

    def train_step(self, records_or_table: pa.Table | Sequence[Record], *, trainable: str) -> dict[str, float]:
        """One update of the `trainable` policy on its level's records (collective): `ppo_epochs`
        passes, each `mini_batches` optimizer steps.

        Args:
            records_or_table: the SAME full batch on every rank (Records or a RECORD_SCHEMA table);
                `advantage` and sampling `logprobs` filled in.
            trainable: "planner" (trains `plan` records), "executor" (trains `act` records), or
                "both" (one shared policy only: `plan` and `act` records in the same optimizer
                steps — the "without co-evolution" ablation's joint update).

        Returns:
            metrics (identical on every rank): M.PG_LOSS, M.KL, M.CLIPFRAC, M.APPROX_KL,
            M.ENTROPY (global means over the mini-batch, then averaged over mini-batches),
            M.GRAD_NORM (pre-clip global norm, averaged over optimizer steps), M.LEARNER_TOKENS,
            M.LEARNER_SECONDS, M.LEARNER_TOKENS_PER_S. All zero when no record has the trained level. With
            `algorithm.tis_cap` > 0 also the importance-weight metrics of `loss.truncated_is_weights`.
        """
        if trainable not in (*ROLES, JOINT):
            raise ValueError(f"trainable must be one of {[*ROLES, JOINT]}, got {trainable!r}")
        if trainable == JOINT and self.policies["planner"] is not self.policies["executor"]:
            raise ValueError("trainable='both' (one joint update) needs one shared policy; two policies train apart")
        start = time.perf_counter()
        levels = LEVELS if trainable == JOINT else (LEVEL_OF[trainable],)
        records = self._as_records(records_or_table)
        records = [r for r in records if r.level in levels]
        records, is_weights, is_metrics = self._off_policy(records, trainable=trainable)
        keys = (M.PG_LOSS, M.KL, M.ENTROPY, M.CLIPFRAC, M.APPROX_KL, M.GRAD_NORM)
        totals = dict.fromkeys(keys, 0.0)
        tokens, steps = 0.0, 0
        policy = "executor" if trainable == JOINT else trainable
        engine, ref = self._engine(policy), self.policies[policy][1]
        if self.level_moments is not None:
            self.level_moments.switch(engine.optimizer, trainable)
        planner_lr = self.cfg.planner_lr if trainable == "planner" else None
        lr = self.cfg.lr if planner_lr is None else planner_lr
        engine.train()
        ordered = [records[i] for i in stable_order(records)]
        for _ in range(self.cfg.ppo_epochs):
            for chunk in _split(ordered, self.cfg.mini_batches):
                if not chunk:
                    continue
                warm = min(1.0, (optimizer_steps(engine.optimizer) + 1) / max(self.cfg.warmup_steps, 1))
                apply_hyperparams(engine.optimizer.param_groups, lr=lr * warm, weight_decay=self.cfg.weight_decay)
                metrics, n_tok = self._train_mini_batch(engine, ref, chunk, levels, is_weights)
                for k in keys:
                    totals[k] += metrics[k]
                tokens += n_tok
                steps += 1
        self.steps += steps > 0
        seconds = time.perf_counter() - start
        out = {k: v / max(steps, 1) for k, v in totals.items()}
        out.update({M.LEARNER_TOKENS: tokens, M.LEARNER_SECONDS: seconds, M.LEARNER_TOKENS_PER_S: tokens / max(seconds, 1e-9)})
        out.update(is_metrics)
        return out

    def _off_policy(self, records: list[Record], *, trainable: str) -> tuple[list[Record], dict | None, dict]:
        """With `algorithm.tis_cap` > 0: the records with their old-policy logprobs recomputed by the
        weights about to be updated (the PPO ratio's denominator), their truncated importance weights
        against the sampler's logprobs (by `id` of the returned record) and the IS metrics (collective).
        Else the records as they are: the sampler's logprobs are the old policy."""
        if self.algo.tis_cap <= 0 or not records:
            return records, None, {}
        old = self.compute_logprobs(records, policy=None if trainable == JOINT else trainable)
        weights, metrics = truncated_is_weights(old_logprobs=old, behaviour_logprobs=[r.logprobs for r in records],
                                                cap=self.algo.tis_cap)
        records = [dataclasses.replace(r, logprobs=lp) for r, lp in zip(records, old)]
        return records, {id(r): w for r, w in zip(records, weights)}, metrics

    def _micro_batches(self, chunk: list[Record], *, level: str, train_levels: tuple,
                       is_weights: dict | None = None) -> list[dict]:
        """This rank's micro-batches of `chunk`; every rank gets the same count (dummies pad). With
        `is_weights` (record id -> per-token weights) each batch gets (B, T) `is_weights` too."""
        mine = chunk[self.rank::self.world_size]
        mb = self.cfg.micro_batch_size
        count = math.ceil(math.ceil(len(chunk) / self.world_size) / mb)
        batches = []
        # a rank short of records runs a dummy; with images, a copy of a real record (zero mask),
        # so that every rank runs the vision tower too (ZeRO-3 gathers its weights collectively)
        dummy = chunk[0] if self.processor is not None and chunk else _dummy(level, self.pad_token_id)
        for i in range(count):
            part = mine[i * mb:(i + 1) * mb]
            real = bool(part)
            batch = pad_batch(part or [dummy], pad_token_id=self.pad_token_id,
                              levels=train_levels if real else (), max_len=self.cfg.max_len)
            if self.processor is not None:
                batch.update(self._pixel_inputs(part or [dummy]))
            if is_weights is not None:  # laid out as pad_batch lays out logprobs (predictor alignment)
                shadow = [dataclasses.replace(r, logprobs=is_weights[id(r)]) for r in part] or [dummy]
                batch["is_weights"] = pad_batch(shadow, pad_token_id=self.pad_token_id, levels=(),
                                                max_len=self.cfg.max_len)["old_logprobs"]
            batch["tokens"] = float(batch["attention_mask"].sum()) if real else 0.0
            batches.append(with_response_window(batch, [len(r.response_ids) for r in part] or [1]))
        return batches

    def _pixel_inputs(self, part: list[Record]) -> dict:
        """`pixel_values` / `pixel_attention_mask` for a micro-batch of a vision-language policy
        (one image per record, from its PNG bytes); {} when no record has an image."""
        if not any(r.image for r in part):
            return {}
        if not all(r.image for r in part):
            raise ValueError("a micro-batch mixes records with and without images; visual envs give every step an image")
        too_long = [len(r.prompt_ids) + len(r.response_ids) for r in part
                    if len(r.prompt_ids) + len(r.response_ids) > self.cfg.max_len]
        if too_long:
            raise ValueError(f"a visual record of {max(too_long)} tokens exceeds learner.max_len={self.cfg.max_len}: "
                             "cutting its prompt would drop image tokens; raise learner.max_len")
        images = [[png_image(r.image)] for r in part]
        out = self.processor.image_processor(images=images, return_tensors="pt")
        return {k: out[k] for k in PIXEL_KEYS if k in out}

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            t = t.cuda() if self.backend == "nccl" else t
            dist.all_reduce(t)
        return t.cpu()

    def _train_mini_batch(self, engine, ref, chunk: list[Record], levels: tuple,
                          is_weights: dict | None = None) -> tuple[dict, float]:
        batches = self._micro_batches(chunk, level=levels[-1], train_levels=levels, is_weights=is_weights)
        seq_agg = self.algo.loss_aggregation == "seq-mean-token-mean"
        counts = []  # (aggregation count, trained tokens) per micro-batch
        for b in batches:
            n_tok = b["response_mask"].sum(-1)
            counts.append((float((n_tok > 0).sum()) if seq_agg else float(n_tok.sum()), float(n_tok.sum())))
        agg_total, tok_total = self._all_reduce(torch.tensor(counts, dtype=torch.float64).sum(0)).tolist()
        sums = torch.zeros(6, dtype=torch.float64)  # pg*c, kl*c, ent*n, clipfrac*n, approx_kl*n, tokens
        for b, (c_agg, c_tok) in zip(batches, counts):
            device = engine.device
            ref_lp = None
            if ref is not None:
                with torch.no_grad():
                    ref_lp = self._forward_logprobs(ref, b)[0]
            logprobs, entropy = self._forward_logprobs(
                engine, b, entropy="loss" if self.algo.entropy_coef != 0.0 else "metric")
            loss, m = compute_policy_loss(
                logprobs=logprobs, old_logprobs=b["old_logprobs"].to(device), advantages=b["advantages"].to(device),
                response_mask=b["response_mask"].to(device), ref_logprobs=ref_lp, clip_coef=self.algo.clip_coef,
                clip_coef_high=self.algo.clip_coef_high, kl_coef=self.algo.kl_coef, entropy=entropy,
                entropy_coef=self.algo.entropy_coef, aggregation=self.algo.loss_aggregation,
                is_weights=b["is_weights"].to(device) if "is_weights" in b else None)
            engine.backward(loss * (c_agg / max(agg_total, 1.0) * self.world_size), scale_wrt_gas=False)
            for i, (key, c) in enumerate(((M.PG_LOSS, c_agg), (M.KL, c_agg), (M.ENTROPY, c_tok),
                                          (M.CLIPFRAC, c_tok), (M.APPROX_KL, c_tok))):
                sums[i] += m[key] * c
            sums[5] += b["tokens"]
        engine.step()
        sums = self._all_reduce(sums).tolist()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        a, t = max(agg_total, 1.0), max(tok_total, 1.0)
        metrics = {M.PG_LOSS: sums[0] / a, M.KL: sums[1] / a, M.ENTROPY: sums[2] / t,
                   M.CLIPFRAC: sums[3] / t, M.APPROX_KL: sums[4] / t, M.GRAD_NORM: grad_norm}
        return metrics, sums[5]

    @staticmethod
    def _as_records(records_or_table) -> list[Record]:
        return table_to_records(records_or_table) if isinstance(records_or_table, pa.Table) else list(records_or_table)

    # ---------------------------------------------------------------- logprobs

    @torch.no_grad()
    def compute_logprobs(self, records: pa.Table | Sequence[Record], *, policy: str | None = None) -> list[list[float]]:
        """Current-policy logprobs of each record's response tokens (collective; same list on every rank).

        Args:
            records: Records (or a table); prompts are left-truncated to `learner.max_len` as in training.
            policy: "planner" / "executor" for all records, or None = by level (plan -> planner).

        Returns:
            one list per record, len(response_ids) floats (a first response token without any
            prompt token before it gets 0.0). Identical on every rank.
        """
        records = self._as_records(records)
        out = torch.zeros(len(records), max([len(r.response_ids) for r in records] + [1]), dtype=torch.float64)
        by_engine: dict[int, list[int]] = {}  # insertion order is the same on every rank
        for i, r in enumerate(records):
            by_engine.setdefault(id(self.policies[policy or ROLE_OF[r.level]]), []).append(i)
        for idx in by_engine.values():
            engine = self._engine(policy or ROLE_OF[records[idx[0]].level])
            order = [idx[j] for j in stable_order([records[i] for i in idx])]
            mine, mb = order[self.rank::self.world_size], self.cfg.micro_batch_size
            engine.eval()
            batches = self._micro_batches([records[i] for i in order], level="act", train_levels=LEVELS)
            for k, b in enumerate(batches):
                lp = self._forward_logprobs(engine, b)[0].cpu()
                for row, i in enumerate(mine[k * mb:(k + 1) * mb]):
                    R = len(records[i].response_ids)
                    P = int(b["attention_mask"][row].sum()) - R  # kept prompt tokens
                    for j in range(max(1 - P, 0), R):
                        out[i, j] = float(lp[row, P + j - 1 - b["window"].start])
            engine.train()
        out = self._all_reduce(out)  # each record was filled by exactly one rank
        return [out[i, :len(r.response_ids)].tolist() for i, r in enumerate(records)]
