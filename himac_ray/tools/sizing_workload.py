"""GPU sizing, the workload: what one run asks for independent of the hardware (`Workload`, from a
config by `workload_from_config`), the iteration kinds it runs with their generate rounds
(`phases`), and the tokens each generates and trains. Used by `sizing_model` (the cost model). No
Ray, no torch.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

from himac_ray.names import FLAT_ALGORITHMS
from himac_ray.tools.sizing_specs import PROMPT_TOKENS, Assumptions


@dataclass(frozen=True)
class Workload:
    """What one run asks for, independent of the hardware."""

    env_kind: str
    algorithm: str = "himac"
    num_groups: int = 16
    group_size: int = 8
    max_steps: int = 50
    plan_prompt: int = 405
    act_prompt: int = 679
    flat_prompt: int = 582
    plan_cap: int = 512
    act_cap: int = 512
    max_len: int = 2560
    coevolution: bool = True
    planner_iters: int = 1
    executor_iters: int = 1
    kl: bool = True
    zero_stage: int = 2
    micro_batch: int = 8
    mini_batches: int = 1
    dtype_bytes: int = 2
    two_policies: bool = False
    label: str = ""

    @property
    def episodes(self) -> int:
        return self.num_groups * self.group_size


def _env_max_steps(env_id: str, kwargs: dict) -> int:
    if "max_steps" in kwargs:
        return int(kwargs["max_steps"])
    from himac_ray.envs import ENV_IDS

    try:
        module, cls = ENV_IDS[env_id].split(":")
        default = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters["max_steps"].default
        return int(default)
    except Exception:  # noqa: BLE001
        return 50


def workload_from_config(cfg, *, prompt_tokens: tuple[int, int, int] | None = None, label: str = "") -> Workload:
    """The `Workload` of a `TrainConfig` (prompt lengths from `PROMPT_TOKENS` unless given)."""
    from himac_ray.prompts import env_kind

    kind = env_kind(cfg.env.id)
    plan_p, act_p, flat_p = prompt_tokens or PROMPT_TOKENS.get(kind, PROMPT_TOKENS["generic"])
    return Workload(
        env_kind=kind, algorithm=cfg.algorithm.name, num_groups=cfg.algorithm.num_groups,
        group_size=cfg.algorithm.group_size_of("flat"), max_steps=_env_max_steps(cfg.env.id, dict(cfg.env.kwargs)),
        plan_prompt=plan_p, act_prompt=act_p, flat_prompt=flat_p, plan_cap=cfg.rollout.plan_max_tokens,
        act_cap=cfg.rollout.action_max_tokens, max_len=cfg.learner.max_len, coevolution=cfg.coevolution.enabled,
        planner_iters=cfg.coevolution.planner_iters, executor_iters=cfg.coevolution.executor_iters,
        kl=cfg.algorithm.kl_coef > 0, zero_stage=cfg.learner.zero_stage, micro_batch=cfg.learner.micro_batch_size,
        mini_batches=cfg.learner.mini_batches, dtype_bytes=4 if cfg.model.dtype == "float32" else 2,
        two_policies=cfg.model.planner_path is not None, label=label,
    )


@dataclass(frozen=True)
class Round:
    """One batched generate call: `prompts` distinct prompts, `seqs` sequences decoded."""

    prompts: float
    seqs: float
    prompt_len: int
    cap: int


@dataclass
class Phase:
    """One kind of iteration: its generate rounds and what the learner trains."""

    name: str
    weight: float
    rounds: list[Round] = field(default_factory=list)
    plan_records: float = 0.0
    act_records: float = 0.0
    trained_plan: float = 0.0
    trained_act: float = 0.0


def phases(w: Workload, a: Assumptions) -> list[Phase]:
    """The iteration kinds of a run and how often each occurs (weights sum to 1)."""
    eps = w.episodes
    live = eps * a.mean_steps_fraction
    act_records = live * w.max_steps

    def macro() -> tuple[list[Round], float, float]:
        rounds = [Round(w.num_groups, eps, w.plan_prompt, w.plan_cap)]
        rounds += [Round(live, live, w.act_prompt, w.act_cap)] * w.max_steps
        return rounds, eps, act_records

    if w.algorithm in FLAT_ALGORITHMS:
        p = Phase("flat", 1.0, [Round(live, live, w.flat_prompt, w.act_cap)] * w.max_steps)
        p.act_records = p.trained_act = act_records
        return [p]
    if not w.coevolution:
        rounds, pr, ar = macro()
        p = Phase("both", 1.0, rounds, pr, ar, trained_plan=pr, trained_act=ar)
        return [p]
    total = max(w.planner_iters + w.executor_iters, 1)
    rounds, pr, ar = macro()
    planner = Phase("planner", w.planner_iters / total, rounds, pr, ar, trained_plan=pr)
    micro = [Round(live, live, w.act_prompt, w.act_cap)] * w.max_steps
    if a.executor_reuses_blueprints:
        executor = Phase("executor", w.executor_iters / total, micro, 0, act_records, trained_act=act_records)
    else:
        executor = Phase("executor", w.executor_iters / total, rounds + micro, pr, ar + act_records,
                         trained_act=act_records)
    return [p for p in (planner, executor) if p.weight > 0]


def tokens_per_iteration(w: Workload, a: Assumptions | None = None) -> list[dict]:
    """Per iteration kind: records generated, prompt/generated tokens, records and tokens trained."""
    a = a or Assumptions()
    out = []
    for p in phases(w, a):
        gen = sum(r.seqs * r.cap * a.response_fill for r in p.rounds)
        prompt = sum(r.prompts * r.prompt_len for r in p.rounds)
        out.append({
            "phase": p.name, "share": p.weight, "plan_records": p.plan_records, "act_records": p.act_records,
            "prompt_tokens": prompt, "generated_tokens": gen,
            "trained_records": p.trained_plan + p.trained_act,
            "trained_tokens": trained_tokens(w, a, p),
        })
    return out


def trained_tokens(w: Workload, a: Assumptions, p: Phase) -> float:
    """Tokens (prompt + response, capped at `max_len`) the learner trains in one iteration of `p`."""
    plan = min(w.plan_prompt + w.plan_cap * a.response_fill, w.max_len)
    act_prompt = w.flat_prompt if w.algorithm in FLAT_ALGORITHMS else w.act_prompt
    act = min(act_prompt + w.act_cap * a.response_fill, w.max_len)
    return p.trained_plan * plan + p.trained_act * act
