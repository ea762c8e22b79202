"""The WebShop purchase score (`web_agent_site/engine/goal.py get_reward`), re-implemented.

Pure Python + rapidfuzz; must not import gymnasium, ray or torch. Products and goals are plain dicts
with the original WebShop keys, so the same code can score a real WebShop product record:

- product: `Title`, `name`, `BulletPoints` (list[str]), `Description`, `Attributes` (list[str]),
  `query`, `product_category` ("A › B › C").
- goal: `name`, `query`, `product_category`, `attributes` (list[str]), `goal_options`
  ({name: value} or list of values), `price_upper` (float).

    total = (num_attr_matches + num_option_matches + r_price) / (len(attributes) + len(goal_options) + 1)
    total *= r_type

Deviations from the original (each marked in the code):

1. `title_score` needs the NOUN/PROPN tokens of both names; the original uses spaCy. Here a token
   counts as a noun when it is alphabetic, at least 3 letters long and not in `NON_NOUN_WORDS`
   (stop words, common adjectives and product descriptors). See `noun_tokens`.
2. The total is clipped to [0, 1]. The original can exceed 1 when the bought product has more option
   groups than the goal and every extra choice matches (it never normalises by the bought options).
3. `r_price` is 1 when the goal has no price bound (`price_upper <= 0`); the original would add `None`
   and raise. Synthetic goals always carry a bound, so this never changes a score.
"""

from __future__ import annotations

import re
from typing import Any

from rapidfuzz import fuzz, utils

# Option names compared exactly instead of fuzzily (goal.py EXACT_MATCH_OPTS).
EXACT_MATCH_OPTS = ("size",)
FUZZY_THRESHOLD = 85

# The colour vocabulary of WebShop's `engine/normalize.py` (MIT, Princeton NLP), in its original
# alphabetical order: `normalize_color` returns the *first* entry found as a substring, so order matters.
COLOR_SET = [
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue",
    "blush", "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne",
    "charcoal", "cheetah", "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper",
    "coral", "cranberry", "cream", "crystal", "dark", "denim", "eggplant", "elephant", "espresso",
    "fuchsia", "gold", "granite", "grape", "graphite", "grass", "gray", "green", "grey", "heather",
    "indigo", "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light", "lilac", "lime",
    "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha", "multicolor", "mushroom",
    "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink", "plum",
    "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver",
    "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal", "tiger",
    "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow"
]

# Deviation 1: words that are never product-type nouns. spaCy tags nouns by context; a fixed list of
# stop words, adjectives and marketing descriptors is close enough for generated and real titles.
NON_NOUN_WORDS = frozenset(
    [
        "a", "an", "the", "and", "or", "nor", "but", "for", "with", "without", "of", "in", "on",
        "at", "to", "from", "by", "into", "onto", "over", "under", "up", "down", "out", "off", "as",
        "per", "via", "about", "above", "after", "before", "between", "through", "during", "within",
        "than", "then", "so", "too", "very", "just", "also", "only", "not", "no", "yes", "all",
        "any", "each", "every", "both", "few", "more", "most", "other", "some", "such", "own",
        "same", "new", "old", "this", "that", "these", "those", "it", "its", "it's", "is", "are",
        "was", "were", "be", "been", "being", "has", "have", "had", "do", "does", "did", "can",
        "will", "would", "should", "could", "may", "might", "must", "one", "two", "three", "four",
        "five", "six", "seven", "eight", "nine", "ten", "men", "women", "mens", "womens", "men's",
        "women's", "man", "woman", "unisex", "kids", "kid", "boys", "girls", "girl", "boy", "baby",
        "adult", "adults", "big", "small", "large", "little", "tall", "short", "long", "wide",
        "high", "low", "light", "heavy", "soft", "hard", "thin", "thick", "slim", "extra", "mini",
        "full", "half", "double", "single", "multi", "best", "great", "good", "perfect", "premium",
        "classic", "modern", "vintage", "natural", "organic", "pure", "fresh", "original",
        "professional", "portable", "compact", "durable", "lightweight", "waterproof", "adjustable",
        "comfortable", "cute", "casual", "elegant", "stylish", "fashion", "luxury", "deluxe",
        "ultra", "super", "quality", "pack", "set", "pcs", "piece", "pieces", "count", "size",
        "color", "colour", "inch", "inches", "ounce", "ounces", "fl", "oz", "lb", "lbs", "cm", "mm",
        "ft", "feet"
    ]
)

_TOKEN_RE = re.compile(r"[a-z][a-z']*")


def fuzzy_ratio(a: str, b: str) -> float:
    """`thefuzz.fuzz.token_set_ratio` semantics: lower-case, punctuation to spaces, then compare."""
    return fuzz.token_set_ratio(a, b, processor=utils.default_process)


