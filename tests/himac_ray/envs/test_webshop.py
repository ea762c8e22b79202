"""Built-in WebShop (catalog, page flow, reward, expert) and the real-WebShop adapter's errors and mapping.

The env-contract checks shared by every env (check_env, determinism, garbage actions) also run in
test_envs_common.py; this file covers what is specific to WebShop.
"""

import re
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest

import himac_ray.envs  # noqa: F401  (registers the env ids)
from himac_ray.envs.real.webshop_real import WebShopRealEnv, WebShopUnavailableError
from himac_ray.envs.webshop import WebShopEnv, parse_action
from himac_ray.envs.webshop_catalog import (
    NUM_TEST_GOALS,
    PRICE_RANGE,
    SEARCH_RETURN_N,
    Catalog,
    get_catalog,
)
from himac_ray.envs.webshop_reward import get_reward, normalize_color, noun_tokens


@pytest.fixture(scope="module")
def env():
    return WebShopEnv()


def _run(env, actions):
    out = None
    for action in actions:
        out = env.step(action)
    return out


# --- catalog ------------------------------------------------------------------------------------
def test_catalog_fields_and_goals():
    catalog = get_catalog(2000, 0)
    assert len(catalog.products) == 2000 and len(catalog.by_asin) == 2000
    for p in catalog.products:
        assert len(p["asin"]) <= 10 and p["asin"].isupper()
        assert re.fullmatch(r"\$\d+\.\d\d( - \$\d+\.\d\d)?", p["pricing"])
        assert len(p["product_category"].split(" › ")) >= 3
        assert 2 <= len(p["options"]) <= 3 and all(len(v) >= 2 for v in p["options"].values())
        assert all(v == v.lower() for vs in p["options"].values() for v in vs)
        text = (p["Title"] + " " + " ".join(p["BulletPoints"])).lower()
        assert all(a in text for a in p["Attributes"])
        lo, hi = p["price_range"][0], p["price_range"][-1]
        assert lo <= catalog.prices[p["asin"]] <= hi
    assert len(catalog.split_range("test")) == NUM_TEST_GOALS
    assert catalog.split_range("train").start == NUM_TEST_GOALS
    for idx in range(0, catalog.num_goals, 997):
        goal = catalog.goal(idx)
        price = catalog.prices[goal["asin"]]
        above = [x for x in PRICE_RANGE if x > price]
        assert goal["price_upper"] in above[1:4]  # the larger of 2 of the next 4 multiples of 10
        opts = ", and ".join(f"{k}: {v}" for k, v in goal["goal_options"].items())
        assert goal["instruction_text"].endswith(f" with {opts}, and price lower than {goal['price_upper']:.2f} dollars")
        assert list(goal["goal_options"]) == sorted(goal["goal_options"])


def test_catalog_is_seeded_and_fast():
    start = time.perf_counter()
    a = Catalog(2000, 5)
    assert time.perf_counter() - start < 5.0  # catalog + goals + BM25 index
    b = Catalog(2000, 5)
    assert a.products == b.products and a.goal(123) == b.goal(123) and a.search("tea") == b.search("tea")
    assert Catalog(200, 6).products[0] != a.products[0]
    assert get_catalog(2000, 0) is get_catalog(2000, 0)


def test_search_returns_at_most_50_ranked_hits():
    catalog = get_catalog(2000, 0)
    hits = catalog.search("machine wash cotton jersey men's t-shirts")
    assert len(hits) == SEARCH_RETURN_N
    assert catalog.by_asin[hits[0]]["query"] == "men's t-shirts"
    assert catalog.search("zzzz qqqq") == [] and catalog.search("  ") == []


