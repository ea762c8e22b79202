"""Run directory layout and atomic checkpoints.

```
run.dir/
  .himac-ray-run              marker: only a directory holding it is ever moved aside by a new run
  config.json                 the validated config of the run
  config_changes.jsonl        keys changed by `--resume --allow-config-change`, one row per resume
  metrics.jsonl               one row per iteration
  curve.png                   learning curve
  tensorboard/ wandb/ mlruns/ experiment trackers of run.loggers (himac_ray/trackers.py)
  view.html                   `himac-ray view` report (himac_ray/tools/viewer.py)
  trajectories/iter_00003.parquet
  checkpoints/iter_00004/     complete checkpoints only (written as .tmp-*, renamed when done)
    COMPLETE                  marker: present only in fully written checkpoints
    coordinator.json          CoordinatorState
    learner/                  learner state (HF weights as safetensors + optimizer tensors)
```
A checkpoint directory is built under a temporary name, its files and directories fsync'd, marked
COMPLETE and renamed into place, so a crash never leaves a half-written checkpoint that
`latest_checkpoint` picks; older checkpoints are pruned only after that, and an existing complete
checkpoint of the same iteration is kept rather than replaced. Iteration directories sort by number.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from himac_ray.atomic import fsync_dir, fsync_tree
from himac_ray.config import ConfigError, TrainConfig, config_from_dict, config_to_dict

COMPLETE = "COMPLETE"
RUN_MARKER = ".himac-ray-run"
"""written into every run directory himac-ray creates: the licence to move it aside later"""
RUN_FILES = frozenset({
    RUN_MARKER, "config.json", "config_changes.jsonl", "metrics.jsonl", "eval.jsonl", "metrics.jsonl.tmp",
    "eval.jsonl.tmp", "curve.png", "trajectories", "checkpoints", "sft_model", "warm_start.json",
    "tensorboard", "wandb", "mlruns", "view.html",
})
"""everything a run writes: a directory holding only these (and config.json) is a run from before the marker"""


class RunStateError(ValueError):
    """A run directory or checkpoint cannot be used as asked; the message says why and what to do."""


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a directory himac-ray created as a run directory (marker, or an older run's
    layout: config.json and nothing but the files a run writes)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()}
    return RUN_MARKER in names or ("config.json" in names and names <= RUN_FILES)


def check_run_dir(run_dir: str | Path, *, resume: bool) -> None:
    """Raise RunStateError unless a run may start in `run_dir` (nothing is touched).

    A fresh run needs `run_dir` absent, empty, or a himac-ray run directory (which `prepare_run_dir`
    then moves aside); anything else (a file, `.`, `$HOME`, `/`, a project folder) is refused.
    `--resume` continues only in a run directory.
    """
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise RunStateError(f"run.dir={str(run_dir)!r} exists and is not a directory; choose another run.dir")
    if not path.exists() or not any(path.iterdir()):
        return
    if resume and latest_checkpoint(path) is not None:
        return
    if not is_run_dir(path):
        raise RunStateError(
            f"run.dir={str(run_dir)!r} ({path.absolute()}) is not empty and is not a himac-ray run directory "
            f"(no {RUN_MARKER} file), so a new run will not move it aside; choose a new or empty run.dir")
    if path.absolute() in (Path("/"), Path.home().absolute()) or path.resolve() == Path.cwd().resolve():
        raise RunStateError(f"run.dir={str(run_dir)!r} is / , $HOME or the current directory; choose a subdirectory")


def prepare_run_dir(run_dir: str | Path, *, resume: bool) -> Path | None:
    """Create `run_dir` (with its marker) for a run; a fresh run moves an earlier run aside first.

    Call `check_run_dir` before anything else starts. Returns where an earlier run was moved, or None.
    """
    path = Path(run_dir).expanduser()
    check_run_dir(path, resume=resume)
    aside = None
    if not resume and path.exists() and any(path.iterdir()):
        path = path.absolute()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.old-{stamp}")
        n = 1
        while aside.exists():
            aside, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
        path.rename(aside)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / RUN_MARKER
    if not marker.exists():
        marker.write_text("a run directory written by himac-ray; a new run may move it aside\n")
    return aside


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
    group_starts: dict = field(default_factory=dict)
    """`algorithm.group_size: auto`: rollout level -> start size of its groups in the next iteration
    (a level not yet rolled out starts at `algorithm.auto_group.start`)"""

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "CoordinatorState":
        return cls(**json.loads(Path(path).read_text()))


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:05d}"


def checkpoint_iteration(path: str | Path) -> int | None:
    """The iteration of a checkpoint directory `iter_N` (None for other names)."""
    prefix, _, number = Path(path).name.partition("_")
    return int(number) if prefix == "iter" and number.isdigit() else None


def begin_checkpoint(run_dir: str | Path) -> Path:
    """A fresh temporary directory to write a checkpoint into."""
    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))


def commit_checkpoint(tmp: Path, run_dir: str | Path, iteration: int, *, keep: int) -> Path:
    """fsync `tmp`, mark it complete, move it to its final name, and only then prune old checkpoints.

    A loadable complete checkpoint of the same iteration already on disk describes the same state
    (the trainer checkpoints only at iteration boundaries) and is kept: `tmp` is dropped instead of
    deleting a good checkpoint before its replacement is in place. A corrupt one is replaced.
    """
    root = checkpoints_root(run_dir)
    final = root / checkpoint_name(iteration)
    if (final / COMPLETE).exists() and checkpoint_problem(final) is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        fsync_tree(tmp)  # every file and directory is on disk before the marker says so
        with open(tmp / COMPLETE, "w") as f:
            f.write("ok\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # corrupt or incomplete, so never loaded: out of the way (removed as .tmp-*)
            os.replace(final, root / f".tmp-replaced-{final.name}-{os.getpid()}")
        os.replace(tmp, final)
        fsync_dir(root)
        clean_partial_checkpoints(run_dir)
    for old in complete_checkpoints(run_dir)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (by iteration number: 100000 after 99999)."""
    root = checkpoints_root(run_dir)
    if not root.exists():
        return []
    found = [p for p in root.glob("iter_*") if checkpoint_iteration(p) is not None and (p / COMPLETE).exists()]
    return sorted(found, key=checkpoint_iteration)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why a complete checkpoint cannot be loaded (missing / unreadable / truncated files), or None.

    Cheap: reads the JSON files and the safetensors headers, checks that every file the learner
    state names is there and that no weights file is shorter than its header says.
    """
    ckpt = Path(ckpt)
    try:
        CoordinatorState.load(ckpt / "coordinator.json")
        meta = json.loads((ckpt / "learner" / "learner_state.json").read_text())
        for policy in meta["policies"]:
            sub = ckpt / "learner" / policy
            for rank in range(int(meta["world_size"])):
                if not (sub / f"optim_rank{rank}.pt").is_file() or (sub / f"optim_rank{rank}.pt").stat().st_size == 0:
                    return f"{sub / f'optim_rank{rank}.pt'} is missing or empty"
            problem = safetensors_problem(sub / "model.safetensors")
            if problem:
                return problem
        for rank in range(int(meta["world_size"])):
            if not (ckpt / "learner" / f"rng_rank{rank}.pt").is_file():
                return f"{ckpt / 'learner' / f'rng_rank{rank}.pt'} is missing"
    except (OSError, ValueError, TypeError, KeyError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (None when its header and size agree); may raise
    OSError / ValueError for an unreadable file or a header that is not JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path} is truncated (no header)"
        (size,) = struct.unpack("<Q", head)
        if size > os.path.getsize(path) - 8:
            return f"{path} is truncated (header)"
        header = json.loads(f.read(size))
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + size + end > os.path.getsize(path):
        return f"{path} is truncated ({os.path.getsize(path)} bytes, the header needs {8 + size + end})"
    return None


def clean_partial_checkpoints(run_dir: str | Path) -> None:
    """Remove temporary directories left by a crash while checkpointing."""
    for tmp in checkpoints_root(run_dir).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- resume: what may change


RESUME_FREE_KEYS = (
    "run.dir", "run.iterations", "run.checkpoint_every", "run.keep_checkpoints", "run.eval_every",
    "run.save_trajectories", "run.ray_address", "run.dashboard_host", "run.node_ip_address",
    "run.loggers", "run.wandb_project", "run.wandb_mode", "run.mlflow_tracking_uri", "run.mlflow_experiment",
    "run.max_restarts", "run.max_learner_restarts", "run.rollout_timeout_s", "run.generate_timeout_s",
    "run.learner_timeout_s", "run.sync_timeout_s",
)
"""keys a `--resume` may change without `--allow-config-change`: where and how long the run goes on,
not what it learns"""


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in _DICT_VALUED:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_DICT_VALUED = ("env.kwargs", "rollout.env_pool_resources", "sampler.resources", "learner.resources")


def config_changes(saved: dict, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """`key -> (saved value, new value)` for every key a resumed run would change (RESUME_FREE_KEYS
    aside). `saved` is a run's config.json; keys it lacks (an older himac-ray) take their defaults."""
    try:
        old = _flatten(config_to_dict(config_from_dict(saved)))
    except ConfigError:  # written by another himac-ray version: compare what is there
        old = _flatten(saved)
    now = _flatten(config_to_dict(new))
    keys = sorted((set(old) | set(now)) - set(RESUME_FREE_KEYS))
    missing = "<absent>"
    return {k: (old.get(k, missing), now.get(k, missing)) for k in keys if old.get(k, missing) != now.get(k, missing)}
