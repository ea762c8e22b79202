"""Publishing a file atomically, and fsync of folders. Standard library only; imports nothing from
himac_ray, so any module may use it.

`publish_file` writes a file under a temporary sibling name and renames it into place with
`os.replace`, which is atomic on one POSIX filesystem: a reader, or a run resumed after a crash,
sees the old file or the new one, never a partial one. It fsyncs nothing, so it guards against a
crash of the process, not against a power loss. Checkpoints, which must survive one, are made
durable by `run_state.commit_checkpoint` with `fsync_tree` and `fsync_dir`.

Folders are published by their owners, which keep different things when the swap fails: every
model folder (prepared models, SFT warm starts) by `models.store.save_model_atomic`, which puts
the previous folder back; checkpoints by `run_state.commit_checkpoint` (fsync'd, marked, never
replacing a good one) and, inside one, the learner's part by `learner_io.save_checkpoint`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def publish_file(path: str | os.PathLike, write: Callable[[Path], object], *,
                 tmp: str | os.PathLike | None = None) -> Path:
    """Write the file `path` atomically: `write(tmp)` writes the whole new file at a temporary
    sibling path, then `os.replace` moves it to `path`.

    If `write` or the rename raises (KeyboardInterrupt included), the temporary file is removed, the
    exception propagates, and `path` keeps its old content (or stays absent).

    Args:
        path: the file to publish; its folder must exist.
        write: writes the complete new content to the path it is given.
        tmp: the temporary path (default `.<name>.tmp-<pid>-<random hex>` beside `path`). It must
            be on the same filesystem as `path`. A fixed name suits a file with one writer only.

    Returns:
        `path` as a Path.
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, which makes its entries durable (a new or renamed file inside, for instance)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file under `root`, then every folder bottom-up (their entries), `root` last."""
    dirs = []
    for top, _, files in os.walk(root):
        dirs.append(top)
        for name in files:
            fd = os.open(os.path.join(top, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for top in reversed(dirs):
        fsync_dir(Path(top))