# --- page flow ----------------------------------------------------------------------------------
def test_page_flow(env):
    obs, info = env.reset(seed=0)
    assert obs == f"WebShop [SEP] Instruction: [SEP] {info['task']} [SEP] Search"
    assert info["admissible_actions"] == ["search[<your query>]"] and info["score"] == 0.0

    obs, reward, terminated, _truncated, info = env.step("search[men's t-shirts cotton]")
    assert info["action_is_valid"] and reward == 0.0 and not terminated
    parts = obs.split(" [SEP] ")
    assert parts[:5] == ["Instruction:", info["task"], "Back to Search", "Page 1 (Total results: 50)", "Next >"]
    assert "click[< prev]" not in info["admissible_actions"]
    first_page = env.unwrapped._page_asins()
    assert len(first_page) == 10 and f"click[{first_page[0].lower()}]" in info["admissible_actions"]
    assert parts[5:8] == [first_page[0], env.catalog.by_asin[first_page[0]]["Title"], env.catalog.by_asin[first_page[0]]["Price"]]

    obs, *_, info = env.step("click[next >]")
    assert "Page 2 (Total results: 50) [SEP] < Prev [SEP] Next >" in obs and "click[< prev]" in info["admissible_actions"]
    second_page = env._page_asins()
    assert second_page and not set(second_page) & set(first_page)
    obs, *_ = env.step("click[< prev]")
    assert "Page 1 (Total results: 50)" in obs and env._page_asins() == first_page
    for _ in range(5):  # past the 50 hits the page is empty, as in the original
        obs, *_, info = env.step("click[next >]")
    assert "Page 6 (Total results: 50) [SEP] < Prev [SEP] Next >" in obs and env._page_asins() == []

    _run(env, ["click[< prev]"] * 5)
    assert env.page_num == 1 and env._page_asins() == first_page
    asin = env._page_asins()[0]
    product = env.catalog.by_asin[asin]
    obs, *_, info = env.step(f"click[{asin.lower()}]")
    expected = ["Instruction:", env.task, "Back to Search", "< Prev"]
    for group, values in product["options"].items():
        expected += [group, *values]
    expected += [product["Title"], f"Price: {product['Price']}", "Rating: N.A.", "Description", "Features", "Reviews", "Buy Now"]
    assert obs.split(" [SEP] ") == expected
    group, values = next(iter(product["options"].items()))
    assert info["admissible_actions"][:6] == [
        "click[back to search]", "click[< prev]", "click[description]", "click[features]", "click[reviews]", "click[buy now]",
    ]
    obs2, *_, info = env.step(f"click[{values[1]}]")
    assert info["action_is_valid"] and obs2 == obs and env.options == {group: values[1]}

    obs, *_, info = env.step("click[description]")
    assert obs.endswith("Back to Search [SEP] < Prev [SEP] " + product["Description"])
    assert info["admissible_actions"] == ["click[back to search]", "click[< prev]"]
    obs, *_ = env.step("click[< prev]")
    assert obs == obs2 and env.options == {group: values[1]}  # back on the item page, options kept
    obs, *_ = env.step("click[features]")
    assert obs.endswith(" [SEP] ".join(["< Prev", *product["BulletPoints"]]))
    _run(env, ["click[< prev]", "click[reviews]"])
    assert env.observation().endswith("Back to Search [SEP] < Prev")

    _run(env, ["click[< prev]", "click[< prev]"])  # item -> results page 1, options cleared
    assert env.page_kind == "results" and env.page_num == 1 and env.options == {}
    obs, *_, info = env.step("click[back to search]")
    assert obs.startswith("WebShop [SEP] Instruction:") and env.keywords == "" and env.asin is None


def test_search_works_from_any_page_like_the_original(env):
    env.reset(seed=1)
    _run(env, ["search[granola bars]", "click[next >]"])
    obs, *_, info = env.step("search[ground coffee]")
    assert info["action_is_valid"] and env.page_num == 1 and "Page 1 (Total results: 50)" in obs
    assert "search[<your query>]" not in info["admissible_actions"]


