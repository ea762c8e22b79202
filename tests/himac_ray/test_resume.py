"""Consistent checkpoints and honest resume: the trainer's exit checkpoint, falling back past a
corrupt checkpoint, refusing a changed config, and a new lr reaching the optimizer. In-process
fakes for the learner and sync (no Ray, no DeepSpeed); rollouts are real, scripted, on Sokoban."""

import json
from pathlib import Path

import pytest

from himac_ray.config import ConfigError, config_to_dict, load_config
from himac_ray.generation import ScriptedGenerator
from himac_ray.rollout import run_rollout
from himac_ray.run_state import CoordinatorState, RunStateError, complete_checkpoints, config_changes, latest_checkpoint
from himac_ray.trainer import Trainer
from tests.himac_ray.test_run_state import _fake_learner_checkpoint

SOKOBAN = "himac/Sokoban-v0"
KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 2}


class FakeLearner:
    """Its weights are the number of learner steps taken; checkpoints use the learner's layout."""

    def __init__(self):
        self.weights = 0
        self.loaded: list[str] = []

    def train_step(self, records, *, trainable):
        self.weights += 1
        return {}

    def save_checkpoint(self, directory):
        _fake_learner_checkpoint(Path(directory), self.weights)

    def load_checkpoint(self, directory):
        self.loaded.append(Path(directory).parent.name)
        self.weights = json.loads((Path(directory) / "learner_state.json").read_text())["steps"]


def make_trainer(tmp_path, *overrides, fail_sync_at=None):
    cfg = load_config(None, [f"run.dir={tmp_path}", f"env.kwargs={json.dumps(KWARGS)}", "algorithm.name=grpo",
                             "algorithm.group_size=2", "algorithm.num_groups=1", "rollout.answer_format=action",
                             "run.save_trajectories=false", "run.checkpoint_every=1", "run.keep_checkpoints=1",
                             "env.eval_episodes=2",
                             *overrides])
    gen = ScriptedGenerator(lambda chat, i: "<action>left</action>" if i else "<action>up</action>")

    def rollout(**kw):
        return run_rollout(generator=gen, env_id=SOKOBAN, env_kwargs=KWARGS, prompt_format=cfg.rollout.prompt_format,
                           **kw)

    def sync(*, trainable, version):
        if version == fail_sync_at:
            raise RuntimeError("sampler died during the weight sync")
        return {"seconds": 0.0}

    logs: list[str] = []
    trainer = Trainer(cfg, rollout=rollout, learner=FakeLearner(), sync=sync, log=logs.append)
    return trainer, logs


def _saved_weights(ckpt: Path) -> int:
    return json.loads((ckpt / "learner" / "learner_state.json").read_text())["steps"]


def test_a_failure_after_the_learner_step_never_checkpoints_its_weights(tmp_path):
    trainer, logs = make_trainer(tmp_path, "run.iterations=3", fail_sync_at=2)
    with pytest.raises(RuntimeError, match="sampler died"):
        trainer.run()
    # iteration 1 stepped the learner (weights 2), then its sync failed: the checkpoint of
    # iteration 1 (weights after iteration 0) is the one left, not overwritten or pruned
    assert trainer.learner.weights == 2
    (ckpt,) = complete_checkpoints(tmp_path)
    assert ckpt.name == "iter_00001" and _saved_weights(ckpt) == 1
    assert CoordinatorState.load(ckpt / "coordinator.json").iteration == 1
    assert any("not checkpointing at exit" in line for line in logs)


def test_a_failure_before_the_learner_step_checkpoints_the_iteration_start(tmp_path):
    trainer, _ = make_trainer(tmp_path, "run.iterations=3", "run.checkpoint_every=5")
    rollout = trainer.rollout
    calls = []

    def failing(**kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("env pool died")
        return rollout(**kw)

    trainer.rollout = failing
    with pytest.raises(RuntimeError, match="env pool died"):
        trainer.run()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "iter_00001" and _saved_weights(ckpt) == 1
    assert CoordinatorState.load(ckpt / "coordinator.json").weights_version == 1


def test_resume_skips_a_corrupt_latest_checkpoint_with_a_warning(tmp_path):
    trainer, _ = make_trainer(tmp_path, "run.iterations=3", "run.keep_checkpoints=3")
    trainer.run()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["iter_00001", "iter_00002", "iter_00003"]
    weights = tmp_path / "checkpoints" / "iter_00003" / "learner" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])  # truncated by a crash / a full disk
    resumed, logs = make_trainer(tmp_path, "run.iterations=3", "run.keep_checkpoints=3")
    assert resumed.restore()
    assert resumed.state.iteration == 2 and resumed.learner.weights == 2
    assert resumed.learner.loaded == ["iter_00002"]
    assert any("skipping checkpoint" in line and "iter_00003" in line for line in logs)

    class BrokenLoad(FakeLearner):  # passes the file checks, fails to load
        def load_checkpoint(self, directory):
            if "iter_00002" in str(directory):
                raise ValueError("optimizer state does not match")
            super().load_checkpoint(directory)

    again, logs = make_trainer(tmp_path, "run.iterations=3", "run.keep_checkpoints=3")
    again.learner = BrokenLoad()
    assert again.restore() and again.state.iteration == 1
    assert any("iter_00002" in line and "optimizer state does not match" in line for line in logs)

    (tmp_path / "checkpoints" / "iter_00001" / "coordinator.json").write_text("{")
    last, _ = make_trainer(tmp_path, "run.iterations=3")
    last.learner = BrokenLoad()
    with pytest.raises(RunStateError, match="none of the 3 checkpoint"):
        last.restore()  # checkpoints exist but none loads: never a silent fresh start


