"""The project's vocabulary, defined once: algorithm names, record levels and policy roles.

A HiMAC run has two policies (roles): the `planner` writes blueprints, whose records are level
`plan`; the `executor` acts, whose records are level `act`. Flat algorithms have one policy and
only `act` records. A rollout runs in one of three modes (macro, micro, flat). Imports nothing.
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
MODES = ("macro", "micro", "flat")
"""rollout modes (`run_rollout(mode=...)`): macro groups of blueprints, micro groups of executions
of the best blueprint z*, flat groups of single-policy episodes; also the `groups/<mode>_*` metrics"""
JOINT = "both"
"""`Learner.train_step(trainable=JOINT)`: both levels of the one shared policy in the same
optimizer steps (the "without co-evolution" ablation)"""
