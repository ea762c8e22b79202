"""Env-pool actors: each runs the batched rollout driver over a slice of the iteration's seeds.

A pool steps its environments in-process and sends every decision round to the samplers as one
batch. `RolloutDispatcher` splits the seeds (whole groups) over the pools. When a pool dies or
hangs, it is killed (by handle), replaced and its slice redone; when a sampler dies or hangs, the
`SamplerFleet` replaces it and every slice that lost it is redone. So the rollout ends with every
group exactly once. An exception inside one env only fails that episode (`run_rollout`); the
dispatcher logs it.
"""

from __future__ import annotations

import time
from typing import Callable

import ray

from actors.sampler import SamplerDiedError
from himac_ray.generation import Generator
from himac_ray.rollout_call import RolloutCall
from himac_ray.rollout_result import ENV_POOL_RESTARTS, SAMPLER_RESTARTS, RolloutResult, merge_results


@ray.remote(num_cpus=0)
class EnvPoolActor:
    def __init__(self, env_id: str, env_kwargs: dict):
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs)

    def rollout(self, call: RolloutCall, *, generator: Generator,
                planner_generator: Generator | None = None) -> RolloutResult:
        return call.run(generator=generator, planner_generator=planner_generator, env_id=self.env_id,
                        env_kwargs=self.env_kwargs)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


class RolloutDispatcher:
    """Callable `dispatcher(call, *, generator=None, planner_generator=None)` running a `RolloutCall`
    over `num_pools` env-pool actors, each on a slice of its seeds, restarting failed ones.

    Args:
        max_restarts: restarts of each pool (and, with `samplers`, of each sampler engine) within
            one call; one more failure raises, naming the actor. The budget starts afresh every call.
        timeout_s: seconds a pool may take for its slice (None or 0: no limit); a hung pool is
            killed and replaced like a dead one.
        samplers: a `SamplerFleet`: the `generator` / `planner_generator` of every slice come from
            it, and a sampler that dies or hangs is replaced through it. Without one, each call
            passes the generators and a sampler failure stops the call.
        on_fault: `on_fault(kind, actor, error)` after each recovered failure (default: log it).
    """

    def __init__(self, env_id: str, env_kwargs: dict, *, num_pools: int, max_restarts: int = 3, log=print,
                 resources: dict | None = None, timeout_s: float | None = None, samplers=None,
                 on_fault: Callable[[str, str, str], None] | None = None):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.resources = dict(resources or {})
        self.max_restarts, self.timeout_s = max_restarts, timeout_s
        self.samplers = samplers
        self.log = log
        self.on_fault = on_fault or (lambda kind, actor, error: None)
        self.pools = [self._new_pool() for _ in range(num_pools)]
        self.restarts = 0
        """pool restarts over the dispatcher's life (the budget is per call)"""

    def shutdown(self) -> None:
        for pool in self.pools:
            ray.kill(pool)
        self.pools = []

    def _new_pool(self):
        return EnvPoolActor.options(resources=self.resources).remote(self.env_id, self.env_kwargs)

    def _replace_pool(self, j: int) -> None:
        try:
            ray.kill(self.pools[j], no_restart=True)  # a hung pool would go on stepping its envs
        except Exception:  # noqa: BLE001  (already gone)
            pass
        self.pools[j] = self._new_pool()
        self.restarts += 1

    def __call__(self, call: RolloutCall, *, generator: Generator | None = None,
                 planner_generator: Generator | None = None) -> RolloutResult:
        seeds = list(call.seeds)
        k = min(len(self.pools), len(seeds))
        slices = [seeds[j::k] for j in range(k)]
        results = [None] * k
        pool_restarts, sampler_restarts = [0] * k, 0
        pending: dict = {}

        def submit(j: int) -> None:
            engines = {"generator": generator, "planner_generator": planner_generator}
            if self.samplers is not None:
                engines = self.samplers.generators()
            pending[self.pools[j].rollout.remote(call.with_seeds(slices[j]), **engines)] = (j, time.monotonic())

        for j in range(k):
            submit(j)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=self._wait_s(pending))
            if not done:  # a pool ran past its deadline
                ref = min(pending, key=lambda r: pending[r][1])
                j, _ = pending.pop(ref)
                error = f"did not finish its rollout of seeds {slices[j]} within {self.timeout_s:.0f}s (run.rollout_timeout_s)"
                self._pool_failed(j, pool_restarts, error)
                submit(j)
                continue
            j, _ = pending.pop(done[0])
            try:
                results[j] = ray.get(done[0])
            except SamplerDiedError as err:  # raised in the pool: a sampler died or hung
                if self.samplers is None:
                    raise
                reason = str(getattr(err, "cause", err))  # the pool's SamplerDiedError, without Ray's traceback
                if self.samplers.replace(err):
                    sampler_restarts += 1
                    self._check_budget(sampler_restarts, self.max_restarts * len(self.samplers.all()),
                                       f"sampler {err.role}[{err.index}]", reason)
                    self.log(f"{reason}; restarted it from the current weights, redoing seeds {slices[j]}")
                    self.on_fault("sampler", f"{err.role}[{err.index}]", reason)
                submit(j)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as err:
                self._pool_failed(j, pool_restarts, f"died ({type(err).__name__})")
                submit(j)
        result = merge_results(results)
        result.metrics[ENV_POOL_RESTARTS] = sum(pool_restarts)
        result.metrics[SAMPLER_RESTARTS] = sampler_restarts
        for f in result.failed:
            self.log(f"env failed: episode {f['traj_id']} (seed {f['seed']}) left out of the batch: {f['error']}")
        return result

    def _wait_s(self, pending: dict) -> float | None:
        if not self.timeout_s:
            return None
        return max(0.0, min(t for _, t in pending.values()) + self.timeout_s - time.monotonic())

    def _pool_failed(self, j: int, pool_restarts: list[int], error: str) -> None:
        pool_restarts[j] += 1
        self._check_budget(pool_restarts[j], self.max_restarts, f"env pool {j}", error)
        self.log(f"env pool {j} {error}; killed and restarted it, redoing its seeds")
        self._replace_pool(j)
        self.on_fault("env_pool", f"env_pool[{j}]", error)

    def _check_budget(self, restarts: int, budget: int, actor: str, error) -> None:
        if restarts > budget:
            raise RuntimeError(f"{actor} keeps failing ({restarts} failures in one rollout, budget {budget}, "
                               f"run.max_restarts): {error}")
