"""The project's vocabulary, defined once: algorithm names, record levels and policy roles.

A HiMAC run has two policies (roles): the `planner` writes blueprints, whose records are level
`plan`; the `executor` acts, whose records are level `act`. Flat algorithms have one policy and
only `act` records. Imports nothing.
"""

from __future__ import annotations

ALGORITHMS = ("himac", "grpo", "gigpo", "rloo")
"""every `algorithm.name`"""
FLAT_ALGORITHMS = ("grpo", "gigpo", "rloo")
"""single-policy baselines: flat prompts, `act` records only"""

LEVELS = ("plan", "act")
"""record levels (`Record.level`), also the `plan_` / `act_` metric prefixes"""
ROLES = ("planner", "executor")
"""policy roles (`coevolution.trainable_level`, `learner.train_step(trainable=...)`)"""
LEVEL_OF = {"planner": "plan", "executor": "act"}
"""role -> the level of the records it writes"""
ROLE_OF = {level: role for role, level in LEVEL_OF.items()}
"""level -> the role that writes it"""
JOINT = "both"
"""`Learner.train_step(trainable=JOINT)`: both levels of the one shared policy in the same
optimizer steps (the "without co-evolution" ablation)"""
