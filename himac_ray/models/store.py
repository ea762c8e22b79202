"""Where prepared local models live and how a model folder is published.

`cache_dir()` is `$HIMAC_RAY_CACHE` (default `~/.cache/himac-ray`); a folder counts as prepared
once its `.complete` marker exists, which `save_model_atomic` writes last, through a temporary
sibling renamed into place. Every folder himac-ray writes also holds `.himac-ray-model`: only such a
folder (or an empty one) is ever replaced (`check_replaceable`), so `--out .` or `--out ~` is refused
instead of deleted. Imports nothing from the rest of himac_ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_COMPLETE_MARKER = ".complete"
MODEL_MARKER = ".himac-ray-model"
"""written into every model folder himac-ray creates: the licence to replace that folder later"""
_LEGACY_SFT_FILES = ("sft_metrics.json", "config.json")
"""an SFT folder written before MODEL_MARKER existed holds these (and only files)"""


class ModelUnavailableError(RuntimeError):
    """A local model cannot be prepared; the message names the fix."""


class ModelDirError(ValueError):
    """An output folder is not one himac-ray created, so it is not replaced; the message says why."""


def check_replaceable(path: str | Path) -> Path:
    """`path` (absolute) if himac-ray may write a model folder there: absent, an empty folder, or a
    folder himac-ray created (MODEL_MARKER, `.complete`, or an SFT folder from before the marker).
    Anything else (a file, `.`, `$HOME`, a project folder) raises ModelDirError."""
    dest = Path(path).expanduser().absolute()
    if not dest.exists() and not dest.is_symlink():
        return dest
    if dest.is_symlink() or not dest.is_dir():
        raise ModelDirError(f"{dest} exists and is not a folder; choose a new output folder")
    entries = list(dest.iterdir())
    names = {e.name for e in entries}
    legacy_sft = all(n in names for n in _LEGACY_SFT_FILES) and all(e.is_file() for e in entries)
    if not entries or MODEL_MARKER in names or _COMPLETE_MARKER in names or legacy_sft:
        return dest
    raise ModelDirError(
        f"{dest} is not empty and was not written by himac-ray (it has no {MODEL_MARKER} file), so it is "
        "not replaced; choose a new or empty output folder")


def cache_dir() -> Path:
    """Where prepared models live: `$HIMAC_RAY_CACHE` or `~/.cache/himac-ray`."""
    return Path(os.environ.get("HIMAC_RAY_CACHE", Path.home() / ".cache" / "himac-ray")).expanduser()


def is_prepared(path: Path) -> bool:
    return (Path(path) / _COMPLETE_MARKER).exists()


def _publish(tmp: Path, dest: Path) -> Path:
    """Mark `tmp` complete and move it to `dest` atomically (a half-written folder is never used)."""
    (tmp / _COMPLETE_MARKER).write_text("ok\n")
    (tmp / MODEL_MARKER).write_text("a model folder written by himac-ray; it may replace it\n")
    try:
        check_replaceable(dest)
    except ModelDirError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
