"""Faults and hangs of the Ray layer, with real Ray and stand-in actors (no vLLM, no DeepSpeed):
env-pool restarts budgeted per rollout call, hung pools killed and replaced, sampler failures
handed to the fleet and the slice redone, timeouts naming the actor, shared-memory weight files
removed when a sync fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from actors.env_pool import RolloutDispatcher
from actors.group import ActorGroup, ActorHungError
from actors.sampler import SamplerDiedError, SamplerPool
from actors.weight_sync import WeightSync
from himac_ray.config import load_config
from himac_ray.generation import SamplingParams, ScriptedGenerator
from himac_ray.rollout_call import EpisodeSettings, RolloutCall
from tests.ray_local import private_ray

pytestmark = [pytest.mark.ray]
ENV = "himac/Sokoban-v0"
PLAN = "<plan>\n1. push the box\n</plan>"
ACT = "<think>t</think><action>left</action>"


@pytest.fixture(scope="module")
def local_ray():
    with private_ray(2, "rayf"):
        yield


def scripted() -> ScriptedGenerator:
    return ScriptedGenerator(lambda chat, i: PLAN if "blueprint" in chat[-1]["content"] else ACT)


class HangOnce:
    """A generator whose first call anywhere (marker file absent) sleeps `seconds`."""

    def __init__(self, marker: str, seconds: float = 600.0):
        self.marker, self.seconds, self.inner = marker, seconds, scripted()

    def generate(self, chats, params):
        if not Path(self.marker).exists():
            Path(self.marker).touch()
            time.sleep(self.seconds)
        return self.inner.generate(chats, params)


def roll(dispatcher, seeds, **engines):
    return dispatcher(RolloutCall(seeds=seeds, mode="macro", group_size=2, settings=EpisodeSettings(max_subgoals=2)),
                      **engines)


def check_every_group_once(result, seeds, group_size=2):
    trajs = {r.traj_id for r in result.records}
    assert len(trajs) == len(result.episodes) == len(seeds) * group_size
    assert sorted({r.seed for r in result.records}) == sorted(seeds)
    assert sum(r.level == "plan" for r in result.records) == len(seeds) * group_size


def kill_started(actor) -> None:
    """Kills an actor once it runs (Ray 2.60 can drop a kill sent before the actor is scheduled) and
    returns once it is dead: `ray.kill` only sends the kill, and a call made before it lands would
    still be served by the actor the test means to have lost."""
    ray.get(actor.__ray_ready__.remote(), timeout=300)  # the first actors of a fresh venv start slowly
    ray.kill(actor)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"{actor} still answers 60 s after ray.kill")


def test_pool_restart_budget_is_per_rollout_call(local_ray):
    faults = []
    dispatcher = RolloutDispatcher(ENV, {"max_steps": 3}, num_pools=1, max_restarts=1, log=lambda m: None,
                                   on_fault=lambda *f: faults.append(f))
    try:
        for _ in range(3):  # one death per call: the old per-run budget (1 x 1 pool) failed the 2nd call
            kill_started(dispatcher.pools[0])
            result = roll(dispatcher, [3, 4], generator=scripted())
            check_every_group_once(result, [3, 4])
            assert result.metrics["env_pool_restarts"] == 1
        assert dispatcher.restarts == 3 and [f[0] for f in faults] == ["env_pool"] * 3
        kill_started(dispatcher.pools[0])  # two deaths in one call exceed max_restarts=1
        real_new_pool = dispatcher._new_pool

        def dead_pool():
            pool = real_new_pool()
            kill_started(pool)
            return pool

        dispatcher._new_pool = dead_pool
        with pytest.raises(RuntimeError, match=r"env pool 0 keeps failing \(2 failures in one rollout, budget 1"):
            roll(dispatcher, [3], generator=scripted())
    finally:
        dispatcher.shutdown()


def test_hung_pool_is_killed_and_its_seeds_redone(local_ray, tmp_path):
    dispatcher = RolloutDispatcher(ENV, {"max_steps": 3}, num_pools=2, timeout_s=8, log=print)
    try:
        first = list(dispatcher.pools)
        start = time.monotonic()
        result = roll(dispatcher, [5, 6, 7], generator=HangOnce(str(tmp_path / "hung")))
        assert time.monotonic() - start < 60
        check_every_group_once(result, [5, 6, 7])
        assert result.metrics["env_pool_restarts"] == 1
        hung = [p for p, q in zip(first, dispatcher.pools) if p != q]
        assert len(hung) == 1
        with pytest.raises(ray.exceptions.RayActorError):  # the replaced pool was killed, not left running
            ray.get(hung[0].node_id.remote(), timeout=30)
    finally:
        dispatcher.shutdown()


@ray.remote(num_cpus=0)
class FakeSampler:
    """Stands in for `SamplerActor`: scripted answers, a version, optional sleeps / failures."""

    def __init__(self, sleep_s: float = 0.0, fail_reload: bool = False):
        self.sleep_s, self.fail_reload, self.version, self.loaded = sleep_s, fail_reload, 0, []

    def generate(self, prompts, params, adapter=None):
        time.sleep(self.sleep_s)
        return scripted().generate(prompts, params)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def reload_weights(self, path: str, version: int) -> float:
        time.sleep(self.sleep_s)
        if self.fail_reload:
            raise OSError("disk full")
        assert Path(path).exists()
        self.loaded.append(path)
        self.version = version
        return 0.0

    def weights_version(self) -> int:
        return self.version


class FakeFleet:
    """`SamplerFleet`'s interface over FakeSamplers; `replace` starts a healthy one."""

    def __init__(self, actors):
        self.actors, self.epochs, self.replaced, self.on_restart = {"both": actors}, {"both": [0] * len(actors)}, [], None

    def all(self):
        return self.actors["both"]

    def generators(self):
        return {"generator": SamplerPool(self.actors["both"], role="both", epochs=self.epochs["both"], timeout_s=5),
                "planner_generator": None}

    def replace(self, err):
        if self.epochs[err.role][err.index] != err.epoch:
            return False
        ray.kill(self.actors[err.role][err.index])
        self.actors[err.role][err.index] = actor = FakeSampler.remote()
        self.epochs[err.role][err.index] += 1
        self.replaced.append(err.index)
        if self.on_restart:
            self.on_restart(err.role, err.index, actor)
        return True


