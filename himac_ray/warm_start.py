"""The SFT warm start, built once per recipe and reused: a cache keyed by everything that shapes it.

A warm start depends on the base model, the env (id and kwargs), the prompt family (hierarchical
or flat), the prompt style, the answer format, the SFT settings and its compute precision (the
resolved `model.dtype`), and on nothing else: not on
the RL seed nor on which flat algorithm trains from it. So seeds and algorithms of one study
share one warm start, stored under `$HIMAC_RAY_CACHE/warm_starts/<key>/`, and any change of the
key builds a new one. No Ray here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from himac_ray.atomic import publish_file
from himac_ray.config import TrainConfig
from himac_ray.hardware import resolve_dtype
from himac_ray.models import cache_dir
from himac_ray.prompts import PROMPT_VERSION

KEY_FILE = "warm_start_key.json"
"""written next to the weights: the key's fields in plain text"""
HIERARCHICAL_ALGORITHMS = ("himac",)


def warm_start_key(cfg: TrainConfig, model_path: str | Path) -> dict:
    """Everything the warm start of `cfg` depends on (JSON-able)."""
    weights = sorted(Path(model_path).glob("*.safetensors"))
    stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
    r, s = cfg.rollout, cfg.sft
    return {
        # the SFT's compute precision (bfloat16 autocast or float32): `model.dtype` auto resolves per
        # machine, so a cache shared by machines of both kinds keeps one warm start of each
        "sft_dtype": resolve_dtype(cfg.model.dtype)[0],
        "model": str(Path(model_path).resolve()), "weights": stamp,
        "env": cfg.env.id, "env_kwargs": cfg.env.kwargs,
        "family": "hierarchical" if cfg.algorithm.name in HIERARCHICAL_ALGORITHMS else "flat",
        "prompt_style": r.prompt_style, "answer_format": r.answer_format, "sub_done": r.sub_done,
        "prompt_version": PROMPT_VERSION,
        "max_subgoals": r.max_subgoals, "history_length": r.history_length,
        "subgoal_step_budget": r.subgoal_step_budget,
        "episodes": s.episodes, "plan_episodes": s.plan_episodes, "epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size,
        "seed_start": s.seed_start, "seed": s.seed, "train_layers": s.train_layers, "max_len": cfg.learner.max_len,
        "grad_clip": cfg.learner.grad_clip,
    }


def warm_start_dir(cfg: TrainConfig, model_path: str | Path) -> Path:
    """`$HIMAC_RAY_CACHE/warm_starts/<16 hex of the key>` (may not exist yet)."""
    key = json.dumps(warm_start_key(cfg, model_path), sort_keys=True, default=str)
    return cache_dir() / "warm_starts" / hashlib.sha256(key.encode()).hexdigest()[:16]


def is_built(path: Path) -> bool:
    return (Path(path) / "config.json").exists() and (Path(path) / KEY_FILE).exists()


def write_key(cfg: TrainConfig, model_path: str | Path, path: Path) -> None:
    """Record the key beside a finished warm start (written last: its presence marks the build done)."""
    text = json.dumps(warm_start_key(cfg, model_path), indent=1, default=str) + "\n"
    publish_file(Path(path) / KEY_FILE, lambda tmp: tmp.write_text(text))