def test_buy_scores_and_ends_episode(env):
    env.reset(seed=2)
    wanted_asin = env.goal["asin"]
    actions = env.expert_actions()
    assert actions[-1] == "click[buy now]" and actions[1] == f"click[{wanted_asin.lower()}]"
    # Buy the goal product without choosing its options: partial score, reward 0.
    _run(env, actions[:2])
    obs, reward, terminated, truncated, info = env.step("click[buy now]")
    n_attr, n_opt = len(env.goal["attributes"]), len(env.goal["goal_options"])
    assert terminated and not truncated and reward == 0.0 and not info["won"]
    assert info["score"] == pytest.approx((n_attr + 1) / (n_attr + n_opt + 1))
    assert obs == f"Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] {info['score']}"
    assert info["admissible_actions"] == []
    obs2, reward, terminated, truncated, info = env.step("click[buy now]")  # after the end: no-op
    assert obs2 == obs and reward == 0.0 and terminated and not info["action_is_valid"]


def test_truncation_at_max_steps():
    env = gym.make("himac/WebShop-v0", max_steps=3)
    env.reset(seed=0)
    flags = [env.step("click[nothing]")[3] for _ in range(3)]
    assert flags == [False, False, True]
    env.reset(seed=0)
    flags = [env.step(a)[2:4] for a in ["search[beef jerky]", "click[next >]", "click[next >]"]]
    assert flags[-1] == (False, True)


# --- actions ------------------------------------------------------------------------------------
GARBAGE = ["", "x" * 10_000, "[" * 10_000, "a[" * 5_000, bytes(range(256)).decode("latin-1"),
           "ünïcødé → 中文 🙂\u200b", "search[]", "click[", "click[]", "click[nonexistent]", "buy now",
           "click[buy now]", "click[search]", "foo[bar]", "click]x[", "\n\n", None, b"\xff\xfe", 12345]


@pytest.mark.parametrize("page_actions", [[], ["search[phone case]"], ["search[phone case]", "click[< prev]"]])
def test_garbage_actions_are_invalid_no_ops(env, page_actions):
    env.reset(seed=4)
    _run(env, page_actions)
    before = env.observation()
    for action in GARBAGE:
        start = time.perf_counter()
        obs, reward, terminated, _truncated, info = env.step(action)
        assert time.perf_counter() - start < 0.05
        assert not info["action_is_valid"], action
        assert obs == before and reward == 0.0 and not terminated and info["score"] == 0.0
        env.num_steps = 0


def test_parse_action_matches_the_original_regex():
    pattern = re.compile(r"(.+)\[(.+)\]")
    rng = np.random.default_rng(0)
    alphabet = list("ab[]\n ")
    for _ in range(3000):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 12))))
        m = pattern.match(text)
        assert parse_action(text) == (m.groups() if m else (text, None)), repr(text)
    assert parse_action("click[< prev]") == ("click", "< prev")
    assert parse_action("search[a [b] c]") == ("search[a ", "b] c")  # greedy group 1, as the regex


def test_action_name_is_case_insensitive_and_arg_lowercased(env):
    env.reset(seed=5)
    *_, info = env.step("  Search[Herbal TEA]  ")
    assert info["action_is_valid"] and env.keywords == "herbal tea"
    *_, info = env.step(f"Click[{env._page_asins()[0]}]")
    assert info["action_is_valid"] and env.page_kind == "item"


# --- expert -------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "test"])
def test_expert_scores_one_on_200_seeds(split):
    env = gym.make("himac/WebShop-v0", split=split)
    for seed in range(200 if split == "train" else 50):
        env.reset(seed=seed)
        actions = env.unwrapped.expert_actions()
        assert env.unwrapped.goal["asin"] in env.unwrapped.catalog.search(actions[0][7:-1])[:10]
        for action in actions:
            _obs, reward, terminated, _truncated, info = env.step(action)
            assert info["action_is_valid"], (seed, action)
        assert terminated and info["won"] and info["score"] == 1.0 and reward == 10.0, seed


def test_expert_from_the_middle_of_an_episode(env):
    rng = np.random.default_rng(0)
    for seed in range(30):
        env.reset(seed=seed)
        for _ in range(int(rng.integers(1, 5))):
            choices = [a for a in env.admissible_actions() if a != "click[buy now]"]
            env.step("search[beef jerky original]" if choices[0].startswith("search") else str(rng.choice(choices)))
        *_, info = _run(env, env.expert_actions())
        assert info["won"], seed
        assert env.expert_actions() == [] and env.expert_subgoals() == []


