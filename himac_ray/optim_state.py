"""Optimizer state in checkpoints: DeepSpeed's optimizer state as plain tensors and Python values
(loadable with `torch.load(..., weights_only=True)`), and the config's hyperparameters put back
after a restore. No Ray; torch only.
"""

from __future__ import annotations

import enum

import torch

_NOT_SAVED = "__himac_ray_not_saved__"
"""marker for an object that is not a tensor or plain value (restored from the live state instead)"""


def to_plain(obj):
    """Tensors and plain Python values kept (tensors cloned to CPU); any other object -> marker."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, enum.Enum):
        return _NOT_SAVED
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return (tuple if isinstance(obj, tuple) else list)(to_plain(v) for v in obj)
    return _NOT_SAVED


def from_plain(saved, template):
    """Inverse of `to_plain`: markers take the value at the same place in `template`."""
    if isinstance(saved, str) and saved == _NOT_SAVED:
        return template
    if isinstance(saved, dict):
        get = template.get if isinstance(template, dict) else (lambda k: None)
        return {k: from_plain(v, get(k)) for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        same = isinstance(template, (list, tuple)) and len(template) == len(saved)
        return type(saved)(from_plain(v, template[i] if same else None) for i, v in enumerate(saved))
    return saved


def apply_hyperparams(param_groups: list[dict], *, lr: float, weight_decay: float) -> None:
    """Set every optimizer param group's lr and weight decay (after restoring an optimizer state)."""
    for group in param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay
