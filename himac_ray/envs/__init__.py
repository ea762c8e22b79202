"""Gymnasium text environments for himac-ray; importing this module registers them.

Common API (every env): `reset(seed=...) -> (obs, info)` and `step(action: str) -> (obs, reward,
terminated, truncated, info)`; `info` always holds `won`, `admissible_actions`, `action_is_valid`
and `task`. Built-in envs also expose `expert_actions()` and `expert_subgoals()` on `.unwrapped`.
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = {
    "himac/Sokoban-v0": "himac_ray.envs.sokoban:SokobanTextEnv",
    "himac/SokobanVisual-v0": "himac_ray.envs.sokoban:SokobanVisualEnv",
    "himac/ALFWorld-v0": "himac_ray.envs.alfworld:ALFWorldEnv",
    "himac/WebShop-v0": "himac_ray.envs.webshop:WebShopEnv",
    "himac/ALFWorldReal-v0": "himac_ray.envs.real.alfworld_real:ALFWorldRealEnv",
    "himac/WebShopReal-v0": "himac_ray.envs.real.webshop_real:WebShopRealEnv",
}

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:
        # Envs truncate at their own `max_steps`; no TimeLimit wrapper, so `info` stays uniform.
        register(id=_env_id, entry_point=_entry_point, disable_env_checker=True)