def test_expert_subgoals(env):
    env.reset(seed=0)
    subgoals = env.expert_subgoals()
    assert 3 <= len(subgoals) <= 5
    assert subgoals[0] == f"search for {env.expert_query()}"
    assert subgoals[1] == f"open the product {env.goal['asin']}"
    assert subgoals[-1] == "buy the product"
    # Three option groups are folded into one subgoal.
    catalog = env.catalog
    idx = next(i for i in env.goal_range if len(catalog.goal(i)["goal_options"]) == 3)
    env.reset(options={"goal_idx": idx - env.goal_range.start})
    (k1, v1), (k2, v2), (k3, v3) = env.goal["goal_options"].items()
    assert env.expert_subgoals()[2:] == [f"select {k1}: {v1}, {k2}: {v2} and {k3}: {v3}", "buy the product"]
    # Mid-episode, only what is left.
    _run(env, env.expert_actions()[:3])
    assert env.expert_subgoals() == [f"select {k2}: {v2}", f"select {k3}: {v3}", "buy the product"]


# --- determinism, speed -------------------------------------------------------------------------
def test_same_seed_same_episode_and_goal_idx():
    a, b = WebShopEnv(split="test"), WebShopEnv(split="test")
    for seed in (0, 1, 99):
        assert a.reset(seed=seed) == b.reset(seed=seed)
    trace = []
    for env in (a, b):
        env.reset(seed=11)
        rng = np.random.default_rng(3)
        steps = [env.step("search[bookshelf easy assembly]")]
        for _ in range(12):
            steps.append(env.step(str(rng.choice(env.admissible_actions() or ["noop"]))))
        trace.append(steps)
    assert trace[0] == trace[1]
    tasks = {WebShopEnv(split="test").reset(options={"goal_idx": i})[1]["task"] for i in range(20)}
    assert len(tasks) == 20
    with pytest.raises(ValueError):
        a.reset(options={"goal_idx": NUM_TEST_GOALS})


def test_click_throughput_and_reset_speed(env):
    env.reset(seed=0)
    _run(env, env.expert_actions()[:2])
    clicks = ["click[description]", "click[< prev]", "click[features]", "click[< prev]", "click[< prev]",
              f"click[{env.asin.lower()}]"]
    n = 3000
    start = time.perf_counter()
    for i in range(n):
        *_, info = env.step(clicks[i % len(clicks)])
        env.num_steps = 0
    rate = n / (time.perf_counter() - start)
    assert info["action_is_valid"] and rate >= 1000, rate
    start = time.perf_counter()
    for seed in range(200):
        env.reset(seed=seed)
    assert (time.perf_counter() - start) / 200 < 0.01


# --- reward -------------------------------------------------------------------------------------
PRODUCT = {
    "Title": "Acme Men's Cotton T-Shirt, Machine Wash",
    "name": "Acme Men's Cotton T-Shirt, Machine Wash",
    "BulletPoints": ["Relaxed fit for every day", "Navy trim"],
    "Description": "A soft tee with a tagless collar.",
    "Attributes": ["machine wash", "relaxed fit"],
    "query": "men's t-shirts",
    "product_category": "Clothing › Men › Shirts › T-Shirts",
}
GOAL = {
    "name": "Acme Men's Cotton T-Shirt, Machine Wash",
    "query": "men's t-shirts",
    "product_category": "Clothing › Men › Shirts › T-Shirts",
    "attributes": ["machine wash", "relaxed fits", "tagless collar", "long sleeve"],
    "goal_options": {"color": "black", "size": "large"},
    "price_upper": 30.0,
}


def _score(product=PRODUCT, goal=GOAL, price=20.0, options=None):
    return get_reward(product, goal, price=price, options=options or {})


