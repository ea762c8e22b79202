"""Co-evolution schedule table."""

import pytest

from himac_ray.coevolution import trainable_level

P, E = "planner", "executor"


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, [P, E, P, E, P, E, P, E]),
        ({"start_with": E}, [E, P, E, P, E, P, E, P]),
        ({"planner_iters": 2, "executor_iters": 3}, [P, P, E, E, E, P, P, E]),
        ({"executor_warmup": 3}, [E, E, E, P, E, P, E, P]),
        ({"executor_warmup": 2, "planner_iters": 1, "executor_iters": 2, "start_with": E},
         [E, E, E, E, P, E, E, P]),
        ({"planner_iters": 0}, [E] * 8),
        ({"executor_iters": 0, "executor_warmup": 1}, [E] + [P] * 7),
        ({"algorithm": "grpo", "start_with": P}, [E] * 8),
        ({"algorithm": "gigpo"}, [E] * 8),
        ({"algorithm": "rloo"}, [E] * 8),
    ],
)
def test_schedule_table(kwargs, expected):
    assert [trainable_level(i, **kwargs) for i in range(8)] == expected


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError):
        trainable_level(-1)
    with pytest.raises(ValueError):
        trainable_level(0, planner_iters=0, executor_iters=0)
    with pytest.raises(ValueError):
        trainable_level(0, start_with="both")
    with pytest.raises(ValueError):
        trainable_level(0, executor_warmup=-1)
