"""Built-in WebShop: the text-mode WebShop site (Yao et al. 2022) over a seeded synthetic catalog.

Pure Python + gymnasium + numpy (+ rank_bm25, rapidfuzz through the catalog and reward modules);
must not import ray or torch. Mirrors `web_agent_site/envs/web_agent_text_env.py` in
`observation_mode="text"`: the same pages, clickables, action grammar and score (see
`webshop_reward.py`), with products and goals from `webshop_catalog.py` instead of the 1k-product
JSON files, and a BM25 index instead of the Lucene one. The real site is `envs/real/webshop_real.py`.

Deviations from the original (everything else follows docs `envs.md` section 2):

1. The search page lists no `click[search]`: the original lists the Search button as a clickable,
   but clicking it is a no-op. (As in the original, `search[...]` works from every page, although
   `admissible_actions` offers it only where a search bar is shown, like verl-agent.)
2. The action name is matched case-insensitively (`Click[Buy Now]` works); the argument is
   lower-cased as in the original. `(.+)\\[(.+)\\]` is evaluated by an equivalent linear-time parser
   so that a 10,000-character action cannot trigger regex backtracking.
3. The done page reads `Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] x`;
   the original also prints its hidden MTurk/debug fields, which would leak the goal.
4. Products have no reviews (as in the 1k data, whose reviews are not loaded): the Reviews page
   shows only its buttons and every item page says `Rating: N.A.`.
5. Search uses BM25 (rank_bm25) over title, bullets and attributes; hits need a positive score.
6. Product nouns for the reward's `title_score` come from a stop-word heuristic, not spaCy, and the
   score is clipped to [0, 1] (see `webshop_reward.py`).
7. Goals are built like `get_synthetic_goals` (one per product x option combination, one instruction
   and price bound per product), but every product gets a templated instruction ("Find me {attrs}
   {query} with {attr}"), and the goal order comes from the catalog seed, not `random.seed(233)`.
"""

from __future__ import annotations

from typing import Any

from himac_ray.envs.base import TextEnv, normalize_action
from himac_ray.envs.webshop_catalog import Catalog, get_catalog
from himac_ray.envs.webshop_reward import get_reward

PRODUCT_WINDOW = 10
END_BUTTON = "buy now"
NEXT_PAGE = "next >"
PREV_PAGE = "< prev"
BACK_TO_SEARCH = "back to search"
SUB_PAGES = ("description", "features", "reviews")
WIN_REWARD = 10.0
SEP = " [SEP] "


def parse_action(action: str) -> tuple[str, str | None]:
    """`re.match(r'(.+)\\[(.+)\\]', action).groups()`, or (action, None), in linear time."""
    line = action.split("\n", 1)[0]  # '.' matches no newline, so the match lies in the first line
    close = line.rfind("]")
    # Greedy group 1 ends at the last '[' (not at index 0) that leaves >= 1 char before some ']'.
    open_ = line.rfind("[", 1, close - 1) if close >= 3 else -1
    if open_ < 1:
        return action, None
    return line[:open_], line[open_ + 1 : close]


def pick_goal(goal_range: range, options: dict[str, Any] | None, rng) -> int:
    """The goal index of an episode: `options["goal_idx"]` (an index into `goal_range`) or a random one."""
    if options and options.get("goal_idx") is not None:
        local = int(options["goal_idx"])
        if not 0 <= local < len(goal_range):
            raise ValueError(f"goal_idx must be in [0, {len(goal_range)}), got {local}")
    else:
        local = int(rng.integers(len(goal_range)))
    return goal_range[local]