def test_reward_attributes_options_price():
    # attributes: exact (fuzzy 100), fuzzy > 85 ("relaxed fits"), substring of Description, missing.
    score, info = _score(options={"color": "black", "size": "large"})
    assert info["r_att"] == 3 / 4 and info["r_option"] == 1.0 and info["r_price"] and info["r_type"] == 1.0
    assert score == pytest.approx((3 + 2 + 1) / (4 + 2 + 1))
    # options: size is exact ("x-large" != "large"); colors go through normalize_color then fuzzy
    # ("jet black" -> "black"); a chosen value found in the text counts ("navy" is in a bullet).
    assert _score(options={"color": "jet black", "size": "x-large"})[1]["r_option"] == 0.5
    assert _score(options={"color": "navy", "size": "small"})[1]["r_option"] == 0.5
    assert _score(options={"color": "white", "size": "small"})[1]["r_option"] == 0.0
    assert _score()[1]["r_option"] == 0.0  # nothing chosen
    # price above the bound loses the price term.
    over, info = _score(price=30.01, options={"color": "black", "size": "large"})
    assert not info["r_price"] and over == pytest.approx(5 / 7)
    # a perfect purchase scores exactly 1.0; no goal options means r_option is None.
    goal = dict(GOAL, attributes=["machine wash"], goal_options={})
    assert _score(goal=goal) == (1.0, pytest.approx(_score(goal=goal)[1]))
    assert "r_option" not in _score(goal=goal)[1]


@pytest.mark.parametrize(
    "goal_name, query, category, r_type",
    [
        ("Acme Cotton T-Shirt", "other", "X › Y › Z", 1.0),  # title_score 1.0 > 0.2
        ("Acme Cotton Dress Skirt Blouse Gown Tunic Robe Cardigan Sweater Hoodie", "men's t-shirts", "X › Y › Z", 1.0),  # 0.1, query
        ("Acme Cotton Dress Skirt Blouse Gown Tunic Robe Cardigan Sweater Hoodie", "other", "Clothing › Men › A", 1.0),  # 0.1, category
        ("Acme Cotton Dress Skirt Blouse Gown Tunic Robe Cardigan Sweater Hoodie", "other", "Clothing › Women › A", 0.5),  # 0.1, one segment
        ("Acme Dress Skirt Blouse Gown Tunic Robe Cardigan Sweater Hoodie Jacket Coat", "men's t-shirts", "X › Y › Z", 0.1),  # 1/11 < 0.1
        ("Dress Skirt", "men's t-shirts", "Clothing › Men › Shirts", 0.0),  # no shared noun
        ("The Best New", "other", "X › Y › Z", 0.5),  # no nouns: title_score 0.2, no other match
        ("The Best New", "men's t-shirts", "X › Y › Z", 1.0),  # no nouns, query match
    ],
)
def test_reward_type_branches(goal_name, query, category, r_type):
    goal = dict(GOAL, name=goal_name, query=query, product_category=category,
                attributes=["machine wash"], goal_options={})
    score, info = _score(goal=goal)
    assert info["r_type"] == r_type, info
    assert score == pytest.approx(r_type)


def test_reward_is_clipped_to_one():
    # The bought product has two chosen options that match (via the text) but the goal has one.
    goal = dict(GOAL, attributes=["machine wash"], goal_options={"size": "large"})
    score, _ = _score(goal=goal, options={"size": "large", "color": "navy"})
    assert score == 1.0


def test_normalize_color_and_nouns():
    assert normalize_color("light blue") == "blue"  # first of WebShop's alphabetical colour list
    assert normalize_color("navy blue") == "blue" and normalize_color("large") == "large"
    assert noun_tokens("Acme Men's Cotton T-Shirt, Machine Wash") == ["acme", "cotton", "shirt", "machine", "wash"]


