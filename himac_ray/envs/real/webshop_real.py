"""Adapter from a real WebShop checkout (princeton-nlp/WebShop) to the himac-ray common API.

Imports the checkout's `web_agent_site.envs.WebAgentTextEnv` lazily, inside
`WebShopRealEnv.__init__`; importing this module needs only gymnasium. Must not import ray or torch.

Getting the data (about 1 GB of Python dependencies, Java 11 for pyserini, spaCy):

    git clone https://github.com/princeton-nlp/WebShop && cd WebShop
    ./setup.sh -d small            # data/items_*_1000.json, spaCy model, search_engine/indexes_1k
    export WEBSHOP_PATH=$PWD

The adapter uses the original server, search engine and reward, so scores are comparable with
published WebShop / verl-agent numbers (text mode, synthetic goals, `num_products=1000`, goals 0-499
as test and 500+ as train, max 15 steps, reward 10.0 when the score is 1.0).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from gymnasium import error

from himac_ray.envs.base import TextEnv, normalize_action
from himac_ray.envs.webshop import WIN_REWARD, parse_action, pick_goal

NUM_TEST_GOALS = 500
# num_products -> (product file, attribute file, index dir), as in web_agent_site utils/engine.
DATA_LAYOUT = {
    100: ("data/items_shuffle_1000.json", "data/items_ins_v2_1000.json", "search_engine/indexes_100"),
    1000: ("data/items_shuffle_1000.json", "data/items_ins_v2_1000.json", "search_engine/indexes_1k"),
    100000: ("data/items_shuffle.json", "data/items_ins_v2.json", "search_engine/indexes_100k"),
    None: ("data/items_shuffle.json", "data/items_ins_v2.json", "search_engine/indexes"),
}
HOW_TO_GET = (
    "Get them with: git clone https://github.com/princeton-nlp/WebShop && cd WebShop && "
    "./setup.sh -d small (downloads the 1k product files, the spaCy model and builds "
    "search_engine/indexes_1k; needs Java 11), then export WEBSHOP_PATH=/path/to/WebShop "
    "or pass webshop_path=... to the env."
)


class WebShopUnavailableError(error.Error, RuntimeError):
    """The WebShop checkout, its data or its dependencies are missing; the message says how to fix it."""


def missing_paths(root: Path, num_products: int | None = 1000) -> list[Path]:
    """Required files/directories of a WebShop checkout that do not exist under `root`."""
    if num_products not in DATA_LAYOUT:
        raise ValueError(f"num_products must be one of {list(DATA_LAYOUT)}, got {num_products}")
    return [root / rel for rel in DATA_LAYOUT[num_products] if not (root / rel).exists()]


def resolve_webshop_path(webshop_path: str | os.PathLike | None, num_products: int | None = 1000) -> Path:
    """The checkout root from the argument or `$WEBSHOP_PATH`; raises if its data is missing."""
    raw = webshop_path if webshop_path is not None else os.environ.get("WEBSHOP_PATH")
    if not raw:
        required = ", ".join(DATA_LAYOUT[num_products])
        raise WebShopUnavailableError(
            f"No WebShop checkout given: pass webshop_path=... or set WEBSHOP_PATH to a directory "
            f"with {required}. {HOW_TO_GET}"
        )
    root = Path(os.path.expanduser(str(raw))).resolve()
    missing = missing_paths(root, num_products)
    if missing:
        raise WebShopUnavailableError(
            f"WebShop data missing under {root}: " + ", ".join(str(p) for p in missing) + f". {HOW_TO_GET}"
        )
    return root


def _import_text_env(root: Path) -> Any:
    """`web_agent_site.envs.WebAgentTextEnv` from the checkout at `root`."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("web_agent_site.envs").WebAgentTextEnv
    except Exception as exc:  # ImportError, or spaCy/pyserini failing at import time
        raise WebShopUnavailableError(
            f"Could not import web_agent_site.envs.WebAgentTextEnv from {root} "
            f"({exc.__class__.__name__}: {exc}). Install its dependencies with "
            f"`pip install -r {root / 'requirements.txt'}` and `python -m spacy download en_core_web_sm`. "
            f"{HOW_TO_GET}"
        ) from exc


