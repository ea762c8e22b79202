"""ActorGroup: N ranked Ray actors of one class in one placement group, plus call fan-out.

Generic: the learner's DeepSpeed ranks (`actors/learner.py`) and each role's vLLM sampler engines
(`actors/sampler.py`) are ActorGroups. Knows nothing about DeepSpeed or vLLM.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


class ActorDiedError(RuntimeError):
    """An actor of a group died (or became unreachable) while a call was in flight."""

    def __init__(self, message: str, *, rank: int):
        super().__init__(message)
        self.rank = rank


class ActorHungError(ActorDiedError):
    """An actor of a group did not answer a call within its timeout (it counts as failed)."""


class ActorGroup:
    """`num_actors` actors of `actor_cls`, actor i on bundle i of one placement group.

    Contract (from OpenRLHF's `RayActorGroup`): methods named `async_*` return a list of
    `ObjectRef`s, one per actor in rank order; every other method blocks until all actors
    answered. `get` raises `ActorDiedError` naming the first rank found dead, without waiting
    for the others (a rank blocked in a collective with a dead peer would never answer).

    Args:
        actor_cls: a `@ray.remote` class.
        num_actors: actors (ranks) to start.
        cpus_per_actor / gpus_per_actor: Ray resources of each bundle and actor.
        strategy: placement strategy of the bundles (PACK keeps ranks on as few nodes as possible).
        resources: extra (custom) resources of each bundle, e.g. {"learner_node": 1}.
        kwargs_for_rank: constructor keyword arguments of actor i (default: none); also those of
            its replacement (`restart`).
        ready_timeout_s: how long to wait for the placement group to be scheduled (then
            TimeoutError, the placement group removed).
        capture_child_tasks: whether tasks and actors the actors start are placed in the group
            (None: as the caller's own setting).
    """

    def __init__(
        self,
        actor_cls,
        num_actors: int,
        *,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        strategy: str = "PACK",
        resources: dict | None = None,
        kwargs_for_rank: Callable[[int], dict] | None = None,
        ready_timeout_s: float = 600.0,
        capture_child_tasks: bool | None = True,
    ):
        bundle = {"CPU": cpus_per_actor, **({"GPU": gpus_per_actor} if gpus_per_actor else {}), **(resources or {})}
        self.placement_group = placement_group([dict(bundle) for _ in range(num_actors)], strategy=strategy)
        ready, _ = ray.wait([self.placement_group.ready()], timeout=ready_timeout_s)
        if not ready:
            remove_placement_group(self.placement_group)
            raise TimeoutError(
                f"placement group of {num_actors} x {bundle} ({strategy}) not scheduled within "
                f"{ready_timeout_s:.0f}s; cluster resources: {ray.cluster_resources()}")
        self.actor_cls, self.cpus_per_actor, self.gpus_per_actor = actor_cls, cpus_per_actor, gpus_per_actor
        self.kwargs_for_rank, self.capture_child_tasks = kwargs_for_rank, capture_child_tasks
        self.actors = [self._start(i) for i in range(num_actors)]

    def _start(self, rank: int):
        """A new actor `rank` on bundle `rank` of the placement group."""
        return self.actor_cls.options(
            num_cpus=self.cpus_per_actor,
            num_gpus=self.gpus_per_actor,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group,
                placement_group_bundle_index=rank,
                placement_group_capture_child_tasks=self.capture_child_tasks,
            ),
        ).remote(**(self.kwargs_for_rank(rank) if self.kwargs_for_rank else {}))

    def __len__(self) -> int:
        return len(self.actors)

    def restart(self, rank: int):
        """Kill actor `rank` by handle (a hung one still holds its bundle) and start a new one with
        the same constructor arguments on the same bundle; returns it without waiting for it."""
        try:
            ray.kill(self.actors[rank], no_restart=True)
        except Exception:  # noqa: BLE001  (already gone)
            pass
        self.actors[rank] = self._start(rank)
        return self.actors[rank]

    def async_run_method(self, method: str, *args, **kwargs) -> list[ray.ObjectRef]:
        """Call `method(*args, **kwargs)` on every actor; one ObjectRef per rank."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def get(self, refs: Sequence[ray.ObjectRef], *, timeout_s: float | None = None, what: str = "a call",
            key: str = "") -> list[Any]:
        """Results of one ref per rank, in rank order; a dead actor raises ActorDiedError at once,
        ranks that did not all answer within `timeout_s` (None or 0: no limit) ActorHungError
        naming them, `what` was called and the config `key` of the timeout."""
        rank_of = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        deadline = time.monotonic() + timeout_s if timeout_s else None
        while pending:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not ready:
                late = sorted(rank_of[r] for r in pending)
                raise ActorHungError(f"rank(s) {late} of {len(refs)} did not answer {what} within {timeout_s:.0f}s"
                                     + (f" ({key})" if key else ""), rank=late[0])
            ref = ready[0]
            rank = rank_of[ref]
            try:
                results[rank] = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                raise ActorDiedError(f"rank {rank} of {len(refs)} died: {err}", rank=rank) from err
        return results

    def shutdown(self) -> None:
        """Kill every actor and release the placement group (safe to call twice)."""
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None
