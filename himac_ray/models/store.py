"""Where prepared local models live and how a model folder is published.

`cache_dir()` is `$HIMAC_RAY_CACHE` (default `~/.cache/himac-ray`); a folder counts as prepared
once its `.complete` marker exists, which `save_model_atomic` writes last, through a temporary
sibling renamed into place. Imports nothing from the rest of himac_ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_COMPLETE_MARKER = ".complete"


class ModelUnavailableError(RuntimeError):
    """A local model cannot be prepared; the message names the fix."""


def cache_dir() -> Path:
    """Where prepared models live: `$HIMAC_RAY_CACHE` or `~/.cache/himac-ray`."""
    return Path(os.environ.get("HIMAC_RAY_CACHE", Path.home() / ".cache" / "himac-ray")).expanduser()


def is_prepared(path: Path) -> bool:
    return (Path(path) / _COMPLETE_MARKER).exists()


def _publish(tmp: Path, dest: Path) -> Path:
    """Mark `tmp` complete and move it to `dest` atomically (a half-written folder is never used)."""
    (tmp / _COMPLETE_MARKER).write_text("ok\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def save_model_atomic(model, tokenizer_or_processor, path: str | Path) -> Path:
    """Save a model (safetensors) with its tokenizer or processor to `path` through a temporary
    sibling published by `_publish`: a half-written folder is never used."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer_or_processor.save_pretrained(tmp)
    return _publish(tmp, dest)
