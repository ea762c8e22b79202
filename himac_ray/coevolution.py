"""Iterative co-evolution schedule: which level trains at a given training iteration.

Pure Python, no Ray. HiMAC alternates Phase A (macro exploration: only the planner trains,
the executor is frozen and acts as part of the environment) and Phase B (micro adaptation:
only the executor trains under the best blueprint). The result feeds
`advantage.compute_advantages(trainable=...)` and decides which level's weights to sync.
"""

from __future__ import annotations

from himac_ray.names import ROLES


def trainable_level(
    iteration: int,
    *,
    algorithm: str = "himac",
    planner_iters: int = 1,
    executor_iters: int = 1,
    executor_warmup: int = 0,
    start_with: str = "planner",
) -> str:
    """The level trained at `iteration` (0-based): "planner" or "executor".

    HiMAC: iterations 0 .. executor_warmup-1 train the executor (so blueprints are first scored
    by a competent executor). After the warm-up the schedule repeats a cycle of
    `planner_iters` planner iterations and `executor_iters` executor iterations, beginning with
    `start_with`. With the defaults (1, 1, 0, "planner") iterations 0, 2, 4, ... train the
    planner and 1, 3, 5, ... the executor. `planner_iters=0` never trains the planner (and
    `executor_iters=0` never the executor after the warm-up).

    Flat algorithms ("grpo", "gigpo", "rloo") have a single policy whose responses are `act`
    records, so they always return "executor"; the schedule arguments are ignored.

    Args:
        iteration: 0-based training iteration.
        algorithm: `algorithm.name`; only "himac" alternates.
        planner_iters: `coevolution.planner_iters`, planner iterations per cycle.
        executor_iters: `coevolution.executor_iters`, executor iterations per cycle.
        executor_warmup: `coevolution.executor_warmup`, executor-only iterations first.
        start_with: `coevolution.start_with`, the level that opens each cycle.

    Returns:
        "planner" or "executor".
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if algorithm != "himac":
        return "executor"
    if min(planner_iters, executor_iters, executor_warmup) < 0:
        raise ValueError("planner_iters, executor_iters and executor_warmup must be >= 0")
    if planner_iters + executor_iters == 0:
        raise ValueError("planner_iters + executor_iters must be > 0")
    if start_with not in ROLES:
        raise ValueError(f"start_with must be one of {ROLES}, got {start_with!r}")

    if iteration < executor_warmup:
        return "executor"
    pos = (iteration - executor_warmup) % (planner_iters + executor_iters)
    first, second = (
        ("planner", "executor") if start_with == "planner" else ("executor", "planner")
    )
    first_iters = planner_iters if start_with == "planner" else executor_iters
    return first if pos < first_iters else second
