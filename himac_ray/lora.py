"""LoRA adapters (PEFT) on a policy: wrapping, adapter names, the adapter state and folder vLLM
loads, and the merged-weights walk checkpoints export. Pure torch; peft is imported lazily (the
optional `lora` extra). No Ray, no DeepSpeed.

Adapter names: one shared policy with one adapter calls it `policy` (as its checkpoint folder);
per-level adapters (`learner.lora.per_level`) and two-model runs (`model.planner_path`) name each
adapter after its role, `planner` / `executor`. The learner, the weight sync and the samplers all
ask `adapter_name` for it.

Every adapter starts as the identity (PEFT's default init: B = 0), so an engine serving the base
model serves the untrained adapter exactly; the first weight sync loads the real one.

Adapter folders of an engine: each engine copies the adapters it loads into one folder of its own
(`create_adapter_dir`, vLLM keeps the path), marked with `OWNER_FILE` (program, pid, host). The
engine removes it when it closes; a killed engine cannot, so every new one first removes the marked
folders of dead processes on its host (`remove_stale_adapter_dirs`). A folder without the marker, of
a live process or of another host is never touched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

    from himac_ray.config import LoraConfig

SHARED_ADAPTER = "policy"
"""the one adapter of a shared policy (both levels)"""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""the file names of a PEFT adapter folder (what `PeftModel.save_pretrained` writes and vLLM reads)"""
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""vLLM's allowed `max_lora_rank` values (`vllm.config.lora.MaxLoRARanks`)"""
ADAPTER_IDS = {SHARED_ADAPTER: 1, "planner": 1, "executor": 2}
"""vLLM's `lora_int_id` of each adapter name (unique within an engine)"""
ADAPTER_DIR_PREFIX = "himac-adapters-"
"""name prefix of an engine's adapter folder (in the temp directory unless told otherwise)"""
OWNER_FILE = ".himac-ray-owner"
"""the marker inside an adapter folder himac-ray created: JSON {"program", "pid", "host"}"""
OWNER_PROGRAM = "himac-ray"


def missing_peft() -> str | None:
    """One line naming the extra to install when peft cannot be imported, else None."""
    if importlib.util.find_spec("peft") is not None:
        return None
    return "LoRA needs the peft package, which is not installed: pip install 'himac-ray[lora]'"


def adapter_name(policy: str, *, per_level: bool, shared: bool) -> str:
    """The adapter that serves and trains `policy` ("planner" / "executor"): `policy` for a shared
    model with one adapter, else the role's own name."""
    return SHARED_ADAPTER if shared and not per_level else policy


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of rank `rank`."""
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def wrap_with_adapters(module, cfg: LoraConfig, names: Sequence[str]):
    """`module` (an HF model) as a PeftModel with one LoRA adapter per name; the base is frozen,
    the last name is active (and trainable)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(module, peft_cfg, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, peft_cfg)
    model.set_adapter(names[-1])
    return model


def hf_forward(module):
    """The HF model's own `forward` under a PeftModel (its signature tells which kwargs it takes)."""
    return module.get_base_model().forward if hasattr(module, "get_base_model") else module.forward


def adapter_params(module, name: str) -> list[tuple[str, torch.nn.Parameter]]:
    """(PEFT file name, parameter) of adapter `name`: the module's parameter names without the
    adapter segment, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, as in
    the `adapter_model.safetensors` PEFT writes."""
    tag = f".{name}."
    return [(n.replace(tag, "."), p) for n, p in module.named_parameters() if ".lora_" in n and tag in n]


