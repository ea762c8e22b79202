"""Env-pool actors: each runs the batched rollout driver over a slice of the iteration's seeds.

A pool steps its environments in-process and sends every decision round to the samplers as one
batch. `RolloutDispatcher` splits the seeds (whole groups) over the pools; when a pool dies,
it is replaced and its slice is redone, so the iteration ends with every group exactly once.
"""

from __future__ import annotations

import ray

from himac_ray.rollout import merge_results, run_rollout


@ray.remote(num_cpus=0)
class EnvPoolActor:
    def __init__(self, env_id: str, env_kwargs: dict):
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs)

    def rollout(self, **kwargs):
        return run_rollout(env_id=self.env_id, env_kwargs=self.env_kwargs, **kwargs)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


class RolloutDispatcher:
    """Callable `rollout(*, seeds, **kwargs)` over `num_pools` env-pool actors, restarting dead ones."""

    def __init__(self, env_id: str, env_kwargs: dict, *, num_pools: int, max_restarts: int = 3, log=print,
                 resources: dict | None = None):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.resources = dict(resources or {})
        self.max_restarts = max_restarts
        self.log = log
        self.pools = [self._new_pool() for _ in range(num_pools)]
        self.restarts = 0

    def shutdown(self) -> None:
        for pool in self.pools:
            ray.kill(pool)
        self.pools = []

    def _new_pool(self):
        return EnvPoolActor.options(resources=self.resources).remote(self.env_id, self.env_kwargs)

    def __call__(self, *, seeds, **kwargs):
        seeds = list(seeds)
        k = min(len(self.pools), len(seeds))
        slices = [seeds[j::k] for j in range(k)]
        results = [None] * k
        pending = {self.pools[j].rollout.remote(seeds=slices[j], **kwargs): j for j in range(k)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            j = pending.pop(done[0])
            try:
                results[j] = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as err:
                self.restarts += 1
                if self.restarts > self.max_restarts * len(self.pools):
                    raise RuntimeError(f"env pool {j} keeps dying ({self.restarts} restarts): {err}") from err
                self.log(f"env pool {j} died ({type(err).__name__}); restarting it and redoing seeds {slices[j]}")
                self.pools[j] = self._new_pool()
                pending[self.pools[j].rollout.remote(seeds=slices[j], **kwargs)] = j
        return merge_results(results)