def normalize_color(color_string: str) -> str:
    """The first WebShop colour word contained in `color_string`, else the string itself."""
    for norm_color in COLOR_SET:
        if norm_color in color_string:
            return norm_color
    return color_string


def noun_tokens(name: str) -> list[str]:
    """Stand-in for spaCy's NOUN/PROPN tokens of a product name (deviation 1)."""
    return [
        t for t in _TOKEN_RE.findall(name.lower()) if len(t) >= 3 and t not in NON_NOUN_WORDS
    ]


def _product_text(product: dict[str, Any]) -> tuple[str, str, str]:
    bullets = product.get("BulletPoints") or []
    if isinstance(bullets, str):
        bullets = [bullets]
    return (
        str(product.get("Title", "")).lower(),
        " ".join(str(b) for b in bullets).lower(),
        str(product.get("Description", "") or "").lower(),
    )


def get_type_reward(purchased: dict[str, Any], goal: dict[str, Any]) -> dict[str, Any]:
    """`r_type`: is the bought product of the goal's type (query, category, or title nouns)?"""
    query_match = purchased["query"] == goal["query"]
    purchased_cat = {x.strip() for x in purchased["product_category"].split("›")}
    goal_cat = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(purchased_cat & goal_cat) >= 2

    purchased_nouns = noun_tokens(purchased["name"])
    desired_nouns = noun_tokens(goal["name"])
    if not desired_nouns:
        title_score = 0.2
    else:
        title_score = len(set(purchased_nouns) & set(desired_nouns)) / len(desired_nouns)

    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {
        "r_type": r_type, "query_match": query_match, "category_match": category_match, "title_score": title_score
    }


def get_attribute_reward(purchased: dict[str, Any], goal: dict[str, Any]) -> tuple[float, int]:
    """Goal attributes found among the product's `Attributes` (fuzzy) or in its text (substring)."""
    title, bullets, description = _product_text(purchased)
    num_attr_matches = 0
    for g_attr in goal["attributes"]:
        matched = any(
            fuzzy_ratio(p_attr, g_attr) > FUZZY_THRESHOLD
            for p_attr in purchased.get("Attributes", [])
        )
        if not matched and (g_attr in title or g_attr in bullets or g_attr in description):
            matched = True
        num_attr_matches += matched
    r_attr = num_attr_matches / len(goal["attributes"]) if goal["attributes"] else 0.0
    return r_attr, num_attr_matches


def get_option_reward(
    purchased: dict[str, Any], goal_options: list[str], purchased_options: dict[str, str]
) -> tuple[float | None, int]:
    """Chosen options matching a goal option (exact for size, fuzzy otherwise) or found in the text."""
    title, bullets, description = _product_text(purchased)
    chosen = {k: normalize_color(v) for k, v in purchased_options.items()}
    wanted = [normalize_color(o) for o in goal_options]

    num_option_matches = 0
    for p_key, p_value in chosen.items():
        if p_key.lower() in EXACT_MATCH_OPTS:
            matched = p_value in wanted
        else:
            matched = any(fuzzy_ratio(g, p_value) > FUZZY_THRESHOLD for g in wanted)
        if not matched and (p_value in title or p_value in bullets or p_value in description):
            matched = True
        num_option_matches += matched
    r_option = num_option_matches / len(wanted) if wanted else None
    return r_option, num_option_matches


def get_reward(
    purchased: dict[str, Any],
    goal: dict[str, Any],
    *,
    price: float,
    options: dict[str, str],
) -> tuple[float, dict[str, Any]]:
    """The WebShop score of buying `purchased` at `price` with the chosen `options` for `goal`.

    Returns:
        score in [0, 1], and the verbose breakdown (r_type, r_att, r_option, r_price, ... as in the
        original's `verbose=True`).
    """
    type_info = get_type_reward(purchased, goal)
    # Deviation 3: no price bound means the price term is satisfied.
    r_price = price <= goal["price_upper"] if goal["price_upper"] > 0 else True
    r_att, num_attr_matches = get_attribute_reward(purchased, goal)
    goal_options = goal["goal_options"]
    goal_values = list(goal_options.values()) if isinstance(goal_options, dict) else list(goal_options)
    r_option, num_option_matches = get_option_reward(purchased, goal_values, options)

    denominator = len(goal["attributes"]) + len(goal_values) + 1
    total = (num_attr_matches + num_option_matches + r_price) / denominator
    total *= type_info["r_type"]
    # Deviation 2: clip (see module docstring).
    total = min(max(total, 0.0), 1.0)

    info = dict(type_info, r_att=r_att, r_price=bool(r_price), w_att=len(goal["attributes"]) / denominator)
    if r_option is not None:
        info.update(r_option=r_option, w_option=len(goal_values) / denominator)
    return total, info
