"""Run directory layout and atomic checkpoints.

```
run.dir/
  config.json                 the validated config of the run
  metrics.jsonl               one row per iteration
  curve.png                   learning curve
  trajectories/iter_00003.parquet
  checkpoints/iter_00004/     complete checkpoints only (written as .tmp-*, renamed when done)
    COMPLETE                  marker: present only in fully written checkpoints
    coordinator.json          CoordinatorState
    learner/                  learner state (HF weights as safetensors + optimizer tensors)
```
A checkpoint directory is built under a temporary name and renamed into place only after every
file is written, so a crash never leaves a half-written checkpoint that `latest_checkpoint` picks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMPLETE = "COMPLETE"


@dataclass
class CoordinatorState:
    """What the coordinator needs to continue a run exactly where it stopped."""

    iteration: int = 0
    """next iteration to run (0-based)"""
    weights_version: int = 0
    """version of the weights the samplers hold"""
    env_steps: int = 0
    """environment steps taken so far (x axis of the learning curve)"""
    rng: dict = field(default_factory=dict)
    """numpy bit-generator state of the coordinator's RNG"""
    trainable: str = ""
    """level trained in the last finished iteration"""
    extra_groups: int = 0
    """extra groups drawn by dynamic sampling so far (the cursor of their env seeds)"""

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "CoordinatorState":
        return cls(**json.loads(Path(path).read_text()))


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:05d}"


def begin_checkpoint(run_dir: str | Path) -> Path:
    """A fresh temporary directory to write a checkpoint into."""
    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))


def commit_checkpoint(tmp: Path, run_dir: str | Path, iteration: int, *, keep: int) -> Path:
    """Mark `tmp` complete, move it to its final name, and prune old checkpoints."""
    (tmp / COMPLETE).write_text("ok\n")
    final = checkpoints_root(run_dir) / checkpoint_name(iteration)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoints_root(run_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.glob("iter_*") if (p / COMPLETE).exists())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def clean_partial_checkpoints(run_dir: str | Path) -> None:
    """Remove temporary directories left by a crash while checkpointing."""
    for tmp in checkpoints_root(run_dir).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
