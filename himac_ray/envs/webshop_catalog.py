"""The synthetic WebShop catalog: products, goals and a BM25 search engine, all from one seed.

Pure Python + numpy + rank_bm25 + rapidfuzz; must not import gymnasium, ray or torch. Products are
plain dicts with the fields of WebShop's `items_shuffle*.json` (`asin`, `name`, `category`, `query`,
`product_category`, `small_description`, `full_description`, `pricing`, `customization_options`) plus
the derived fields `engine/engine.py load_products` adds (`Title`, `BulletPoints`, `Description`,
`Price`, `options`, `Attributes`, `Rating`, `Reviews`), so `webshop_reward.get_reward` scores them as
it would a real product. Goals follow `engine/goal.py get_synthetic_goals`: one per product x option
combination, shuffled once; the first 500 form the test split.

`get_catalog(num_products, seed)` builds a catalog once per process and caches it.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import Any

import numpy as np
from rank_bm25 import BM25Okapi

from himac_ray.envs.webshop_reward import (
    EXACT_MATCH_OPTS,
    FUZZY_THRESHOLD,
    fuzzy_ratio,
    normalize_color,
)

SEARCH_RETURN_N = 50
NUM_TEST_GOALS = 500
# goal.py PRICE_RANGE: the price bound is one of the multiples of 10 just above the price.
PRICE_RANGE = [10.0 * i for i in range(1, 100)]

_APPAREL_SIZES = ["x-small", "small", "medium", "large", "x-large", "xx-large", "3x-large"]
_SHOE_SIZES = ["6", "7", "7.5", "8", "8.5", "9", "9.5", "10", "11", "12"]
_COLORS = [
    "black", "white", "navy", "grey", "red", "blue", "green", "pink", "beige", "brown", "olive",
    "purple", "khaki", "burgundy", "teal", "yellow", "orange", "ivory", "charcoal", "silver", "gold",
    "coral", "mint", "maroon", "turquoise",
]
_LIQUID_SIZES = ["1 fl oz", "1.7 fl oz", "3.4 fl oz", "6.7 fl oz", "8 fl oz", "16 fl oz"]
_FOOD_SIZES = ["4 ounce (pack of 1)", "8 ounce (pack of 2)", "12 ounce (pack of 3)", "16 ounce (pack of 6)"]

# One entry per product type: (category, query, product_category, title nouns, attribute pool,
# option groups {name: value pool}). Attribute phrases are lower-case and appear verbatim in the
# title or bullets of every product carrying them.
PRODUCT_TYPES: list[tuple[str, str, str, list[str], list[str], dict[str, list[str]]]] = [
    ("fashion", "men's t-shirts", "Clothing, Shoes & Jewelry › Men › Clothing › Shirts › T-Shirts",
     ["Men's T-Shirt", "Men's Crew Neck Tee", "Men's Pocket T-Shirt"],
     ["machine wash", "short sleeve", "long sleeve", "cotton jersey", "relaxed fit", "moisture wicking",
      "quick drying", "classic fit", "tagless collar"],
     {"size": _APPAREL_SIZES, "color": _COLORS}),
    ("fashion", "women's dresses", "Clothing, Shoes & Jewelry › Women › Clothing › Dresses › Casual",
     ["Women's Summer Dress", "Women's Maxi Dress", "Women's Wrap Dress"],
     ["hand wash", "v neck", "button closure", "flowy hem", "elastic waist", "side pockets",
      "lightweight fabric", "midi length"],
     {"size": _APPAREL_SIZES, "color": _COLORS}),
    ("fashion", "men's running shoes", "Clothing, Shoes & Jewelry › Men › Shoes › Athletic › Running",
     ["Men's Running Shoe", "Men's Trail Sneaker", "Men's Road Runner"],
     ["rubber sole", "lace up", "memory foam", "breathable mesh", "non slip", "arch support",
      "shock absorbing"],
     {"size": _SHOE_SIZES, "color": _COLORS}),
    ("fashion", "women's yoga pants", "Clothing, Shoes & Jewelry › Women › Clothing › Active › Leggings",
     ["Women's Yoga Pants", "Women's Workout Leggings", "Women's Jogger Pants"],
     ["high waist", "tummy control", "four way stretch", "squat proof", "side pockets",
      "moisture wicking", "machine wash"],
     {"size": _APPAREL_SIZES, "color": _COLORS, "style": ["full length", "capri", "flare"]}),
    ("fashion", "women's handbags", "Clothing, Shoes & Jewelry › Women › Handbags & Wallets › Totes",
     ["Women's Tote Handbag", "Women's Shoulder Bag", "Women's Crossbody Purse"],
     ["vegan leather", "zipper closure", "adjustable strap", "multiple pockets", "large capacity",
      "gold hardware"],
     {"color": _COLORS, "style": ["tote", "satchel", "hobo", "bucket"]}),
    ("beauty", "hair shampoo", "Beauty & Personal Care › Hair Care › Shampoo & Conditioner › Shampoos",
     ["Moisturizing Shampoo", "Clarifying Shampoo", "Volumizing Shampoo"],
     ["sulfate free", "paraben free", "natural ingredients", "dry hair", "color treated hair",
      "argan oil", "cruelty free"],
     {"size": _LIQUID_SIZES, "scent": ["lavender", "coconut", "eucalyptus", "citrus", "unscented"]}),
    ("beauty", "face moisturizer", "Beauty & Personal Care › Skin Care › Face › Creams & Moisturizers",
     ["Face Moisturizer Cream", "Hydrating Face Lotion", "Night Repair Cream"],
     ["hyaluronic acid", "sensitive skin", "fragrance free", "long lasting", "non greasy",
      "vitamin c", "anti aging"],
     {"size": _LIQUID_SIZES, "scent": ["unscented", "rose", "cucumber", "green tea"]}),
    ("beauty", "eau de parfum", "Beauty & Personal Care › Fragrance › Women's › Eau de Parfum",
     ["Eau de Parfum Spray", "Perfume Mist", "Fragrance Spray"],
     ["long lasting", "travel size", "floral notes", "woody notes", "glass bottle", "gift box"],
     {"size": _LIQUID_SIZES, "scent": ["jasmine", "vanilla", "sandalwood", "citrus", "amber"]}),
    ("beauty", "nail polish", "Beauty & Personal Care › Foot, Hand & Nail Care › Nail Art & Polish",
     ["Nail Polish Set", "Gel Nail Polish", "Nail Lacquer Kit"],
     ["quick drying", "high gloss", "chip resistant", "non toxic", "easy to apply", "long lasting"],
     {"color": _COLORS, "style": ["gel", "matte", "glitter", "shimmer"]}),
    ("food", "granola bars", "Grocery & Gourmet Food › Snacks › Bars › Granola Bars",
     ["Granola Bars", "Chewy Oat Bars", "Crunchy Granola Bites"],
     ["gluten free", "low sugar", "high protein", "whole grain", "non gmo", "individually wrapped",
      "kosher certified"],
     {"size": _FOOD_SIZES, "flavor name": ["peanut butter", "honey oat", "dark chocolate", "almond",
                                            "cranberry"]}),
    ("food", "ground coffee", "Grocery & Gourmet Food › Beverages › Coffee › Ground Coffee",
     ["Ground Coffee", "Medium Roast Coffee", "Dark Roast Coffee Grounds"],
     ["fair trade", "single origin", "arabica beans", "low acid", "freshly roasted", "resealable bag"],
     {"size": _FOOD_SIZES, "flavor name": ["hazelnut", "french vanilla", "caramel", "breakfast blend",
                                            "decaf"]}),
    ("food", "herbal tea", "Grocery & Gourmet Food › Beverages › Tea › Herbal",
     ["Herbal Tea Bags", "Loose Leaf Herbal Tea", "Caffeine Free Tisane"],
     ["caffeine free", "usda organic", "non gmo", "individually wrapped", "gluten free", "kosher certified"],
     {"size": _FOOD_SIZES, "flavor name": ["chamomile", "peppermint", "hibiscus", "ginger", "rooibos"]}),
    ("food", "beef jerky", "Grocery & Gourmet Food › Meat & Seafood › Jerky",
     ["Beef Jerky", "Beef Steak Strips", "Smoked Jerky Sticks"],
     ["high protein", "low fat", "gluten free", "grass fed", "no added nitrates", "resealable bag"],
     {"size": _FOOD_SIZES, "flavor name": ["original", "teriyaki", "peppered", "sweet chipotle"]}),
    ("furniture", "office chair", "Home & Kitchen › Furniture › Home Office Furniture › Chairs",
     ["Office Chair", "Ergonomic Desk Chair", "Swivel Task Chair"],
     ["lumbar support", "adjustable height", "mesh back", "easy assembly", "padded armrests",
      "heavy duty"],
     {"color": _COLORS, "style": ["with arms", "armless", "high back"]}),
    ("furniture", "bed sheets", "Home & Kitchen › Bedding › Sheets & Pillowcases › Sheet Sets",
     ["Bed Sheet Set", "Microfiber Sheets", "Deep Pocket Sheet Set"],
     ["deep pocket", "machine wash", "wrinkle free", "breathable fabric", "fade resistant",
      "hypoallergenic"],
     {"size": ["twin", "full", "queen", "king", "california king"], "color": _COLORS}),
    ("furniture", "bookshelf", "Home & Kitchen › Furniture › Living Room Furniture › Bookcases",
     ["Bookshelf", "Ladder Bookcase", "Storage Shelf Unit"],
     ["easy assembly", "solid wood", "space saving", "heavy duty", "open shelves", "wall anchor"],
     {"color": _COLORS, "size": ["3 tier", "4 tier", "5 tier"]}),
    ("furniture", "throw pillow covers", "Home & Kitchen › Home Decor › Decorative Pillows › Covers",
     ["Throw Pillow Cover", "Cushion Case Set", "Decorative Pillowcase"],
     ["hidden zipper", "machine wash", "soft velvet", "farmhouse decor", "double sided"],
     {"size": ["16 x 16 inch", "18 x 18 inch", "20 x 20 inch", "24 x 24 inch"], "color": _COLORS}),
    ("electronics", "wireless earbuds", "Electronics › Headphones › Earbud Headphones",
     ["Wireless Earbuds", "Bluetooth Earphones", "Sports Earbuds"],
     ["noise cancelling", "charging case", "water resistant", "touch control", "built in microphone",
      "long battery life"],
     {"color": _COLORS, "style": ["standard", "sport hooks", "pro"]}),
    ("electronics", "phone case", "Cell Phones & Accessories › Cases, Holsters & Sleeves › Basic Cases",
     ["Phone Case", "Protective Phone Cover", "Slim Phone Case"],
     ["shockproof", "wireless charging compatible", "raised edges", "scratch resistant", "slim fit",
      "kickstand"],
     {"color": _COLORS, "size": ["6.1 inch", "6.5 inch", "6.7 inch"]}),
    ("electronics", "usb c cable", "Electronics › Computers & Accessories › Cables › USB Cables",
     ["USB C Cable", "Fast Charging Cable", "Braided Charger Cord"],
     ["fast charging", "nylon braided", "data transfer", "tangle free", "durable connector"],
     {"size": ["3 ft", "6 ft", "10 ft"], "color": _COLORS, "style": ["single", "twin pack", "family pack"]}),
    ("electronics", "bluetooth speaker", "Electronics › Portable Audio & Video › Portable Speakers",
     ["Bluetooth Speaker", "Portable Wireless Speaker", "Outdoor Speaker"],
     ["waterproof design", "deep bass", "long battery life", "built in microphone", "stereo pairing"],
     {"color": _COLORS, "style": ["mini", "standard", "max"]}),
]

_PRICE_BANDS = {"fashion": (9.0, 60.0), "beauty": (5.0, 45.0), "food": (4.0, 30.0),
                "furniture": (20.0, 250.0), "electronics": (8.0, 120.0)}
_SYLLABLES = [
    "ka", "lo", "mi", "ra", "zen", "vo", "ta", "ri", "no", "su", "be", "lu", "fa", "do", "ne", "xo",
    "qui", "pa", "ve", "mo", "ar", "el", "in", "on"
]
_FILLERS = [
    "made for everyday use", "a thoughtful gift for family and friends", "built to hold up over time",
    "easy to care for", "backed by friendly customer service", "a customer favorite",
    "checked by hand before shipping", "great value for the money",
]
_DESCRIPTION_OPENERS = [
    "Meet the {core} from {brand}.", "{brand} brings you a {core} you can rely on.",
    "Upgrade your routine with this {core} by {brand}.",
]
# Instruction templates in the style of items_ins_v2 ("Find me machine wash men's t-shirts with long sleeve").
_INSTRUCTION_TEMPLATES = {
    1: ["Find me {a0} {q}", "i am looking for {q} that is {a0}", "i need {a0} {q}"],
    2: ["Find me {a0} {q} with {a1}", "i want {a0} and {a1} {q}", "i am looking for {a0} {q} that has {a1}"],
    3: ["Find me {a0} {q} with {a1} and {a2}", "i need {a0} and {a1} {q} that is {a2}"],
}
_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens, used for both the BM25 index and queries."""
    return _TOKEN_RE.findall(text.lower())


