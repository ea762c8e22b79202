"""`Trainer._learn`: which records reach the learner (real 1-rank DeepSpeed learner, tiny model)."""

import dataclasses

import pytest

from himac_ray import metrics as M
from himac_ray.config import load_config
from himac_ray.learner import Learner
from himac_ray.trainer import Trainer
from tests.himac_ray.test_learner import make_learner, make_records


class CountingLearner:
    """A real `Learner` that also remembers how many records each step got."""

    def __init__(self, learner: Learner):
        self.learner, self.sizes = learner, []

    def train_step(self, records, *, trainable):
        self.sizes.append(len(records))
        return self.learner.train_step(records, trainable=trainable)


@pytest.fixture(scope="module")
def learner():
    return CountingLearner(make_learner())


@pytest.mark.parametrize("skip", [True, False])
def test_zero_advantage_records_are_left_out_only_when_asked(tmp_path, learner, skip):
    cfg = load_config(None, [f"run.dir={tmp_path}", f"learner.skip_zero_advantage={str(skip).lower()}"])
    trainer = Trainer(cfg, rollout=None, learner=learner, sync=None, log=print)
    records = make_records(learner.learner.tokenizer, 6)
    records = [dataclasses.replace(r, advantage=0.0 if i < 4 else r.advantage) for i, r in enumerate(records)]
    out = trainer._learn(records, "executor")
    assert learner.sizes[-1] == (2 if skip else 6) == out["learner/records"]
    assert out.get("learner/skipped_zero_advantage", 0) == (4 if skip else 0)
    # nothing left to train: the step still reports (zero) learner figures
    out = trainer._learn([dataclasses.replace(r, advantage=0.0) for r in records], "executor")
    assert (out[M.LEARNER_TOKENS] == 0.0) == skip and out["learner/records"] == (0 if skip else 6)
