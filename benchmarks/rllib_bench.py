"""Classic RL reference: RLlib PPO with a small CNN on the built-in Sokoban grid (no LLM).

The env is `benchmarks.rllib_sokoban.SokobanGridEnv`: the same `himac/Sokoban-v0` rooms
(6x6, 1 box, 15 steps, same rewards) as (rows, cols, 4) planes. PPO (RLlib new API stack, the
local env runner with 8 vectorized envs, one local learner) trains on seeds from 1000 upward;
every `eval_every` env steps the greedy policy (argmax of the action logits) plays the held-out
seeds 0..N-1 that the LLM evaluations use. Repeated for each RL seed; reports success vs env
steps (mean and spread over seeds) and a random-policy reference on the same held-out seeds.

`SokobanHierEnv` is the two-agent (planner / executor) RLlib `MultiAgentEnv` view of the same
game (`SokobanHierarchy`); `run_hier` trains it with multi-agent PPO (two policies) in full mode.

Usage: `himac-ray bench rllib [--full] [--json]`, `python -m benchmarks.rllib_bench --full`.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from benchmarks.common import RESULTS_DIR, log, machine, opt, script_main
from benchmarks.rllib_sokoban import SokobanGridEnv, SokobanHierarchy

ENV_CONFIG = {"dim_room": (6, 6), "num_boxes": 1, "max_steps": 15, "train_seed_start": 1000}
EVAL_SEEDS = list(range(32))
SIZES = {  # env steps per run, eval every, RL seeds
    "smoke": (2_000, 1_000, [0]),
    "quick": (30_000, 10_000, [0]),
    "full": (60_000, 10_000, [0, 1, 2]),
}
CONV = [[16, 3, 1], [32, 3, 1]]


def _ppo_config(seed: int, env, env_config: dict):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        PPOConfig()
        .environment(env, env_config=env_config)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=8, rollout_fragment_length="auto")
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=1000, minibatch_size=250, num_epochs=4, lr=5e-4, gamma=0.97,
                  lambda_=0.95, entropy_coeff=0.01, vf_loss_coeff=0.5, clip_param=0.2)
        .rl_module(model_config=DefaultModelConfig(conv_filters=CONV, conv_activation="relu", head_fcnet_hiddens=[64],
                                                   vf_share_layers=True))
        .debugging(seed=seed, log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=50)
    )


def greedy_success(module, seeds=EVAL_SEEDS, *, random_policy: bool = False, rng=None) -> float:
    """Held-out success of the greedy (argmax) policy, one episode per seed."""
    import torch

    env = SokobanGridEnv({**ENV_CONFIG, "seeds": list(seeds)})
    wins = 0
    for _ in seeds:
        obs, _ = env.reset()
        done = False
        while not done:
            if random_policy:
                action = int(rng.integers(4))
            else:
                with torch.no_grad():
                    out = module.forward_inference({"obs": torch.as_tensor(obs[None])})
                action = int(out["action_dist_inputs"][0].argmax())
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        wins += bool(info["won"])
    return wins / len(seeds)


def run_ppo(seed: int, budget: int, eval_every: int) -> dict:
    """One PPO run; returns curve points (env steps, held-out success) and timing."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

    algo = _ppo_config(seed, SokobanGridEnv, ENV_CONFIG).build_algo()
    curve = [{"env_steps": 0, "success": greedy_success(algo.get_module())}]
    start, next_eval, steps = time.perf_counter(), eval_every, 0
    train_seconds = 0.0
    try:
        while steps < budget:
            t0 = time.perf_counter()
            result = algo.train()
            train_seconds += time.perf_counter() - t0
            runners = result.get(ENV_RUNNER_RESULTS, {})
            steps = int(runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, steps))
            if steps >= next_eval or steps >= budget:
                success = greedy_success(algo.get_module())
                curve.append({"env_steps": steps, "success": success,
                              "train_return": float(runners.get(EPISODE_RETURN_MEAN, float("nan")))})
                log(f"rllib ppo seed {seed}: {steps} env steps, held-out success {success:.3f}")
                next_eval += eval_every
    finally:
        algo.stop()
    return {"seed": seed, "curve": curve, "seconds": time.perf_counter() - start,
            "env_steps_per_s": steps / train_seconds if train_seconds else 0.0}


# ------------------------------------------------------------------ two-agent view (RLlib MultiAgentEnv)
try:
    from ray.rllib.env.multi_agent_env import MultiAgentEnv
except ImportError:  # pragma: no cover - ray[rllib] is a dependency
    MultiAgentEnv = object


class SokobanHierEnv(MultiAgentEnv):
    """Planner / executor agents over the Sokoban grid (see `SokobanHierarchy`)."""

    def __init__(self, config=None):
        super().__init__()
        self.core = SokobanHierarchy(config)
        self.possible_agents = ["planner", "executor"]
        self.agents = list(self.possible_agents)
        self.observation_spaces = {"planner": self.core.planner_observation_space,
                                   "executor": self.core.executor_observation_space}
        self.action_spaces = {"planner": self.core.planner_action_space, "executor": self.core.executor_action_space}

    def reset(self, *, seed=None, options=None):
        return self.core.reset(seed)

    def step(self, action_dict):
        return self.core.step(action_dict)