def adapter_config(module, name: str) -> dict:
    """Adapter `name`'s `adapter_config.json` content (JSON-safe), as `PeftModel.save_pretrained` writes it."""
    cfg = {**module.peft_config[name].to_dict(), "inference_mode": True}
    return json.loads(json.dumps(cfg, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def load_adapter_state(module, name: str, state: dict[str, torch.Tensor]) -> None:
    """Copy a saved adapter state (PEFT file names) into adapter `name` in place; the key sets must match."""
    import torch

    params = dict(adapter_params(module, name))
    if set(params) != set(state):
        raise ValueError(f"adapter {name!r}: saved tensors {sorted(set(state) ^ set(params))[:4]}... do not match "
                         "the model's adapter (another learner.lora.rank or target_modules?)")
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(state[key])


def write_adapter(directory: str | Path, *, config: dict, state: dict[str, torch.Tensor]) -> Path:
    """A PEFT adapter folder: `adapter_config.json` and `adapter_model.safetensors`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    return directory


def create_adapter_dir(root: str | Path | None = None) -> Path:
    """A new adapter folder for this process under `root` (default: the temp directory), marked
    as its own (`OWNER_FILE`); the stale ones under `root` are removed first."""
    root = Path(root or tempfile.gettempdir())
    remove_stale_adapter_dirs(root)
    directory = Path(tempfile.mkdtemp(prefix=ADAPTER_DIR_PREFIX, dir=root))
    owner = {"program": OWNER_PROGRAM, "pid": os.getpid(), "host": socket.gethostname()}
    (directory / OWNER_FILE).write_text(json.dumps(owner))
    return directory


def remove_adapter_dir(directory: str | Path) -> None:
    """Remove an adapter folder `create_adapter_dir` made in this process; any other folder stays
    (no marker, or another process's: e.g. an at-exit call in a forked child)."""
    directory = Path(directory)
    owner = _owner(directory)
    if owner is not None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname():
        shutil.rmtree(directory, ignore_errors=True)


def remove_stale_adapter_dirs(root: str | Path) -> list[Path]:
    """Remove the adapter folders under `root` that himac-ray made (`OWNER_FILE`) on this host for
    a process that is gone (a killed sampler); returns them. Unmarked folders, folders of a live
    process, of another host (its pid means nothing here) or of another user are left alone."""
    removed = []
    host = socket.gethostname()
    for directory in sorted(Path(root).glob(f"{ADAPTER_DIR_PREFIX}*")):
        owner = _owner(directory)
        if owner is None or owner["host"] != host or _pid_alive(owner["pid"]):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _owner(directory: Path) -> dict | None:
    """The owner marker of a folder this user may remove, or None (not a himac-ray adapter folder)."""
    try:
        if directory.is_symlink() or not directory.is_dir() or directory.stat().st_uid != os.getuid():
            return None
        owner = json.loads((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    valid = (isinstance(owner, dict) and owner.get("program") == OWNER_PROGRAM and isinstance(owner.get("host"), str)
             and isinstance(owner.get("pid"), int) and owner["pid"] > 0)
    return owner if valid else None


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a PEFT adapter folder (safetensors only: nothing is unpickled)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    return json.loads((directory / ADAPTER_CONFIG).read_text()), load_file(str(directory / ADAPTER_WEIGHTS))


def merged_walk(module, name: str, walk) -> tuple[list[tuple[torch.Tensor, list[str], object]], list]:
    """The tensors of the HF model with adapter `name` merged in, without changing the module.

    `walk` is `weight_sync.export_walk`. Returns (params, buffers): each base parameter once with
    its HF names (PEFT's `.base_layer` segment removed) and the LoRA layer whose delta
    (`get_delta_weight(name)`: scale * B @ A) must be added to it, or None; buffers as `walk` gives
    them. Merging on the fly keeps the frozen base bit-identical (merging in place and unmerging
    would not round-trip exactly).
    """
    base = module.get_base_model()
    modules = dict(base.named_modules())
    params, buffers = walk(base)
    out = []
    for p, aliases in params:
        if ".lora_" in aliases[0]:
            continue
        owner, sep, _ = aliases[0].rpartition(".base_layer.")
        layer = modules[owner] if sep and name in getattr(modules[owner], "lora_A", {}) else None
        out.append((p, [a.replace(".base_layer.", ".") for a in aliases], layer))
    return out, [(n.replace(".base_layer.", "."), b) for n, b in buffers if ".lora_" not in n]


class FrozenBase:
    """The KL reference of a LoRA policy: its own module with every adapter disabled (the frozen
    base), so no second copy of the weights is held. Called like the HF model."""

    def __init__(self, module):
        self.module = module

    @property
    def device(self):
        return next(self.module.parameters()).device

    def eval(self) -> FrozenBase:
        return self

    def __call__(self, **kwargs):
        with self.module.disable_adapter():
            return self.module(**kwargs)