# ------------------------------------------------------------------ --resume with a changed config


def test_config_changes_list_the_changed_keys_but_not_run_length():
    base = load_config(None, ["model.path=tiny"])
    saved = config_to_dict(base)
    assert config_changes(saved, load_config(None, ["model.path=tiny", "run.iterations=50"])) == {}
    new = load_config(None, ["model.path=tiny", "learner.lr=3e-5", "algorithm.num_groups=4",
                             "env.kwargs={max_steps: 9}"])
    assert config_changes(saved, new) == {"algorithm.num_groups": (16, 4), "env.kwargs": ({}, {"max_steps": 9}),
                                          "learner.lr": (1e-6, 3e-5)}
    del saved["sft"]["cache"]  # written by an older himac-ray: missing keys take their defaults
    assert config_changes(saved, base) == {}


def test_resume_refuses_a_changed_config_unless_allowed(tmp_path, monkeypatch):
    from himac_ray import train as train_mod

    run = tmp_path / "run"
    args = [f"run.dir={run}", "model.path=tiny"]
    trainer, _ = make_trainer(run, "run.iterations=1")
    trainer.run()
    (run / "config.json").write_text(json.dumps(config_to_dict(load_config(None, args))))
    (run / ".himac-ray-run").write_text("")

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(train_mod, "init_ray", no_ray)
    changed = load_config(None, [*args, "learner.lr=5e-6", "algorithm.name=rloo"])
    with pytest.raises(ConfigError) as err:
        train_mod.train(changed, resume=True)
    assert "algorithm.name: 'himac' -> 'rloo'" in str(err.value) and "learner.lr: 1e-06 -> 5e-06" in str(err.value)
    assert "--allow-config-change" in str(err.value)
    assert json.loads((run / "config.json").read_text())["learner"]["lr"] == 1e-6  # untouched
    changes = train_mod.check_inputs(changed, resume=True, allow_config_change=True)
    train_mod._record_config(changed, run, changes, log=lambda *_: None)
    assert json.loads((run / "config.json").read_text())["learner"]["lr"] == 5e-6
    (row,) = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert row["changed"]["learner.lr"] == [1e-6, 5e-6] and row["checkpoint"] == "iter_00001"


def test_a_restored_optimizer_takes_the_new_lr():
    import torch

    from himac_ray.optim_state import apply_hyperparams

    param = torch.nn.Parameter(torch.ones(2))
    old = torch.optim.AdamW([param], lr=1e-3, weight_decay=0.0)
    param.grad = torch.ones(2)
    old.step()
    new = torch.optim.AdamW([param], lr=5e-4, weight_decay=0.1)
    new.load_state_dict(old.state_dict())  # the saved param groups bring the old lr back
    assert new.param_groups[0]["lr"] == 1e-3
    apply_hyperparams(new.param_groups, lr=5e-4, weight_decay=0.1)
    assert (new.param_groups[0]["lr"], new.param_groups[0]["weight_decay"]) == (5e-4, 0.1)
    assert int(new.state[param]["step"]) == 1  # the moments are kept


# ------------------------------------------------------------------ inputs checked before anything starts


def test_train_refuses_a_foreign_directory_and_a_missing_model_before_touching_anything(tmp_path, monkeypatch):
    from himac_ray import train as train_mod

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(train_mod, "init_ray", no_ray)
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    for run_dir in (home, Path("/")):
        with pytest.raises(RunStateError, match="not a himac-ray run directory"):
            train_mod.train(load_config(None, [f"run.dir={run_dir}", "model.path=tiny"]))
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    # a run directory with an earlier run and a model that is not there: the run stays in place
    run = tmp_path / "run"
    run.mkdir()
    (run / ".himac-ray-run").write_text("")
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n')
    with pytest.raises(ConfigError, match=r"model.path='/no/such/model'"):
        train_mod.train(load_config(None, [f"run.dir={run}", "model.path=/no/such/model"]))
    assert (run / "metrics.jsonl").exists() and not list(tmp_path.glob("run.old-*"))


def test_resume_refuses_when_no_checkpoint_loads_before_anything_starts(tmp_path, monkeypatch):
    from himac_ray import train as train_mod

    monkeypatch.setattr(train_mod, "init_ray", lambda *a, **k: pytest.fail("Ray must not start"))
    trainer, _ = make_trainer(tmp_path, "run.iterations=1")
    trainer.run()
    cfg = load_config(None, [f"run.dir={tmp_path}", "model.path=tiny"])
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    (latest_checkpoint(tmp_path) / "learner" / "learner_state.json").unlink()
    with pytest.raises(RunStateError, match="no checkpoint in .* can be loaded .*iter_00001"):
        train_mod.train(cfg, resume=True)
    assert latest_checkpoint(tmp_path) is not None and not list(tmp_path.parent.glob(f"{tmp_path.name}.old-*"))
