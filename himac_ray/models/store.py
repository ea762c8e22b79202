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


def save_model_atomic(model, tokenizer_or_processor, path: str | Path, *, files: dict[str, str] | None = None) -> Path:
    """Save a model (safetensors) with its tokenizer or processor, plus `files` (name -> text), as
    the folder `path`, atomically: every model folder himac-ray writes (prepared models, SFT warm
    starts) is published here.

    The folder is written under a temporary sibling name, marked (`.complete`, MODEL_MARKER) and
    renamed into place, the previous folder moved aside first and removed last; so `path` is the
    old folder, absent, or complete, never half-written. Only a folder himac-ray may replace
    (`check_replaceable`) is replaced. On any failure (KeyboardInterrupt included) the temporary
    folder is removed and the previous folder put back.

    Returns:
        `path` as a Path.
    """
    dest = check_replaceable(path)  # before writing gigabytes, not after
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-tmp-", dir=dest.parent))
    old = None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer_or_processor.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        (tmp / _COMPLETE_MARKER).write_text("ok\n")
        (tmp / MODEL_MARKER).write_text("a model folder written by himac-ray; it may replace it\n")
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}-old-", dir=dest.parent))
            os.replace(dest, old / "model")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old / "model", dest)  # put the previous folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return Path(path)
