"""docs/configuration.md is generated from the config field docstrings and cannot drift."""

import dataclasses
from pathlib import Path

from himac_ray.config import TrainConfig
from himac_ray.tools import config_docs

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_every_field_has_a_docstring():
    assert config_docs.missing_docstrings() == []


def test_every_section_has_an_intro():
    for name, cls in config_docs.sections():
        assert config_docs.class_docstring(cls) or config_docs.SECTIONS.get(name), name
    assert set(config_docs.SECTIONS) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_configuration_md_is_current():
    expected = config_docs.render_config_docs()
    assert DOC.read_text() == expected, (
        "docs/configuration.md is stale: run `python -m himac_ray.tools.config_docs > docs/configuration.md`"
    )


def test_every_key_type_and_default_is_documented():
    text = config_docs.render_config_docs()
    for name, cls in config_docs.sections():
        for f in dataclasses.fields(cls):
            row = next(line for line in text.splitlines() if line.startswith(f"| `{name}.{f.name}` |"))
            cells = [c.strip() for c in row.strip("|").split(" | ")]
            assert len(cells) == 5, row
            assert cells[1].startswith("`") and cells[1] != "``", row
            assert cells[2] == f"`{config_docs.format_value(config_docs.default_of(f))}`"
            assert cells[4], row
    # a nested section's own keys get rows too
    assert "| `algorithm.auto_group.max` | `int` | `16` |" in text


def test_field_docstrings_read_from_source():
    docs = config_docs.field_docstrings(config_docs.sections()[0][1])  # ModelConfig
    assert docs["path"].startswith("policy model")
    assert config_docs.allowed_of("learner.zero_stage") == "2 | 3"
    assert config_docs.allowed_of("algorithm.group_size") == ">= 2 or auto"
    assert config_docs.format_value(None) == "null" and config_docs.format_value(True) == "true"


def test_check_mode(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    assert config_docs.main(["--check", str(stale)]) == 1
    stale.write_text(config_docs.render_config_docs())
    assert config_docs.main(["--check", str(stale)]) == 0
    assert config_docs.main([]) == 0
    assert capsys.readouterr().out.startswith("# Configuration reference")


def test_new_environment_example_runs():
    """The example env in docs/new_environment.md follows the common env contract."""
    import re

    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from himac_ray.envs.base import INFO_KEYS

    text = (DOC.parent / "new_environment.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class CorridorEnv" in b)
    namespace: dict = {}
    exec(compile(code, "new_environment.md", "exec"), namespace)  # noqa: S102
    env_id = "himac-docs/Corridor-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=namespace["CorridorEnv"], disable_env_checker=True)
    check_env(gym.make(env_id).unwrapped)
    for seed in range(5):
        env = gym.make(env_id)
        _, info = env.reset(seed=seed)
        assert set(INFO_KEYS) <= set(info) and env.unwrapped.expert_subgoals()
        for action in env.unwrapped.expert_actions():
            _, reward, terminated, truncated, info = env.step(action)
        assert info["won"] and terminated and reward == 10.0
        env.reset(seed=seed)
        _, _, _, _, info = env.step("\x00" * 10_000)
        assert info["action_is_valid"] is False


def test_skip_zero_advantage_states_its_real_effect():
    """Leaving zero-advantage records out rescales the kept tokens' gradient, not only the KL."""
    row = next(line for line in DOC.read_text().splitlines() if "`learner.skip_zero_advantage`" in line)
    assert "only drops their KL" not in row
    assert "normalised over the kept records only" in row and "scaled up" in row
    algorithm = (DOC.parent / "algorithm.md").read_text()
    assert "skip_zero_advantage" in algorithm and "T_all / T_kept" in algorithm