class WebShopEnv(TextEnv):
    """
    ## Description
    Buy a product matching a shopping instruction on a simulated e-commerce site (WebShop, Yao et
    al. 2022). The agent searches, pages through results, opens a product, chooses its options (size,
    color, ...) and clicks Buy Now. The purchase is scored by how well product, options and price
    match the hidden goal. Products and goals come from a seeded synthetic catalog shared by all
    episodes with the same `(num_products, catalog_seed)`; each product x option combination is one
    goal and the first 500 shuffled goals form the test split (as in verl-agent).

    Pages: search -> results (10 per page, at most 50 hits, `Page N (Total results: T)`, `< Prev`
    from page 2, `Next >`, `Back to Search`) -> item (option groups, Title, `Price: $x`,
    `Rating: N.A.`, Description / Features / Reviews / Buy Now) -> sub-pages (`< Prev` returns).

    ## Action Space
    A free-form string parsed as `name[arg]` (`(.+)\\[(.+)\\]`, arg lower-cased):
    - `search[keywords]` (offered on the search page; as in the original it works on every page);
    - `click[x]` for any clickable `x` of the page: `back to search`, `< prev`, `next >`, a product
      ASIN (lower-case), an option value, `description`, `features`, `reviews`, `buy now`.
    Anything else is an invalid no-op (reward 0, `info["action_is_valid"] = False`).
    `info["admissible_actions"]` lists `search[<your query>]` (search page only) and `click[x]` for
    every clickable.

    ## Observation Space
    The visible page text joined with ` [SEP] `, e.g.
    `WebShop [SEP] Instruction: [SEP] Find me ... and price lower than 50.00 dollars [SEP] Search`.

    ## Rewards
    0 until Buy Now. Then the WebShop score
    `r_type * (#attributes matched + #options matched + [price <= bound]) / (#attributes + #options + 1)`
    goes to `info["score"]`, and the reward is 10.0 if the score is 1.0 (`info["won"]`), else 0
    (verl-agent convention).

    ## Episode End
    Terminated on Buy Now. Truncated after `max_steps` steps (invalid ones count).

    ## Arguments
    - `num_products` (2000): size of the synthetic catalog.
    - `catalog_seed` (0): seed of catalog, goals and goal order; built once per process and cached.
    - `split` ("train"): "test" = goals 0-499, "train" = goals 500+ (a catalog with fewer than 1,000
      goals gives the first half to test); `reset(seed=s)` draws a goal of the split with
      `self.np_random`; `reset(options={"goal_idx": i})` picks the i-th goal of the split.
    - `max_steps` (15), `render_mode` (None or "ansi").
    """

    def __init__(
        self,
        *,
        num_products: int = 2000,
        catalog_seed: int = 0,
        split: str = "train",
        max_steps: int = 15,
        render_mode: str | None = None,
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        self.catalog: Catalog = get_catalog(int(num_products), int(catalog_seed))
        self.split = split
        self.goal_range = self.catalog.split_range(split)
        self.goal: dict[str, Any] = {}
        self._reset_session()
        self.goal_idx = -1
        self.score = 0.0
        self.reward_info: dict[str, Any] = {}
        self.done = False
        self._expert_query: str | None = None

    # --- state ------------------------------------------------------------------------------------
    def _reset_session(self) -> None:
        """Back to the search page: forget keywords, page, product and options (SimServer.receive)."""
        self.page_kind = "search"  # search | results | item | sub | done
        self.keywords = ""
        self.hits: list[str] = []
        self.page_num = 1
        self.asin: str | None = None
        self.options: dict[str, str] = {}
        self.sub_page = ""

    def _show_results(self, page_num: int) -> None:
        self.page_kind = "results"
        self.page_num = page_num
        self.asin = None
        self.options = {}  # search_results() clears the chosen options

    def _page_asins(self) -> list[str]:
        start = (self.page_num - 1) * PRODUCT_WINDOW
        return self.hits[start : start + PRODUCT_WINDOW]

    def clickables(self) -> dict[str, tuple[str, str]]:
        """Lower-cased clickable text -> (kind, payload), in page order (buttons, links, options)."""
        kind = self.page_kind
        out: dict[str, tuple[str, str]] = {}
        if kind == "results":
            out[BACK_TO_SEARCH] = ("back", "")
            if self.page_num > 1:
                out[PREV_PAGE] = ("prev", "")
            out[NEXT_PAGE] = ("next", "")
            for asin in self._page_asins():
                out[asin.lower()] = ("product", asin)
        elif kind == "item":
            out[BACK_TO_SEARCH] = ("back", "")
            out[PREV_PAGE] = ("prev", "")
            for name in SUB_PAGES:
                out[name] = ("sub", name)
            out[END_BUTTON] = ("buy", "")
            for group, values in self.catalog.by_asin[self.asin]["options"].items():
                for value in values:
                    out.setdefault(value, ("option", group))
        elif kind == "sub":
            out[BACK_TO_SEARCH] = ("back", "")
            out[PREV_PAGE] = ("prev", "")
        return out

    def admissible_actions(self) -> list[str]:
        actions = ["search[<your query>]"] if self.page_kind == "search" else []
        return actions + [f"click[{c}]" for c in self.clickables()]

    # --- rendering --------------------------------------------------------------------------------
    def observation(self) -> str:
        """The text-mode page: visible strings joined with ' [SEP] '."""
        instruction = ["Instruction:", self.task]
        kind = self.page_kind
        if kind == "search":
            parts = ["WebShop", *instruction, "Search"]
        elif kind == "results":
            parts = [*instruction, "Back to Search", f"Page {self.page_num} (Total results: {len(self.hits)})"]
            if self.page_num > 1:
                parts.append("< Prev")
            parts.append("Next >")
            for asin in self._page_asins():
                product = self.catalog.by_asin[asin]
                parts += [asin, product["Title"], product["Price"]]
        elif kind == "item":
            product = self.catalog.by_asin[self.asin]
            parts = [*instruction, "Back to Search", "< Prev"]
            for group, values in product["options"].items():
                parts += [group, *values]
            parts += [product["Title"], f"Price: {product['Price']}", f"Rating: {product['Rating']}",
                      "Description", "Features", "Reviews", "Buy Now"]
        elif kind == "sub":
            product = self.catalog.by_asin[self.asin]
            parts = [*instruction, "Back to Search", "< Prev"]
            if self.sub_page == "description":
                parts.append(product["Description"])
            elif self.sub_page == "features":
                parts += product["BulletPoints"]
        else:  # done
            parts = ["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", f"{self.score}"]
        return SEP.join(p for p in parts if p)

    def render_text(self) -> str:
        return self.observation()

    # --- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.goal_idx = pick_goal(self.goal_range, options, self.np_random)
        self.goal = self.catalog.goal(self.goal_idx)
        self.task = self.goal["instruction_text"]
        self._reset_session()
        self.num_steps = 0
        self.score = 0.0
        self.reward_info = {}
        self.won = False
        self.done = False
        self._expert_query = None
        return self.observation(), self._make_info(action_is_valid=True, score=0.0)

    def step(self, action: str):
        if self.done:  # stepping a finished episode is a harmless no-op
            return self.observation(), 0.0, True, False, self._make_info(action_is_valid=False, score=self.score)
        terminated = self._apply(normalize_action(action))
        valid = terminated is not None
        terminated = bool(terminated)
        reward = WIN_REWARD if (terminated and self.won) else 0.0
        truncated = self._count_step() and not terminated
        info = self._make_info(action_is_valid=valid, score=self.score)
        return self.observation(), reward, terminated, truncated, info

    def _apply(self, action: str) -> bool | None:
        """Run one action; returns None if it is invalid, else whether the episode ended."""
        name, arg = parse_action(action)
        if arg is None:
            return None
        name, arg = name.lower(), arg.lower()
        if name == "search":
            # The original searches from any page (SimServer has no search-bar check).
            self.keywords = arg
            self.hits = self.catalog.search(self.keywords)
            self._show_results(1)
            return False
        if name != "click":
            return None
        target = self.clickables().get(arg)
        if target is None:
            return None
        kind, payload = target
        if kind == "back":
            self._reset_session()
        elif kind == "next":
            self._show_results(self.page_num + 1)
        elif kind == "prev":
            if self.page_kind == "results":
                self._show_results(self.page_num - 1)
            elif self.page_kind == "item":
                self._show_results(self.page_num)
            else:  # sub-page -> item page, options kept
                self.page_kind = "item"
        elif kind == "product":
            self.page_kind, self.asin = "item", payload
        elif kind == "option":
            self.options[payload] = arg
        elif kind == "sub":
            self.page_kind, self.sub_page = "sub", payload
        elif kind == "buy":
            self._buy()
            return True
        return False

    def _buy(self) -> None:
        product = self.catalog.by_asin[self.asin]
        self.score, self.reward_info = get_reward(
            product, self.goal, price=self.catalog.prices[self.asin], options=dict(self.options)
        )
        self.won = self.score == 1.0
        self.done = True
        self.page_kind = "done"

    # --- expert -----------------------------------------------------------------------------------
    def expert_query(self) -> str:
        """Search keywords that put the goal product on results page 1 (uses the hidden goal)."""
        if self._expert_query is None:
            product = self.catalog.by_asin[self.goal["asin"]]
            base = " ".join([*self.goal["attributes"], self.goal["query"]])
            brand = product["Title"].split(" ", 1)[0].lower()
            candidates = [base, f"{brand} {base}", " ".join(product["Title"].lower().replace(",", "").split())]
            self._expert_query = candidates[-1]
            for query in candidates:
                if self.goal["asin"] in self.catalog.search(query)[:PRODUCT_WINDOW]:
                    self._expert_query = query
                    break
        return self._expert_query

    def expert_actions(self) -> list[str]:
        """Actions that buy the goal product with the goal options from the current page (score 1.0)."""
        if self.done:
            return []
        target = self.goal["asin"]
        wanted = self.goal["goal_options"]
        buy = ["click[buy now]"]
        if self.page_kind in ("item", "sub") and self.asin == target:
            prefix = ["click[< prev]"] if self.page_kind == "sub" else []
            todo = [f"click[{v}]" for k, v in wanted.items() if self.options.get(k) != v]
            return prefix + todo + buy
        choose = [f"click[{v}]" for v in wanted.values()]
        if self.page_kind == "results" and target in self._page_asins():
            return [f"click[{target.lower()}]"] + choose + buy
        prefix = [] if self.page_kind == "search" else ["click[back to search]"]
        return prefix + [f"search[{self.expert_query()}]", f"click[{target.lower()}]"] + choose + buy

    def expert_subgoals(self) -> list[str]:
        """The remaining plan in words, e.g. ["search for ...", "open the product B0...", "select size:
        large", "buy the product"]; navigation-only clicks are folded into the next subgoal, and three
        or more option choices are grouped into one subgoal."""
        subgoals: list[str] = []
        selections: list[str] = []
        wanted = {v: k for k, v in self.goal["goal_options"].items()}
        for action in self.expert_actions():
            name, arg = parse_action(action)
            if name == "search":
                subgoals.append(f"search for {arg}")
            elif arg == self.goal["asin"].lower():
                subgoals.append(f"open the product {self.goal['asin']}")
            elif arg in wanted:
                selections.append(f"{wanted[arg]}: {arg}")
            elif arg == END_BUTTON:
                if len(selections) <= 2:
                    subgoals += [f"select {s}" for s in selections]
                else:
                    subgoals.append("select " + ", ".join(selections[:-1]) + " and " + selections[-1])
                subgoals.append("buy the product")
        return subgoals
