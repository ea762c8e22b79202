"""Adam moments kept apart per trainable level when one shared policy trains both levels in alternation.

One optimizer over one model would carry the momentum of a phase's last steps into the next phase: the
executor's first steps after a planner phase keep moving the weights along the planner's gradient, at the
executor's learning rate (and the reverse), so the level that co-evolution holds frozen still moves.
`LevelMoments.switch` stashes the outgoing level's optimizer state (its tensors copied to CPU) and puts the
incoming level's back, or zeros (step 0 included) the first time: a fresh optimizer for a level that has
not trained yet. The first level to train takes the optimizer as it is (fresh, or restored from a
checkpoint written without per-level state). Torch only; it acts on the torch optimizer inside
DeepSpeed's ZeRO-2/3 wrappers (their `.optimizer`), whose state holds the moments of this rank's flat
fp32 partitions, in a stable order.
"""

from __future__ import annotations

import torch


def _states(optimizer) -> list[dict]:
    """Per-parameter state dicts of the torch optimizer inside `optimizer` (DeepSpeed wraps it), in order."""
    return list(getattr(optimizer, "optimizer", optimizer).state.values())


def optimizer_steps(optimizer) -> int:
    """Steps the torch optimizer inside `optimizer` has taken (Adam's `step`; 0 before the first)."""
    states = _states(optimizer)
    step = states[0].get("step", 0) if states else 0
    return int(step.item() if torch.is_tensor(step) else step)


def _copy(value):
    return value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value


class LevelMoments:
    """Which level's moments the optimizer holds (`active`) and the other levels' stashed states."""

    def __init__(self) -> None:
        self.active: str | None = None
        """the level (a `train_step` trainable) whose state the optimizer holds; None before any update"""
        self.stash: dict[str, list[dict]] = {}
        """level -> its per-parameter state dicts (tensors on CPU) while another level trains"""

    def switch(self, optimizer, level: str) -> None:
        """Make `optimizer` hold `level`'s state (no-op when it already does)."""
        if self.active is None:  # nothing trained yet, or a checkpoint without per-level state: adopt it
            self.active = level
            return
        if level == self.active:
            return
        states = _states(optimizer)
        if states:
            self.stash[self.active] = [{k: _copy(v) for k, v in s.items()} for s in states]
        saved = self.stash.pop(level, None)
        if saved is not None and len(saved) != len(states):
            raise RuntimeError(f"stashed optimizer state of {level!r} has {len(saved)} parameters, "
                               f"the optimizer {len(states)}")
        for i, s in enumerate(states):
            for k, v in s.items():
                if not torch.is_tensor(v):
                    s[k] = saved[i][k] if saved is not None else type(v)()
                elif saved is not None:
                    v.copy_(saved[i][k])
                else:
                    v.zero_()
        self.active = level

    def state_dict(self) -> dict:
        return {"active": self.active, "stash": self.stash}

    def load_state_dict(self, state: dict) -> None:
        self.active, self.stash = state["active"], dict(state["stash"])