def hier_success(algo, seeds=EVAL_SEEDS) -> float:
    import torch

    env = SokobanHierEnv({**ENV_CONFIG, "seeds": list(seeds)})
    modules = {a: algo.get_module(a) for a in ("planner", "executor")}
    wins = 0
    for _ in seeds:
        obs, _ = env.reset()
        info = {}
        while True:
            agent = next(iter(obs))
            with torch.no_grad():
                out = modules[agent].forward_inference({"obs": torch.as_tensor(obs[agent][None])})
            obs, _, term, trunc, infos = env.step({agent: int(out["action_dist_inputs"][0].argmax())})
            info = infos.get("executor", info)
            if term["__all__"] or trunc["__all__"]:
                break
        wins += bool(info.get("won", False))
    return wins / len(seeds)


def run_hier(seed: int, budget: int, eval_every: int) -> dict:
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    model = DefaultModelConfig(conv_filters=CONV, head_fcnet_hiddens=[64], vf_share_layers=True)
    config = (_ppo_config(seed, SokobanHierEnv, ENV_CONFIG)
              .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
              .multi_agent(policies={"planner", "executor"}, policy_mapping_fn=lambda agent_id, *a, **k: agent_id)
              .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={
                  "planner": RLModuleSpec(model_config=model), "executor": RLModuleSpec(model_config=model)})))
    algo = config.build_algo()
    curve = [{"env_steps": 0, "success": hier_success(algo)}]
    start, next_eval, steps = time.perf_counter(), eval_every, 0
    try:
        while steps < budget:
            result = algo.train()
            steps = int(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, steps))
            if steps >= next_eval or steps >= budget:
                curve.append({"env_steps": steps, "success": hier_success(algo)})
                log(f"rllib hierarchical ppo seed {seed}: {steps} env steps (both agents' turns), "
                    f"success {curve[-1]['success']:.3f}")
                next_eval += eval_every
    finally:
        algo.stop()
    return {"seed": seed, "curve": curve, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------ driver
def aggregate(runs: list[dict]) -> list[dict]:
    """Mean / min / max success at each evaluation index across runs."""
    n = min(len(r["curve"]) for r in runs)
    out = []
    for i in range(n):
        pts = [r["curve"][i] for r in runs]
        vals = [p["success"] for p in pts]
        out.append({"env_steps": int(statistics.mean(p["env_steps"] for p in pts)), "mean": statistics.mean(vals),
                    "min": min(vals), "max": max(vals), "std": statistics.pstdev(vals)})
    return out


def run(args=None, quick: bool = True) -> dict:
    """`himac-ray bench rllib`: RLlib PPO + small CNN on the Sokoban grid; option `size`."""
    import ray

    from himac_ray.train import start_local_head

    size = opt(args, "size", "quick" if quick else "full")
    budget, eval_every, seeds = SIZES[size]
    out = {"bench": "rllib", "size": size, "machine": machine(), "env": ENV_CONFIG, "eval_seeds": len(EVAL_SEEDS),
           "budget_env_steps": budget, "conv_filters": CONV}
    rng = np.random.default_rng(0)
    out["random_policy_success"] = statistics.mean(greedy_success(None, random_policy=True, rng=rng) for _ in range(5))
    started = not ray.is_initialized()
    if started:
        start_local_head(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out["runs"] = [run_ppo(s, budget, eval_every) for s in seeds]
        out["curve"] = aggregate(out["runs"])
        out["final_success_mean"] = out["curve"][-1]["mean"]
        out["env_steps_per_s"] = statistics.mean(r["env_steps_per_s"] for r in out["runs"])
        if size == "full" or opt(args, "hier", False):
            out["hier_runs"] = [run_hier(s, budget // 2, eval_every) for s in seeds[:1]]
    finally:
        if started:
            ray.shutdown()
    if size != "smoke":
        plot(out, RESULTS_DIR / f"rllib_ppo_sokoban_{size}.png")
    print(format_table(out), flush=True)
    return out


def format_table(out: dict) -> str:
    lines = [f"RLlib PPO (CNN {out['conv_filters']}) on Sokoban 6x6/1 box, held-out success on {out['eval_seeds']} seeds "
             f"(random policy: {out['random_policy_success']:.3f})", f"  {'env steps':>10} {'mean':>6} {'min':>6} {'max':>6}"]
    for p in out["curve"]:
        lines.append(f"  {p['env_steps']:>10} {p['mean']:>6.3f} {p['min']:>6.3f} {p['max']:>6.3f}")
    lines.append(f"  PPO sampling+training speed: {out['env_steps_per_s']:.0f} env steps/s")
    for r in out.get("hier_runs", []):
        lines.append(f"  two-agent (planner/executor) PPO, seed {r['seed']}: final success {r['curve'][-1]['success']:.3f} "
                     f"after {r['curve'][-1]['env_steps']} agent steps")
    return "\n".join(lines)


def plot(out: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["env_steps"] for p in out["curve"]]
    ax.plot(xs, [p["mean"] for p in out["curve"]], label=f"PPO + CNN (mean of {len(out['runs'])} seeds)")
    ax.fill_between(xs, [p["min"] for p in out["curve"]], [p["max"] for p in out["curve"]], alpha=0.2)
    ax.axhline(out["random_policy_success"], color="gray", ls="--", label="random policy")
    ax.set_xlabel("env steps")
    ax.set_ylabel("held-out success")
    ax.set_ylim(0, 1)
    ax.set_title("RLlib PPO on Sokoban 6x6 / 1 box")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n")[0], hier={"action": "store_true", "help": "also train the two-agent view"})