def _pick(rng: np.random.Generator, pool: list, k: int) -> list:
    idx = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[i] for i in sorted(idx)]


def _distinct_values(
    rng: np.random.Generator, pool: list[str], k: int, taken: list[str], text: str, *, exact: bool
) -> list[str]:
    """Up to k option values that the reward cannot mistake for another value of the product.

    A value found in the product text would match any goal (the reward's text fallback); a fuzzily
    matched value (all but `size`) must also differ from every other value of every group.
    """
    chosen: list[str] = []
    for i in rng.permutation(len(pool)):
        value = pool[i]
        norm = normalize_color(value)
        others = [normalize_color(o) for o in taken + chosen]
        if norm in text or norm in others:
            continue
        if not exact and any(fuzzy_ratio(norm, o) > FUZZY_THRESHOLD for o in others):
            continue
        chosen.append(value)
        if len(chosen) == k:
            break
    return [v for v in pool if v in chosen]  # keep the pool's natural order (sizes ascending)


def _make_product(rng: np.random.Generator, type_idx: int, asin: str, brand: str) -> dict[str, Any]:
    category, query, product_category, cores, attr_pool, option_pools = PRODUCT_TYPES[type_idx]
    core = cores[rng.integers(len(cores))]
    attributes = _pick(rng, attr_pool, int(rng.integers(3, 6)))
    in_title = attributes[: int(rng.integers(1, 3))]
    title = f"{brand} {core}, " + ", ".join(a.title() for a in in_title)
    bullets = [f"{a.capitalize()}: {_FILLERS[rng.integers(len(_FILLERS))]}" for a in attributes[len(in_title):]]
    bullets.append(f"{_FILLERS[rng.integers(len(_FILLERS))].capitalize()}")
    opener = _DESCRIPTION_OPENERS[rng.integers(len(_DESCRIPTION_OPENERS))]
    description = (
        opener.format(core=core.lower(), brand=brand)
        + f" It is {', '.join(attributes)}. Perfect for anyone searching for {query}."
    )

    lo, hi = _PRICE_BANDS[category]
    low = round(float(rng.uniform(lo, hi)), 2)
    if rng.random() < 0.6:
        pricing = f"${low:.2f}"
    else:
        pricing = f"${low:.2f} - ${round(low * float(rng.uniform(1.1, 1.5)), 2):.2f}"

    text = " ".join([title, *bullets, description]).lower()
    names = list(option_pools)
    if len(names) > 2 and rng.random() < 0.5:  # 2-3 groups per product when the type has 3
        names = names[:2]
    options: dict[str, list[str]] = {}
    taken: list[str] = []
    for name in names:
        values = _distinct_values(
            rng, option_pools[name], int(rng.integers(2, 5)), taken, text, exact=name in EXACT_MATCH_OPTS
        )
        if len(values) >= 2:
            options[name] = values
            taken += values

    prices = [float(p) for p in re.findall(r"\d+\.\d+", pricing)]
    return {
        "asin": asin,
        "name": title,
        "category": category,
        "query": query,
        "product_category": product_category,
        "small_description": bullets,
        "full_description": description,
        "pricing": pricing,
        "customization_options": {k: list(v) for k, v in options.items()},
        "images": [""],
        "attributes": attributes,
        # Derived as in engine.load_products.
        "Title": title,
        "BulletPoints": bullets,
        "Description": description,
        "Price": f"${prices[0]}" if len(prices) == 1 else f"${prices[0]} to ${prices[1]}",
        "price_range": prices,
        "options": options,
        "Attributes": attributes,
        "Rating": "N.A.",
        "Reviews": [],
        "type_idx": type_idx,
    }


