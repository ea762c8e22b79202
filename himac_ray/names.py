"""The project's vocabulary, defined once: algorithm names, record levels, policy roles, fault counters and
the blueprint-line separator.

A HiMAC run has two policies (roles): the `planner` writes blueprints, whose records are level
`plan`; the `executor` acts, whose records are level `act`. Flat algorithms have one policy and
only `act` records. A rollout runs in one of three modes (macro, micro, flat). Imports nothing.
"""

from __future__ import annotations

ALGORITHMS = ("himac", "grpo", "gigpo", "rloo")
"""every `algorithm.name`"""
FLAT_ALGORITHMS = ("grpo", "gigpo", "rloo")
"""single-policy baselines: flat prompts, `act` records only"""

GROUP_GROWTH = ("tied", "unsolved")
"""`algorithm.auto_group.grow`: which groups grow (`adaptive_groups.wants_growth`)"""
STEP_WEIGHTINGS = ("uniform", "trajectory")
"""`algorithm.step_weighting`: how an act record's advantage weighs in the loss (`advantage.weight_by_trajectory`)"""
LEVEL_MOMENTS = ("per_level", "shared")
"""`learner.level_moments`: one shared policy's Adam state per trainable level, or one for both (`level_moments`)"""

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
EPISODES_FAILED = "episodes_failed"
"""rollout metric: episodes left out because their env raised"""
ENV_POOL_RESTARTS = "env_pool_restarts"
SAMPLER_RESTARTS = "sampler_restarts"
"""(both) rollout metrics: actors replaced during the rollout, set by the Ray rollout service
(actors/env_pool.py); with EPISODES_FAILED the fault counters `metrics.FAULTS` reports"""
MERGE_SEPARATOR = "; then "
"""joins the expert subgoals merged into the last blueprint line (`sft.expert.expert_blueprint`);
`sokoban_text.subgoal_cell` reads the last part of such a line"""