class WebShopRealEnv(TextEnv):
    """The original WebShop text environment behind the himac-ray common API.

    ## Description
    Wraps `web_agent_site.envs.WebAgentTextEnv(observation_mode="text")` of a WebShop checkout:
    its Flask-free simulated server, Lucene (pyserini) search and spaCy-based reward. Each reset
    opens a session on one synthetic goal of the split (`session=goal index`, as verl-agent does).

    ## Action Space
    A free-form string: `search[keywords]` or `click[x]`, passed to WebShop unchanged (after strip).
    It is valid exactly when WebShop would act on it: a search with keywords (WebShop searches from
    any page) or a click on a current clickable other than `search`. Invalid actions do not reach
    WebShop (for which they are no-ops anyway).

    ## Observation Space
    WebShop's text observation (visible page text joined with ` [SEP] `).

    ## Rewards
    10.0 when the purchase scores 1.0, else 0. `info["score"]` holds WebShop's score after Buy Now
    (0 before).

    ## Episode End
    Terminated on Buy Now; truncated after `max_steps` steps.

    ## Arguments
    - `webshop_path`: the checkout root (default `$WEBSHOP_PATH`).
    - `split`: "test" (goals 0-499) or "train" (goals 500+).
    - `num_products` (1000): 100, 1000, 100000 or None (everything); picks data files and index.
    - `max_steps` (15), `render_mode` (None or "ansi").
    - `env_kwargs`: extra keyword arguments for `WebAgentTextEnv`.

    Raises `WebShopUnavailableError` (a RuntimeError) at construction when the checkout, its data
    files, its search index or its dependencies are missing. `info` holds `won`,
    `admissible_actions` (`search[<your query>]` if the page has a search bar, then `click[x]` for
    every clickable except the no-op `search`), `action_is_valid`, `task`, `score` and `goal_idx`.
    """

    def __init__(
        self,
        *,
        webshop_path: str | os.PathLike | None = None,
        split: str = "train",
        num_products: int | None = 1000,
        max_steps: int = 15,
        render_mode: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = resolve_webshop_path(webshop_path, num_products)
        text_env_cls = _import_text_env(self.root)
        kwargs = {
            "observation_mode": "text",
            "file_path": str(self.root / DATA_LAYOUT[num_products][0]),
            "num_products": num_products,
            "human_goals": False,
        }
        kwargs.update(env_kwargs or {})
        try:
            self._env = text_env_cls(**kwargs)
        except (OSError, ImportError) as exc:  # e.g. items_human_ins.json or the spaCy model missing
            raise WebShopUnavailableError(
                f"WebShop at {self.root} failed to start ({exc.__class__.__name__}: {exc}). {HOW_TO_GET}"
            ) from exc
        num_goals = len(self._env.server.goals)
        self.split = split
        n_test = min(NUM_TEST_GOALS, num_goals)
        self.goal_range = range(n_test) if split == "test" else range(n_test, num_goals)
        if not self.goal_range:
            raise ValueError(f"WebShop at {self.root} has {num_goals} goals: none left for split {split!r}")
        self.goal_idx = -1
        self.score = 0.0
        self.done = False
        self._obs = ""
        self._available: dict[str, Any] = {"has_search_bar": False, "clickables": []}

    def admissible_actions(self) -> list[str]:
        actions = ["search[<your query>]"] if self._available["has_search_bar"] else []
        return actions + [f"click[{c}]" for c in self._available["clickables"] if c != "search"]

    def render_text(self) -> str:
        return self._obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.goal_idx = pick_goal(self.goal_range, options, self.np_random)
        self._obs, _ = self._env.reset(session=self.goal_idx)
        self.task = self._env.server.goals[self.goal_idx]["instruction_text"]
        self._available = self._env.get_available_actions()
        self.num_steps = 0
        self.score = 0.0
        self.won = False
        self.done = False
        return self._obs, self._make_info(action_is_valid=True, score=0.0, goal_idx=self.goal_idx)

    def _is_valid(self, action: str) -> bool:
        """WebAgentTextEnv.step's own test of whether it acts on `action`."""
        name, arg = parse_action(action)
        if arg is None:
            return False
        arg = arg.lower()
        if name == "search":
            return arg != ""
        return name == "click" and arg != "search" and arg in self._available["clickables"]

    def step(self, action: str):
        if self.done:
            info = self._make_info(action_is_valid=False, score=self.score, goal_idx=self.goal_idx)
            return self._obs, 0.0, True, False, info
        text = normalize_action(action)
        valid = self._is_valid(text)
        terminated = False
        if valid:
            self._obs, raw_reward, done, _ = self._env.step(text)
            terminated = bool(done)
            if terminated:
                self.score = float(raw_reward)
                self.won = self.score == 1.0
                self.done = True
            self._available = self._env.get_available_actions()
        reward = WIN_REWARD if self.won else 0.0
        truncated = self._count_step() and not terminated
        info = self._make_info(action_is_valid=valid, score=self.score, goal_idx=self.goal_idx)
        return self._obs, reward, terminated, truncated, info

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()
        super().close()
