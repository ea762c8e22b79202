"""himac-ray: HiMAC (hierarchical macro-micro RL) for long-horizon LLM agents.

The `himac_ray` package is pure Python (torch, numpy, gymnasium): it never imports Ray, except
in the entry points `cli.py` / `train.py`, which import `actors/` lazily.
"""

__version__ = "0.1.0"
