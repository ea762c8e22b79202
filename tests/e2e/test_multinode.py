"""Scale-out on a simulated multi-node cluster (`ray.cluster_utils.Cluster`, all nodes on this machine).

Samplers and learner are forced onto different nodes by custom resources, so weight sync must
take the cross-node path (Ray object store); after it, sampler logprobs match the learner's
within the single-node tolerance. A node removed mid-rollout: its env pool is restarted on a
remaining node and the iteration completes with every group exactly once.
"""

import threading
from collections import Counter
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.env_pool import RolloutDispatcher
from actors.sampler import SamplerPool
from himac_ray.config import config_to_dict, load_config
from himac_ray.generation import SamplingParams
from himac_ray.models import resolve_model
from himac_ray.rollout_call import EpisodeSettings, RolloutCall

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).parents[2]
SYNC_TOL = 2e-3


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1, resources={"sampler_node": 1})
    c.add_node(num_cpus=1, resources={"learner_node": 1})
    env_nodes = [c.add_node(num_cpus=0, resources={"env_node": 1}) for _ in range(2)]
    ray.init(address=c.address)
    yield c, env_nodes
    ray.shutdown()
    c.shutdown()


def test_samplers_and_learner_on_different_nodes_sync_through_object_store(cluster, tmp_path):
    from actors.coordinator import Coordinator

    cfg = load_config(ROOT / "configs" / "sokoban_tiny.yaml", [
        f"run.dir={tmp_path / 'run'}", "run.iterations=2", "learner.lr=1e-3", "algorithm.entropy_coef=0.01",
        "learner.skip_zero_advantage=false", "model.dtype=float32",  # logprobs compared to SYNC_TOL
        "sampler.resources={sampler_node: 1}", "learner.resources={learner_node: 1}",
        "rollout.env_pool_resources={env_node: 0.1}",
    ])
    coord = Coordinator.remote(config_to_dict(cfg), model_path=str(resolve_model("tiny")))
    placement = ray.get(coord.setup.remote())["placement"]
    node_of = {row["actor"]: row["node"] for row in placement}
    assert node_of["sampler[0]"] != node_of["learner[0]"]
    rows = ray.get(coord.run.remote())
    assert [r["trainable"] for r in rows] == ["planner", "executor"]
    assert all(r["sync_method"] == "object_store" for r in rows)

    from himac_ray.data import read_parquet, table_to_records

    records = [r for r in table_to_records(read_parquet(tmp_path / "run" / "trajectories" / "iter_00001.parquet"))
               if r.level == "act" and r.response_ids][:4]
    sampler = ray.get(coord.sampler_logprobs.remote(records))
    learner = ray.get(coord.learner_logprobs.remote(records))
    assert max(abs(a - b) for s, lrn in zip(sampler, learner) for a, b in zip(s, lrn)) < SYNC_TOL
    ray.get(coord.shutdown.remote())
    ray.kill(coord)


def test_node_removed_mid_rollout_iteration_completes_on_remaining_nodes(cluster):
    from actors.sampler import sampler_group

    c, env_nodes = cluster
    cfg = load_config(ROOT / "configs" / "sokoban_tiny.yaml", ["sampler.resources={sampler_node: 1}"])
    group = sampler_group(str(resolve_model("tiny")), role="both", model=cfg.model, sampler=cfg.sampler)
    samplers = group.actors
    # 40 steps of a random tiny model (every action invalid: no episode ends early) keep the rollout
    # running for seconds even on a fast CPU, so the node goes while its pool is busy
    dispatcher = RolloutDispatcher("himac/Sokoban-v0", {"max_steps": 40}, num_pools=2, log=print,
                                   resources={"env_node": 0.4})
    pool_nodes = ray.get([p.node_id.remote() for p in dispatcher.pools])
    victim = next(n for n in env_nodes if n.node_id == pool_nodes[0])
    remover = threading.Timer(0.3, lambda: c.remove_node(victim))
    remover.start()
    seeds, group_size = [21, 22, 23, 24], 2
    call = RolloutCall(seeds=seeds, mode="macro", group_size=group_size, settings=EpisodeSettings(max_subgoals=2),
                       planner_params=SamplingParams(temperature=1.0, max_tokens=24),
                       executor_params=SamplingParams(temperature=0.0, max_tokens=16))
    result = dispatcher(call, generator=SamplerPool(samplers))
    remover.join()
    assert dispatcher.restarts >= 1
    plans = Counter(r.traj_id for r in result.records if r.level == "plan")
    assert len(plans) == len(seeds) * group_size and set(plans.values()) == {1}
    assert sorted({r.seed for r in result.records}) == seeds
    survivors = ray.get([p.node_id.remote() for p in dispatcher.pools])
    assert victim.node_id not in survivors
    dispatcher.shutdown()
    group.shutdown()