# --- real adapter -------------------------------------------------------------------------------
def test_real_env_errors_name_missing_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("WEBSHOP_PATH", raising=False)
    with pytest.raises(WebShopUnavailableError, match="WEBSHOP_PATH") as excinfo:
        WebShopRealEnv()
    assert isinstance(excinfo.value, RuntimeError) and "setup.sh -d small" in str(excinfo.value)

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "items_shuffle_1000.json").write_text("[]")
    monkeypatch.setenv("WEBSHOP_PATH", str(tmp_path))
    with pytest.raises(RuntimeError) as excinfo:
        gym.make("himac/WebShopReal-v0")
    message = str(excinfo.value)
    assert "items_ins_v2_1000.json" in message and "indexes_1k" in message
    assert "items_shuffle_1000.json" not in message.split(". Get them")[0]
    assert "princeton-nlp/WebShop" in message


FAKE_WEB_AGENT_SITE = '''
import types

class WebAgentTextEnv:
    """A tiny stand-in with the interface of web_agent_site.envs.WebAgentTextEnv."""
    def __init__(self, observation_mode="html", file_path=None, **kwargs):
        assert observation_mode == "text" and kwargs["num_products"] == 1000 and not kwargs["human_goals"]
        self.server = types.SimpleNamespace(goals=[{"instruction_text": f"buy thing {i}"} for i in range(600)])
        self.calls, self.page = [], "search"

    def reset(self, session=None):
        self.session, self.page = session, "search"
        return f"WebShop [SEP] Instruction: [SEP] buy thing {session} [SEP] Search", None

    def get_available_actions(self):
        if self.page == "search":
            return dict(has_search_bar=True, clickables=["search"])
        return dict(has_search_bar=False, clickables=["back to search", "buy now"])

    def step(self, action):
        self.calls.append(action)
        if action.startswith("search["):
            self.page = "item"
            return "item page", 0.0, False, None
        if action == "click[buy now]":
            return "done", 1.0 if self.session % 2 else 0.5, True, None
        self.page = "search"
        return "search page", 0.0, False, None

    def close(self):
        pass
'''


@pytest.fixture
def fake_webshop(tmp_path, monkeypatch):
    for rel in ("data/items_shuffle_1000.json", "data/items_ins_v2_1000.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("[]")
    (tmp_path / "search_engine" / "indexes_1k").mkdir(parents=True)
    (tmp_path / "web_agent_site" / "envs").mkdir(parents=True)
    (tmp_path / "web_agent_site" / "__init__.py").write_text("")
    (tmp_path / "web_agent_site" / "envs" / "__init__.py").write_text(textwrap.dedent(FAKE_WEB_AGENT_SITE))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "web_agent_site" or m.startswith("web_agent_site.")]:
        del sys.modules[name]


def test_real_env_maps_to_common_api(fake_webshop):
    env = WebShopRealEnv(webshop_path=fake_webshop, split="test", max_steps=4)
    obs, info = env.reset(seed=0)
    assert 0 <= info["goal_idx"] < 500 and info["task"] == f"buy thing {info['goal_idx']}"
    assert info["admissible_actions"] == ["search[<your query>]"] and info["action_is_valid"]
    for bad in ("click[search]", "click[buy now]", "", "x" * 10_000):
        *_, info = env.step(bad)
        assert not info["action_is_valid"]
    assert env._env.calls == []  # invalid actions never reach WebShop
    obs, reward, terminated, truncated, info = env.step("search[thing]")
    assert obs == "item page" and info["admissible_actions"] == ["click[back to search]", "click[buy now]"]
    assert truncated and not terminated  # the 5 steps above exceed max_steps=4

    env = WebShopRealEnv(webshop_path=fake_webshop, split="train")
    for goal_idx in (0, 1):
        obs, info = env.reset(options={"goal_idx": goal_idx})
        assert info["goal_idx"] == 500 + goal_idx
        _run(env, ["search[thing]"])
        obs, reward, terminated, truncated, info = env.step("click[buy now]")
        won = goal_idx == 1  # the fake scores odd sessions 1.0
        assert terminated and info["won"] is won and reward == (10.0 if won else 0.0)
        assert info["score"] == (1.0 if won else 0.5)
