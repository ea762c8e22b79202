"""Play any registered himac-ray env in a terminal: `python -m himac_ray.envs.play himac/Sokoban-v0 --seed 0`.

Shows the observation (for dict observations: the text plus an ASCII rendering of the image, or a
note when the env has none), the admissible actions and the reward; reads one action per line.
`quit` (or end of input) exits, `hint` prints the expert's subgoals when the env has an expert.
No ray/torch imports.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import gymnasium as gym

import himac_ray.envs  # noqa: F401  (registers the envs)


def _show(obs: Any, env: gym.Env, print_fn: Callable[..., Any], task: str) -> None:
    if not isinstance(obs, dict):
        print_fn(str(obs))
        return
    for key, value in obs.items():
        if isinstance(value, str):
            print_fn(f"[{key}: the task, shown above]" if value == task else value)
        else:
            shape = "x".join(str(n) for n in getattr(value, "shape", ()))
            render_text = getattr(env.unwrapped, "render_text", None)
            if callable(render_text):
                print_fn(f"[{key}: {shape} image; ASCII rendering below]")
                print_fn(render_text())
            else:
                print_fn(f"[{key}: {shape} image, not shown]")


def play(env_id: str, seed: int, *, input_fn: Callable[[str], str] = input, print_fn: Callable[..., Any] = print) -> None:
    """Run one episode of `env_id` from `seed` in a read-act loop until it ends or the user types quit.

    Args:
        env_id: a registered id, e.g. "himac/Sokoban-v0".
        seed: the reset seed.
        input_fn: reads one action (default `input`); EOFError/KeyboardInterrupt also quit.
        print_fn: writes one message (default `print`).
    """
    env = gym.make(env_id)
    try:
        obs, info = env.reset(seed=seed)
        print_fn(f"== {env_id} (seed {seed}) ==")
        print_fn(f"Task: {info['task']}")
        total, num_steps = 0.0, 0
        while True:
            _show(obs, env, print_fn, info["task"])
            print_fn("Admissible actions: " + ", ".join(info["admissible_actions"]))
            try:
                action = input_fn("> ")
            except (EOFError, KeyboardInterrupt):
                print_fn("bye")
                return
            if action.strip().lower() == "quit":
                print_fn("bye")
                return
            if action.strip().lower() == "hint":
                expert_subgoals = getattr(env.unwrapped, "expert_subgoals", None)
                hints = expert_subgoals() if callable(expert_subgoals) else []
                print_fn("Hint: " + (" -> ".join(hints) if hints else "no expert plan available"))
                continue
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            num_steps += 1
            valid = "" if info["action_is_valid"] else "  [invalid action]"
            print_fn(f"step {num_steps}: reward {float(reward):+.2f} (total {total:+.2f}){valid}")
            if terminated or truncated:
                _show(obs, env, print_fn, info["task"])
                outcome = "won" if info["won"] else ("out of steps" if truncated else "episode over")
                print_fn(f"Episode finished after {num_steps} steps: {outcome}, return {total:+.2f}")
                return
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_id", nargs="?", default="himac/Sokoban-v0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    play(args.env_id, args.seed)


if __name__ == "__main__":
    main()
