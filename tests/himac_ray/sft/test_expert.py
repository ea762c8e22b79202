"""Expert demonstrations: format, subgoal alignment, and identity with the rollout's prompts."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from himac_ray import parsers, prompts
from himac_ray.names import MERGE_SEPARATOR
from himac_ray.rollout import run_rollout
from himac_ray.sft.expert import expert_blueprint, expert_demonstrations
from tests.himac_ray.test_rollout import ENVS, SOKOBAN, SOKOBAN2, ExpertGenerator


def _plain(chat):
    """Chat with images replaced by a digest, so chats compare with ==."""
    out = []
    for m in chat:
        content = m["content"]
        if not isinstance(content, str):
            content = [
                {"type": "image", "sha1": hashlib.sha1(np.ascontiguousarray(p["image"]).tobytes()).hexdigest()}
                if p["type"] == "image" else p
                for p in content
            ]
        out.append({"role": m["role"], "content": content})
    return out


def test_expert_blueprint_fits_k():
    assert expert_blueprint(["a", "b", "c"], 5) == ["a", "b", "c"]
    assert expert_blueprint(["a", "b", "c", "d"], 2) == ["a", f"b{MERGE_SEPARATOR}c{MERGE_SEPARATOR}d"]
    assert expert_blueprint(["  a  b ", ""], 1) == ["a b"]
    assert parsers.parse_plan(prompts.format_plan(expert_blueprint(["x" * 400] * 3, 2)), 2)[1]


@pytest.mark.parametrize("env_id, env_kwargs", ENVS)
def test_demonstrations_match_rollout_prompts(env_id, env_kwargs):
    """SFT examples are exactly the prompts the driver builds when the expert plays, and the targets
    are exactly what the scripted expert answered."""
    seeds, K = [0, 1], 3
    examples = expert_demonstrations(env_id, seeds, env_kwargs=env_kwargs, max_subgoals=K, history_length=2)
    gen = ExpertGenerator(K)
    res = run_rollout(
        generator=gen, env_id=env_id, env_kwargs=env_kwargs, seeds=seeds, mode="macro", group_size=1,
        max_subgoals=K, history_length=2, env_factory=gen.factory,
    )
    assert res.metrics["success_rate"] == 1.0
    for seed in seeds:
        ex = [x for x in examples if x["seed"] == seed]
        recs = [r for r in res.records if r.seed == seed]
        assert [x["level"] for x in ex] == ["plan"] + ["act"] * (len(ex) - 1)
        assert [x["messages"][-1]["content"] for x in ex] == [r.response_text for r in recs]
        assert [x["subgoal_index"] for x in ex] == [r.subgoal_index for r in recs]
    # the executor prompts, in the driver's batch order (seed 0 and 1 interleaved by round)
    act_chats = {repr(c) for c in map(_plain, gen.act_chats)}
    assert {repr(_plain(x["messages"][:-1])) for x in examples if x["level"] == "act"} == act_chats


def test_demonstration_format_and_alignment():
    examples = expert_demonstrations(SOKOBAN, range(4), env_kwargs=SOKOBAN2, max_subgoals=4, history_length=1)
    assert examples
    episodes = {}
    for x in examples:
        episodes.setdefault(x["seed"], []).append(x)
        roles = [m["role"] for m in x["messages"]]
        assert roles == ["system", "user", "assistant"]
    for ex in episodes.values():
        plan, acts = ex[0], ex[1:]
        subgoals, valid = parsers.parse_plan(plan["messages"][-1]["content"], 4)
        assert valid and 1 <= len(subgoals) <= 4
        for a, b in itertools.pairwise(acts):
            _, valid, sub_done = parsers.parse_action(a["messages"][-1]["content"], ["up", "down", "left", "right"], env_id=SOKOBAN)
            assert valid
            assert b["subgoal_index"] == a["subgoal_index"] + (sub_done and a["subgoal_index"] < len(subgoals) - 1)
            assert a["messages"][1]["content"].count("[Observation") <= 1
        # the step that solves the room completes the last subgoal
        assert acts[-1]["messages"][-1]["content"].endswith("<sub_done>")
        assert acts[-1]["subgoal_index"] == len(subgoals) - 1
        assert sum(x["messages"][-1]["content"].endswith("<sub_done>") for x in acts) >= len(subgoals)


def test_flat_demonstrations_and_merged_blueprint():
    flat = expert_demonstrations(SOKOBAN, [0], flat=True)
    assert flat and all(x["level"] == "act" and x["subgoal_index"] == -1 for x in flat)
    assert all("<sub_done>" not in x["messages"][-1]["content"] and "blueprint" not in x["messages"][1]["content"] for x in flat)
    one = expert_demonstrations(SOKOBAN, [1], env_kwargs=SOKOBAN2, max_subgoals=1)
    assert parsers.parse_plan(one[0]["messages"][-1]["content"], 1)[0][0].count(MERGE_SEPARATOR) >= 1
    assert {x["subgoal_index"] for x in one[1:]} == {0}
