"""Asynchronous rollout and learning (`run.pipeline: async`): the rules, Ray-free.

One step off: while the learner trains on iteration i's records, iteration i+1's rollout already
runs, in a background thread of the trainer, against the samplers. They hold the weights of
version v (those that rolled out iteration i) until the sync after i's update lands, then v+1: a
sampler actor runs one call at a time, so a sync falls between two generate calls, never inside
one, and each record carries the version that generated it (`Record.weights_version`).

The rules (docs/architecture.md, "Asynchronous pipeline"):

- Staleness: a record trained by the learner at version V has staleness V - weights_version.
  Records staler than `run.max_staleness` are not trained (they are written to Parquet, and the
  group statistics of their advantages include them) and are counted in `async/dropped_stale`.
  With one rollout ahead staleness is at most 1, so the drop is a guard (e.g. weights restored
  from an older checkpoint); `max_staleness: 0` rolls nothing out ahead: async then runs exactly
  as sync (`lookahead`).
- Co-evolution: a rollout ahead is made for one fixed iteration with that iteration's phase
  (`schedule.phase_of`), so groups are only ever generated for the level that trains on them: at a
  switch, the old level's groups are those of its last iteration, trained in it; none is dropped.
  The trainer still trains only records of the trained level (`level_mismatch` is a guard).
- Checkpoint and resume: a checkpoint describes an iteration boundary; a rollout running ahead
  works on a copy of the coordinator state (its extra-seed cursor) and reaches the real state only
  when its iteration takes it (`RolloutAhead.take`). A checkpoint written meanwhile therefore
  holds the cursor from before it, and a resumed run rolls that iteration out again on the same
  env seeds: each seed is trained on once, none skipped.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from himac_ray.data import Record

ASYNC = "async"
"""`run.pipeline` value of the asynchronous mode"""


def lookahead(*, pipeline: str, max_staleness: int) -> int:
    """Iterations rolled out ahead of the learner: 1 in async mode with `max_staleness` >= 1, else 0."""
    return 1 if pipeline == ASYNC and max_staleness >= 1 else 0


def staleness_split(records: Sequence[Record], *, version: int, max_staleness: int) -> tuple[list[Record], list[Record]]:
    """(kept, dropped): records at most `max_staleness` versions behind the learner's `version`."""
    kept, dropped = [], []
    for r in records:
        (kept if version - r.weights_version <= max_staleness else dropped).append(r)
    return kept, dropped


def staleness_histogram(records: Sequence[Record], *, version: int) -> dict[int, int]:
    """staleness (versions behind `version`) -> number of records."""
    return dict(sorted(Counter(version - r.weights_version for r in records).items()))


def level_mismatch(records: Sequence[Record], *, levels: Sequence[str]) -> list[Record]:
    """Records whose level is not among the trained `levels` (must be empty before a learner step)."""
    return [r for r in records if r.level not in levels]


def busy_seconds(intervals: Sequence[tuple[float, float]], *, lo: float, hi: float) -> float:
    """Seconds of the window [lo, hi] covered by the (start, end) `intervals` (they do not overlap)."""
    return sum(max(0.0, min(end, hi) - max(start, lo)) for start, end in intervals)


@dataclass
class Ahead:
    """A rollout running ahead for `iteration`."""

    iteration: int
    state: Any
    """the copy of the coordinator state the rollout works on (its extra-seed cursor advances here)"""
    start_state: Any
    """`state` as it was when the rollout started"""
    started: float
    """time.perf_counter() at the start"""
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    ended: float = 0.0


class RolloutAhead:
    """One rollout at a time in a daemon thread, taken by the iteration it was made for.

    `start(iteration, state, collect)` runs `collect(state_copy)` in the background;
    `take(iteration, state)` waits for it, copies every state field the rollout changed into
    `state` and returns (result, rollout seconds, seconds waited), or None when nothing runs for
    that iteration (a rollout for another iteration is discarded). `discard()` forgets the rollout
    without waiting (its Ray tasks finish on their own; its result and state copy are dropped).
    `spans(now)` gives the (start, end) wall-clock spans of the rollouts taken and of the one ahead.
    """

    def __init__(self):
        self.ahead: Ahead | None = None
        self.intervals: list[tuple[float, float]] = []

    def start(self, *, iteration: int, state: Any, collect: Callable[[Any], Any]) -> None:
        work = Ahead(iteration=iteration, state=dataclasses.replace(state),
                     start_state=dataclasses.replace(state), started=time.perf_counter())

        def run() -> None:
            try:
                work.result = collect(work.state)
            except BaseException as err:  # noqa: BLE001  (re-raised by take in the trainer's thread)
                work.error = err
            finally:
                work.ended = time.perf_counter()
                work.done.set()

        self.ahead = work
        threading.Thread(target=run, name=f"himac-rollout-ahead-{iteration}", daemon=True).start()

    def spans(self, now: float) -> list[tuple[float, float]]:
        """(start, end) of the rollouts taken, plus the one ahead (still running: ends `now`)."""
        work = self.ahead
        if work is None:
            return list(self.intervals)
        return [*self.intervals, (work.started, work.ended if work.done.is_set() else now)]

    def forget_before(self, t: float) -> None:
        """Drop the spans that ended before `t` (keeps `intervals` short)."""
        self.intervals = [s for s in self.intervals if s[1] >= t]

    def wait(self) -> None:
        """Block until the rollout in flight (if any) has finished; it stays to be taken."""
        if self.ahead is not None:
            self.ahead.done.wait()

    def take(self, iteration: int, state: Any) -> tuple[Any, float, float] | None:
        work, self.ahead = self.ahead, None
        if work is None or work.iteration != iteration:
            return None
        start = time.perf_counter()
        work.done.wait()
        waited = time.perf_counter() - start
        self.intervals.append((work.started, work.ended))
        if work.error is not None:
            raise work.error
        for f in dataclasses.fields(state):  # what the rollout changed (e.g. the extra-seed cursor)
            if getattr(work.state, f.name) != getattr(work.start_state, f.name):
                setattr(state, f.name, getattr(work.state, f.name))
        return work.result, work.ended - work.started, waited

    def discard(self) -> None:
        self.ahead = None
