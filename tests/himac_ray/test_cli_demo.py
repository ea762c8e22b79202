"""`himac-ray demo`'s config: the fast CPU recipe plus the demo's short settings, the user's `--set`
after them, and none of them under `--config`. Nothing here starts Ray or vLLM."""

from himac_ray import cli
from himac_ray.config import load_config


def _demo_cfg(argv):
    return cli.demo_config(cli.build_parser().parse_args(["demo", *argv]))


def test_demo_adds_its_short_settings_to_the_recipe():
    recipe, demo = load_config(cli.DEMO_CONFIG), _demo_cfg([])
    assert (demo.sft.train_layers, demo.env.eval_temperature, demo.run.iterations) == (4, 0.0, 2)
    assert demo.learner.warmup_steps == 8 and recipe.learner.warmup_steps == 0
    assert (recipe.sft.train_layers, recipe.run.iterations) != (demo.sft.train_layers, demo.run.iterations)
    assert demo.rollout == recipe.rollout and demo.algorithm == recipe.algorithm


def test_user_overrides_come_after_the_demo_settings():
    cfg = _demo_cfg(["--set", "run.iterations=12", "--set", "run.eval_every=4"])
    assert (cfg.run.iterations, cfg.run.eval_every, cfg.sft.train_layers) == (12, 4, 4)


def test_an_explicit_config_gets_no_demo_settings():
    cfg = _demo_cfg(["--config", str(cli.DEMO_CONFIG)])
    recipe = load_config(cli.DEMO_CONFIG)
    assert cfg == recipe
