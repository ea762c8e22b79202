"""A killed env-pool or sampler actor mid-rollout is replaced and its groups redone: no record lost or duplicated."""

import threading
import time
from collections import defaultdict

import pytest
import ray

from actors.env_pool import RolloutDispatcher
from actors.sampler import SamplerFleet, SamplerPool, sampler_group
from himac_ray.config import load_config
from himac_ray.generation import SamplingParams
from himac_ray.models import resolve_model
from himac_ray.rollout_call import EpisodeSettings, RolloutCall
from tests.ray_local import private_ray

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def macro_call(seeds: list[int], group_size: int) -> RolloutCall:
    return RolloutCall(seeds=seeds, mode="macro", group_size=group_size, settings=EpisodeSettings(max_subgoals=2),
                       planner_params=SamplingParams(temperature=1.0, max_tokens=24),
                       executor_params=SamplingParams(temperature=0.0, max_tokens=16))


@pytest.fixture(scope="module")
def local_ray():
    with private_ray(4, "rayp"):
        yield


def test_killed_env_pool_is_restarted_and_its_seeds_redone(local_ray):
    cfg = load_config(None, ["model.path=tiny", "model.max_model_len=2048"])
    samplers = sampler_group(str(resolve_model("tiny")), role="both", model=cfg.model, sampler=cfg.sampler).actors
    dispatcher = RolloutDispatcher("himac/Sokoban-v0", {"max_steps": 8}, num_pools=2, log=lambda m: None)
    seeds, group_size = [11, 12, 13, 14], 3
    victim = dispatcher.pools[0]
    killer = threading.Timer(1.0, lambda: ray.kill(victim))
    killer.start()
    start = time.time()
    result = dispatcher(macro_call(seeds, group_size), generator=SamplerPool(samplers))
    killer.join()
    assert dispatcher.restarts == 1, f"the pool was not killed mid-rollout ({time.time() - start:.1f}s)"
    assert len(result.episodes) == len(seeds) * group_size
    by_traj = defaultdict(list)
    for r in result.records:
        by_traj[r.traj_id].append(r)
    assert len(by_traj) == len(seeds) * group_size
    for traj, recs in by_traj.items():
        assert sum(r.level == "plan" for r in recs) == 1, traj
        steps = sorted(r.step for r in recs if r.level == "act")
        assert steps == list(range(len(steps))) and len(steps) >= 1, traj
    assert sorted({r.seed for r in result.records}) == seeds
    assert result.metrics["episodes"] == len(seeds) * group_size


def test_killed_sampler_is_restarted_with_the_current_weights_and_its_slices_redone(local_ray):
    cfg = load_config(None, ["model.path=tiny", "model.max_model_len=2048"])
    fleet = SamplerFleet({"both": str(resolve_model("tiny"))}, model=cfg.model, sampler=cfg.sampler, timeout_s=300)
    pushed = []

    def on_restart(role, index, actor):  # what the coordinator's WeightSync does: push the current version
        ray.get(actor.update_weight_version.remote(5))
        pushed.append((role, index))

    fleet.on_restart = on_restart
    dispatcher = RolloutDispatcher("himac/Sokoban-v0", {"max_steps": 8}, num_pools=2, samplers=fleet, log=print)
    seeds, group_size = [21, 22, 23, 24], 3
    victim = fleet.actors["both"][0]
    killer = threading.Timer(1.0, lambda: ray.kill(victim))
    killer.start()
    try:
        result = dispatcher(macro_call(seeds, group_size))
        killer.join()
        assert result.metrics["sampler_restarts"] == 1, "the sampler was not killed mid-rollout"
        assert pushed == [("both", 0)] and fleet.epochs["both"] == [1]
        assert ray.get(fleet.actors["both"][0].weights_version.remote()) == 5
        assert len(result.episodes) == len(seeds) * group_size
        assert len({r.traj_id for r in result.records}) == len(seeds) * group_size
        assert sum(r.level == "plan" for r in result.records) == len(seeds) * group_size
    finally:
        dispatcher.shutdown()
        fleet.shutdown()
