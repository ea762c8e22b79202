"""Config loading: defaults, YAML files, overrides, and clear errors for bad input."""

import dataclasses
import math
from pathlib import Path

import pytest

from himac_ray.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_validate():
    cfg = load_config()
    assert cfg.algorithm.name == "himac" and cfg.algorithm.kl_coef == 0.01


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    load_config(path)


def test_overrides_are_typed():
    cfg = load_config(None, ["algorithm.group_size=4", "learner.lr=1e-5", "env.kwargs={max_steps: 9}",
                             "rollout.subgoal_step_budget=null"])
    assert cfg.algorithm.group_size == 4
    assert cfg.learner.lr == pytest.approx(1e-5)
    assert cfg.env.kwargs == {"max_steps": 9}
    assert cfg.rollout.subgoal_step_budget is None


@pytest.mark.parametrize(
    "override, needle",
    [
        ("algorithm.grup_size=3", "did you mean algorithm.group_size"),
        ("algorithm.name=ppo", "algorithm.name='ppo' is not allowed"),
        ("learner.lr=fast", "learner.lr='fast'"),
        ("learner.zero_stage=1", "learner.zero_stage=1 is not allowed"),
        ("run.iterations=-1", "run.iterations=-1 must be >= 0"),
        ("algorithm.group_size=1", "algorithm.group_size=1 must be >= 2"),
        ("env.id=himac/Chess-v0", "env.id='himac/Chess-v0' is not a himac-ray env"),
        ("rollout.top_p=2", "rollout.top_p=2.0 must be in (0, 1]"),
        ("rollout.sub_done_threshold=1", "rollout.sub_done_threshold=1.0 must be in (0, 1)"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("algorithm=3", "algorithm must be a mapping"),
        ("no_equals_sign", "must look like key.sub=value"),
        ("learner.lr=nan", "learner.lr='nan' must be a finite number"),
        ("algorithm.kl_coef=.inf", "algorithm.kl_coef=inf must be a finite number"),
        ("algorithm.clip_coef_high=-.inf", "algorithm.clip_coef_high=-inf must be a finite number"),
        ("algorithm.gamma=0", "algorithm.gamma=0.0 must be in (0, 1]"),
        ("algorithm.gamma=1.5", "algorithm.gamma=1.5 must be in (0, 1]"),
        ("algorithm.clip_coef=-0.2", "algorithm.clip_coef=-0.2 must be >= 0"),
        ("algorithm.clip_coef_high=-0.1", "algorithm.clip_coef_high=-0.1 must be >= 0"),
        ("learner.planner_lr=-1e-5", "learner.planner_lr=-1e-05 must be >= 0"),
        ("run.seed=-1", "run.seed=-1 must be >= 0"),
        ("sampler.seed=-3", "sampler.seed=-3 must be >= 0"),
        ("env.train_seed_start=-5", "env.train_seed_start=-5 must be >= 0"),
        ("algorithm=", "algorithm must be a mapping (it is a section"),
        ("algorithm=null", "algorithm must be a mapping (it is a section"),
        ("run=[]", "run must be a mapping (it is a section"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algorithm.group_size = 3


@pytest.mark.parametrize("algorithm", ["himac", "grpo", "gigpo", "rloo"])
def test_groups_of_one_are_refused_for_every_group_algorithm(algorithm):
    with pytest.raises(ConfigError, match=f"algorithm.group_size=1 must be >= 2 for algorithm.name='{algorithm}'"):
        load_config(None, [f"algorithm.name={algorithm}", "algorithm.group_size=1"])


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"- model\n- algorithm\n", "must hold a mapping of sections"),
        (b"42\n", "must hold a mapping of sections"),
        (b"just a string\n", "must hold a mapping of sections"),
        (b"algorithm:\n  group_size: 4\n  group_size: 8\n", "duplicate key 'group_size'"),
        (b"run:\n  seed: 1\nrun:\n  seed: 2\n", "duplicate key 'run'"),
        (b"algorithm:\n  name: \xff\xfe himac\n", "is not UTF-8 text"),
        (b"algorithm: ''\n", "algorithm must be a mapping"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)


def test_empty_yaml_section_keeps_the_defaults(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("sft:\n  # nothing changed\nalgorithm:\n  group_size: 4\n")
    cfg = load_config(path)
    assert cfg.sft.episodes == 64 and cfg.algorithm.group_size == 4


def test_sub_done_threshold_biases_only_greedy_hierarchical_executors():
    from himac_ray.schedule import executor_params

    cfg = load_config(None, ["rollout.sub_done_threshold=0.2"])
    ((after, marker, log_odds),) = executor_params(cfg, 0.0).token_bias
    assert (after, marker) == ("</action>", "<sub_done>") and log_odds == pytest.approx(math.log(4))
    assert executor_params(cfg, 1.0).token_bias == ()  # sampled executors sample it at its own probability
    assert executor_params(load_config(None, []), 0.0).token_bias == ()  # 0.5: plain greedy
    for off in (["algorithm.name=grpo"], ["rollout.sub_done=false"]):  # never asked for <sub_done>
        assert executor_params(load_config(None, ["rollout.sub_done_threshold=0.2", *off]), 0.0).token_bias == ()
