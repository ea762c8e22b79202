"""Planner-only demonstrations (`sft.plan_episodes`): the same plan example an executed expert
episode starts with, for seeds whose expert has a plan."""

from himac_ray import parsers, prompts
from himac_ray.sft.expert import expert_demonstrations, expert_plans

SOKOBAN = "himac/Sokoban-v0"
KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 10}
FMT = prompts.PromptFormat(style="compact", answer="action")


def test_plan_only_examples_match_the_executed_episodes_plan():
    seeds = range(5000, 5012)
    plans = expert_plans(SOKOBAN, seeds, env_kwargs=KWARGS, max_subgoals=3, prompt_format=FMT)
    episodes = expert_demonstrations(SOKOBAN, seeds, env_kwargs=KWARGS, max_subgoals=3, prompt_format=FMT)
    first = [x for x in episodes if x["level"] == "plan"]
    assert len(plans) == len(first) == 12
    for plan, ref in zip(plans, first):
        assert plan["messages"] == ref["messages"] and plan["level"] == "plan" and plan["seed"] == ref["seed"]
        blueprint, valid = parsers.parse_plan(plan["messages"][-1]["content"], 3)
        assert valid and 1 <= len(blueprint) <= 3
