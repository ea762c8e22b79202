"""The common env contract, parametrized over every id in `himac_ray.envs.ENV_IDS`.

Built-in envs: gymnasium's `check_env`, same-seed determinism, the `info` keys, garbage actions.
`*Real-v0` adapters: `gymnasium.make` without their data raises a clear error. Envs whose module
is not written yet are skipped (other engineers own them).
"""

import importlib.util
import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

from himac_ray.envs import ENV_IDS

BUILTIN_IDS = [env_id for env_id in ENV_IDS if not env_id.endswith("Real-v0")]
REAL_IDS = [env_id for env_id in ENV_IDS if env_id.endswith("Real-v0")]

GARBAGE_ACTIONS = {
    "empty": "",
    "long": "x" * 10_000,
    "binary": bytes(range(256)).decode("latin-1"),
    "binary_utf8": bytes(range(256)).decode("utf-8", errors="replace"),
    "unicode": "ünïcødé → 中文 🙂\u200b\u202e",
    "empty_search": "search[]",
    "open_click": "click[",
}


def _require_module(env_id: str) -> None:
    module = ENV_IDS[env_id].split(":")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")


def _make(env_id: str) -> gym.Env:
    _require_module(env_id)
    return gym.make(env_id)


def _check_info(info: dict) -> None:
    assert isinstance(info["won"], bool)
    assert isinstance(info["action_is_valid"], bool)
    assert isinstance(info["task"], str) and info["task"]
    actions = info["admissible_actions"]
    assert isinstance(actions, list) and all(isinstance(a, str) for a in actions)


@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_check_env(env_id):
    env = _make(env_id)
    # `AnyText` (himac_ray.envs.base) accepts any str, so gymnasium's space checks run unmodified.
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_same_seed_same_episode(env_id):
    def rollout() -> list:
        env = _make(env_id)
        obs, info = env.reset(seed=7)
        trace = [(obs, info)]
        rng = np.random.default_rng(0)
        plan = list(env.unwrapped.expert_actions())
        for _ in range(20):
            action = plan.pop(0) if plan else str(rng.choice(info["admissible_actions"] or ["noop"]))
            obs, reward, terminated, truncated, info = env.step(action)
            trace.append((obs, reward, terminated, truncated, info))
            if terminated or truncated:
                obs, info = env.reset(seed=8)
                trace.append((obs, info))
                plan = list(env.unwrapped.expert_actions())
        env.close()
        return trace

    first, second = rollout(), rollout()
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert data_equivalence(a, b)


@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_info_keys_and_expert(env_id):
    env = _make(env_id)
    obs, info = env.reset(seed=3)
    _check_info(info)
    assert info["action_is_valid"] is True and info["won"] is False
    assert info["task"] == env.unwrapped.task
    assert isinstance(env.unwrapped.render_text(), str)
    subgoals = env.unwrapped.expert_subgoals()
    assert 1 <= len(subgoals) and all(isinstance(s, str) and s for s in subgoals)
    actions = env.unwrapped.expert_actions()
    assert actions and all(isinstance(a, str) for a in actions)
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        _check_info(info)
        assert info["action_is_valid"]
        if terminated or truncated:
            break
    assert info["won"] and terminated
    env.close()


@pytest.mark.parametrize("name", list(GARBAGE_ACTIONS))
@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_garbage_actions_are_invalid_not_errors(env_id, name):
    env = _make(env_id)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(GARBAGE_ACTIONS[name])
    _check_info(info)
    assert info["action_is_valid"] is False
    assert not info["won"] and not terminated
    assert isinstance(float(reward), float)
    env.close()


@pytest.mark.parametrize("env_id", REAL_IDS)
def test_real_env_without_data_raises_clear_error(env_id, tmp_path, monkeypatch):
    _require_module(env_id)
    missing = tmp_path / "no-data-here"
    for var in ("ALFWORLD_DATA", "WEBSHOP_DATA", "WEBSHOP_DATA_DIR", "WEBSHOP_PATH"):
        monkeypatch.setenv(var, str(missing))
    monkeypatch.chdir(tmp_path)  # so relative default paths such as data/items_shuffle_1000.json are absent
    with pytest.raises(Exception) as excinfo:
        gym.make(env_id).reset(seed=0)
    message = str(excinfo.value)
    assert re.search(r"data|download|install|not found|missing|path", message, re.IGNORECASE), message


@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_play_loop(env_id):
    from himac_ray.envs.play import play

    _require_module(env_id)
    inputs = iter(["hint", "click[", "quit"])
    lines: list[str] = []
    play(env_id, 0, input_fn=lambda prompt: next(inputs), print_fn=lambda *a: lines.append(" ".join(map(str, a))))
    text = "\n".join(lines)
    assert "Task:" in text and "Admissible actions:" in text and "Hint:" in text
    assert "[invalid action]" in text and lines[-1] == "bye"