def test_dead_sampler_is_replaced_and_every_slice_that_lost_it_redone(local_ray):
    fleet = FakeFleet([FakeSampler.remote(), FakeSampler.remote()])
    restarted = []
    fleet.on_restart = lambda role, i, actor: restarted.append((role, i))
    dispatcher = RolloutDispatcher(ENV, {"max_steps": 3}, num_pools=2, samplers=fleet, log=print)
    try:
        kill_started(fleet.actors["both"][1])
        result = roll(dispatcher, [8, 9, 10, 11])
        check_every_group_once(result, [8, 9, 10, 11])
        assert fleet.replaced == [1] and restarted == [("both", 1)]  # both pools hit it, one restart
        assert result.metrics["sampler_restarts"] == 1
    finally:
        dispatcher.shutdown()


def test_hung_sampler_raises_naming_it(local_ray):
    pool = SamplerPool([FakeSampler.remote(), FakeSampler.remote(sleep_s=30)], role="executor", epochs=[0, 4],
                       timeout_s=2)
    with pytest.raises(SamplerDiedError, match=r"sampler executor\[1\] did not answer a generate call .* within 2s "
                                               r"\(run.generate_timeout_s\)") as info:
        pool.generate([[{"role": "user", "content": "hi"}]] * 2, SamplingParams(max_tokens=4))
    assert (info.value.role, info.value.index, info.value.epoch) == ("executor", 1, 4)


@ray.remote(num_cpus=0)
class SlowRank:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def step(self) -> int:
        time.sleep(self.seconds)
        return 1


def test_group_call_past_its_timeout_names_the_ranks(local_ray):
    group = ActorGroup(SlowRank, 2, cpus_per_actor=0.5, kwargs_for_rank=lambda r: {"seconds": 0 if r == 0 else 30})
    try:
        with pytest.raises(ActorHungError, match=r"rank\(s\) \[1\] of 2 did not answer train_step within 2s "
                                                 r"\(run.learner_timeout_s\)"):
            group.get(group.async_run_method("step"), timeout_s=2, what="train_step", key="run.learner_timeout_s")
    finally:
        group.shutdown()


def test_group_restart_starts_the_rank_again_on_its_bundle_with_its_arguments(local_ray):
    group = ActorGroup(SlowRank, 2, cpus_per_actor=0.5, kwargs_for_rank=lambda r: {"seconds": r})

    def seconds_and_group(actor):
        return ray.get(actor.__ray_call__.remote(
            lambda self: (self.seconds, ray.get_runtime_context().get_placement_group_id())), timeout=60)

    try:
        old = group.actors[1]
        before = seconds_and_group(old)
        new = group.restart(1)
        assert group.actors[1] is new and seconds_and_group(new) == before == (1, group.placement_group.id.hex())
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(old.step.remote(), timeout=60)
    finally:
        group.shutdown()


class FakeLearner:
    def __init__(self):
        self.saved = []

    def node_ids(self):
        return [ray.get_runtime_context().get_node_id()]

    def save_weights(self, path, *, policy):
        Path(path).write_bytes(b"weights")
        self.saved.append(path)
        return Path(path)


def test_failed_sync_leaves_no_shared_memory_file(local_ray):
    learner = FakeLearner()
    fleet = FakeFleet([FakeSampler.remote(fail_reload=True)])
    sync = WeightSync(learner=learner, fleet=fleet, cfg=load_config(None, []), run_id="t3st", log=print)
    with pytest.raises(ray.exceptions.RayTaskError, match="disk full"):
        sync(trainable=None, version=1)
    assert learner.saved and not any(Path(p).exists() for p in learner.saved)


def test_sampler_dead_or_hung_during_sync_is_replaced_and_given_the_weights(local_ray):
    learner = FakeLearner()
    fleet = FakeFleet([FakeSampler.remote(), FakeSampler.remote(sleep_s=60)])
    cfg = load_config(None, ["run.sync_timeout_s=3"])
    sync = WeightSync(learner=learner, fleet=fleet, cfg=cfg, run_id="t3st", log=print)
    kill_started(fleet.actors["both"][0])
    sync(trainable=None, version=2)
    assert sorted(fleet.replaced) == [0, 1]
    assert ray.get([a.weights_version.remote() for a in fleet.all()]) == [2, 2]
    assert not any(Path(p).exists() for p in learner.saved)
    kill_started(fleet.actors["both"][1])  # a sampler restarted during a rollout gets the current weights too
    fleet.replace(SamplerDiedError("gone", "both", 1, fleet.epochs["both"][1]))
    assert ray.get(fleet.actors["both"][1].weights_version.remote()) == 2