class Catalog:
    """A seeded synthetic product catalog with its goals and BM25 index (build via `get_catalog`)."""

    def __init__(self, num_products: int, seed: int):
        if num_products < 1:
            raise ValueError(f"num_products must be >= 1, got {num_products}")
        rng = np.random.default_rng(seed)
        self.num_products = num_products
        self.seed = seed
        self.products: list[dict[str, Any]] = []
        asins: set[str] = set()
        alphabet = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"))
        for i in range(num_products):
            asin = "B0" + "".join(rng.choice(alphabet, size=8))
            while asin in asins:
                asin = "B0" + "".join(rng.choice(alphabet, size=8))
            asins.add(asin)
            brand = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
            self.products.append(_make_product(rng, i % len(PRODUCT_TYPES), asin, brand))
        self.by_asin = {p["asin"]: p for p in self.products}

        # engine.generate_product_prices: uniform in the range, else the single price.
        self.prices: dict[str, float] = {}
        for p in self.products:
            pr = p["price_range"]
            self.prices[p["asin"]] = float(rng.uniform(*pr[:2])) if len(pr) > 1 else pr[0]

        # goal.get_synthetic_goals: one instruction and price bound per product, one goal per combo.
        self._instructions: list[tuple[str, list[str], float]] = []
        goal_index: list[tuple[int, tuple[str, ...]]] = []
        for i, p in enumerate(self.products):
            self._instructions.append(self._make_instruction(rng, p))
            names = sorted(p["options"])
            for combo in itertools.product(*(p["options"][n] for n in names)):
                goal_index.append((i, combo))
        order = rng.permutation(len(goal_index))
        self._goal_index = [goal_index[j] for j in order]

        corpus = [tokenize(" ".join([p["Title"], *p["BulletPoints"], *p["Attributes"]])) for p in self.products]
        self._bm25 = BM25Okapi(corpus)
        self._search_cache: dict[str, list[str]] = {}

    def _make_instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> tuple[str, list[str], float]:
        k = int(rng.integers(1, min(3, len(p["Attributes"])) + 1))
        goal_attrs = _pick(rng, p["Attributes"], k)
        templates = _INSTRUCTION_TEMPLATES[k]
        text = templates[rng.integers(len(templates))].format(
            q=p["query"], **{f"a{j}": a for j, a in enumerate(goal_attrs)}
        )
        price = self.prices[p["asin"]]
        price_range = [x for x in PRICE_RANGE if x > price][:4]
        price_upper = float(max(rng.choice(price_range, size=2, replace=False))) if len(price_range) >= 2 else 1e6
        return text, goal_attrs, price_upper

    # --- goals ------------------------------------------------------------------------------------
    @property
    def num_goals(self) -> int:
        return len(self._goal_index)

    def split_range(self, split: str) -> range:
        """Goal indices of a split: verl-agent uses goals 0-499 as test and 500+ as train."""
        n_test = min(NUM_TEST_GOALS, self.num_goals // 2)
        if split == "test":
            return range(n_test)
        if split == "train":
            return range(n_test, self.num_goals)
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def goal(self, idx: int) -> dict[str, Any]:
        """Goal dict as in goal.get_synthetic_goals (`name` is the product Title)."""
        product_idx, combo = self._goal_index[idx]
        p = self.products[product_idx]
        text, goal_attrs, price_upper = self._instructions[product_idx]
        goal_options = dict(zip(sorted(p["options"]), combo))
        option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
        option_text = f" with {option_text}" if option_text else ""
        price_text = f", and price lower than {price_upper:.2f} dollars" if price_upper < 1e6 else ""
        return {
            "asin": p["asin"],
            "category": p["category"],
            "query": p["query"],
            "name": p["Title"],
            "product_category": p["product_category"],
            "instruction_text": f"{text}{option_text}{price_text}",
            "attributes": goal_attrs,
            "price_upper": price_upper,
            "goal_options": goal_options,
        }

    # --- search -----------------------------------------------------------------------------------
    def search(self, keywords: str) -> list[str]:
        """ASINs of the top `SEARCH_RETURN_N` BM25 hits (score > 0) for `keywords`, best first."""
        hits = self._search_cache.get(keywords)
        if hits is None:
            tokens = tokenize(keywords)
            hits = []
            if tokens:
                scores = self._bm25.get_scores(tokens)
                top = np.argsort(-scores, kind="stable")[:SEARCH_RETURN_N]
                hits = [self.products[i]["asin"] for i in top if scores[i] > 0]
            if len(self._search_cache) > 4096:
                self._search_cache.clear()
            self._search_cache[keywords] = hits
        return hits


@functools.lru_cache(maxsize=4)
def get_catalog(num_products: int = 2000, seed: int = 0) -> Catalog:
    """The catalog for (num_products, seed), built once per process."""
    return Catalog(num_products, seed)
