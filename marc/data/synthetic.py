"""Deterministic synthetic recommendation data with natural-language item descriptions.

Items are products described in words (category noun, brand, colour, material, style/feature words,
price tier and price). Users have latent tastes over those same attributes, and clicks are drawn from
a known logistic model of taste x attributes, so the click signal is recoverable from the TEXT and
shared words carry it from warm items to cold ones. Most words come from the tiny test tokenizer's
corpus (marc.backbone._TINY_CORPUS), so tiny backbones tokenize the texts compactly.
"""

from __future__ import annotations

import numpy as np

from marc.data.dataset import RecDataset
from marc.data.simulate import (
    CLICK_MODEL,
    build_simulated_dataset,
    calibrate_intercept,
    sample_exposures,
    sigmoid,
)

# category -> (product nouns, materials that make sense, style/feature words that make sense, base price USD)
CATEGORIES: dict[str, tuple[list[str], list[str], list[str], float]] = {
    "footwear": (
        ["shoes", "sneakers", "boots"],
        ["leather", "cotton"],
        ["running", "hiking", "casual", "formal", "sport", "outdoor", "waterproof", "vegan", "light"],
        80.0,
    ),
    "clothing": (
        ["jacket", "shirt", "dress", "jeans"],
        ["cotton", "leather"],
        ["casual", "formal", "sport", "outdoor", "travel", "office", "vintage", "organic", "waterproof"],
        60.0,
    ),
    "electronics": (
        ["phone", "laptop", "tablet", "watch", "camera"],
        ["steel"],
        ["smart", "wireless", "compact", "portable", "waterproof", "light", "travel", "office"],
        400.0,
    ),
    "audio": (
        ["headphones", "speaker"],
        ["wooden", "steel"],
        ["wireless", "bluetooth", "waterproof", "compact", "portable", "sport", "vintage", "smart"],
        90.0,
    ),
    "kitchen": (
        ["blender", "coffee maker", "knife", "pan"],
        ["steel", "wooden"],
        ["electric", "compact", "modern", "vintage", "handmade", "portable", "heavy"],
        50.0,
    ),
    "furniture": (
        ["sofa", "chair", "table", "lamp", "bed", "pillow"],
        ["wooden", "leather", "cotton", "steel"],
        ["modern", "vintage", "handmade", "office", "garden", "indoor", "outdoor", "compact", "heavy"],
        250.0,
    ),
    "toys": (
        ["toy", "puzzle", "game"],
        ["wooden"],
        ["handmade", "electric", "classic", "travel", "outdoor", "indoor", "small", "smart"],
        30.0,
    ),
    "books": (
        ["book", "novel"],
        [],
        ["classic", "modern", "vintage", "travel", "sport", "garden", "home", "small"],
        20.0,
    ),
    "beauty": (
        ["cream", "perfume"],
        [],
        ["organic", "vegan", "handmade", "travel", "light", "small", "classic"],
        35.0,
    ),
}
COLORS: list[str] = [
    "black",
    "white",
    "red",
    "blue",
    "green",
    "grey",
    "silver",
    "gold",
    "pink",
    "brown",
    "navy",
]
BRANDS: list[str] = [
    "Acme", "Nordik", "Lumo", "Veloro", "Kestrel", "Orion", "Bramble", "Zenith", "Pico", "Marlo",
    "Tidewell", "Quill", "Hearth", "Solace", "Vantage", "Juniper", "Atlas", "Nimbus", "Fable", "Corvo",
]  # fmt: skip
PRICE_BANDS: list[str] = ["budget", "mid", "premium"]
_PRICE_MULTIPLIER: dict[str, float] = {"budget": 0.45, "mid": 1.0, "premium": 2.4}
# Tier words a description may use for each band (mid-range items get no tier word).
_TIER_WORDS: dict[str, list[str]] = {
    "budget": ["budget", "cheap"],
    "mid": [],
    "premium": ["premium", "luxury"],
}
_TASTE_RANK = 4  # users' tastes are mixtures of a few latent "personas" (what id-based CF can learn)


def _attribute_vocabulary() -> list[str]:
    words = set(COLORS)
    for _, materials, styles, _ in CATEGORIES.values():
        words.update(materials)
        words.update(styles)
    return sorted(words)


def feature_names() -> list[str]:
    """Names of the columns of `meta['item_features']` (the generator's item representation)."""
    return (
        [f"category={c}" for c in CATEGORIES]
        + [f"attribute={a}" for a in _attribute_vocabulary()]
        + [f"price_band={b}" for b in PRICE_BANDS]
    )


def _describe(
    rng: np.random.Generator,
    brand: str,
    noun: str,
    color: str,
    material: str | None,
    styles: list[str],
    tier_word: str | None,
    price: int,
) -> str:
    """One product description; several templates so texts are not all alike."""
    template = int(rng.integers(3))
    material_text = f"{material} " if material else ""
    tier = f"{tier_word} " if tier_word else ""
    if template == 0:
        # "Acme premium wireless headphones in black, compact and waterproof, 59 USD"
        lead, rest = styles[0], styles[1:]
        text = f"{brand} {tier}{lead} {material_text}{noun} in {color}"
        if rest:
            text += ", " + " and ".join(rest)
        return f"{text}, {price} USD"
    if template == 1:
        # "Black leather boots by Acme. Hiking and waterproof. Price: 120 USD"
        head = f"{color.capitalize()} {material_text}{noun} by {brand}."
        body = " and ".join(styles).capitalize() + "."
        tail = f" A {tier.strip()} item." if tier else ""
        return f"{head} {body}{tail} Price: {price} USD"
    # "The new Acme sofa: modern, wooden, navy. Budget price, 99 USD"
    words = [*styles, *([material] if material else []), color]
    price_text = f"{tier_word.capitalize()} price, {price} USD" if tier_word else f"{price} USD"
    return f"The new {brand} {noun}: {', '.join(words)}. {price_text}"


def make_synthetic(
    num_items: int = 2000,
    num_users: int = 1000,
    interactions_per_user: int = 40,
    cold_fraction: float = 0.2,
    seed: int = 0,
    positive_rate: float = 0.3,
) -> RecDataset:
    """Generate the synthetic dataset; the same arguments always give the same dataset.

    Click model (stored in `meta`): logit(u, i) = intercept + user_bias[u]
    + user_weights[u] . item_features[i] + brand_quality[brand(i)] + item_noise[i],
    with user_weights = user_factors @ persona_weights (+ small noise). All of it except item_noise
    (a small idiosyncratic item effect that only ids can learn) is stated in the item text.
    `intercept` is calibrated so that the expected positive rate is `positive_rate`.
    """
    if not 0.0 <= cold_fraction < 1.0:
        raise ValueError(f"cold_fraction must be in [0, 1), got {cold_fraction}")
    rng = np.random.default_rng(seed)
    categories = list(CATEGORIES)
    attributes = _attribute_vocabulary()
    attribute_index = {a: j for j, a in enumerate(attributes)}
    num_features = len(categories) + len(attributes) + len(PRICE_BANDS)

    # Brands specialise in 1-3 categories and have a global quality everyone notices.
    brand_categories = [rng.choice(len(categories), size=rng.integers(1, 4), replace=False) for _ in BRANDS]
    brand_quality = rng.normal(0.0, 0.5, size=len(BRANDS))
    brands_of_category = [
        [b for b, cs in enumerate(brand_categories) if c in cs] for c in range(len(categories))
    ]
    for c, brands in enumerate(brands_of_category):
        if not brands:  # every category needs at least one brand
            brands.append(int(rng.integers(len(BRANDS))))
            brand_categories[brands[0]] = np.append(brand_categories[brands[0]], c)

    item_features = np.zeros((num_items, num_features), dtype=np.float32)
    item_brand = np.zeros(num_items, dtype=np.int64)
    item_category = rng.integers(len(categories), size=num_items)
    item_band = rng.choice(len(PRICE_BANDS), size=num_items, p=[0.35, 0.4, 0.25])
    texts: list[str] = []
    for i in range(num_items):
        category = categories[item_category[i]]
        nouns, materials, styles, base_price = CATEGORIES[category]
        band = PRICE_BANDS[item_band[i]]
        brand = int(rng.choice(brands_of_category[item_category[i]]))
        noun = str(rng.choice(nouns))
        color = str(rng.choice(COLORS))
        material = str(rng.choice(materials)) if materials and rng.random() < 0.7 else None
        chosen_styles = [str(s) for s in rng.choice(styles, size=int(rng.integers(1, 3)), replace=False)]
        tier_words = _TIER_WORDS[band]
        tier_word = str(rng.choice(tier_words)) if tier_words and rng.random() < 0.7 else None
        price = max(1, round(base_price * _PRICE_MULTIPLIER[band] * rng.lognormal(0.0, 0.15)))
        texts.append(_describe(rng, BRANDS[brand], noun, color, material, chosen_styles, tier_word, price))

        item_brand[i] = brand
        item_features[i, item_category[i]] = 1.0
        for word in [color, *([material] if material else []), *chosen_styles]:
            item_features[i, len(categories) + attribute_index[word]] = 1.0
        item_features[i, len(categories) + len(attributes) + item_band[i]] = 1.0

    # Category tastes are the strongest signal, then attributes and price band.
    feature_scale = np.concatenate(
        [np.full(len(categories), 1.2), np.full(len(attributes), 0.6), np.full(len(PRICE_BANDS), 0.8)]
    )
    persona_weights = rng.normal(0.0, 1.0, size=(_TASTE_RANK, num_features)) * feature_scale
    user_factors = rng.normal(0.0, 1.0, size=(num_users, _TASTE_RANK)) / np.sqrt(_TASTE_RANK)
    user_weights = user_factors @ persona_weights + rng.normal(0.0, 0.3, size=(num_users, num_features))
    user_bias = rng.normal(0.0, 0.5, size=num_users)
    item_noise = rng.normal(0.0, 0.3, size=num_items)
    popularity = rng.lognormal(0.0, 0.5, size=num_items)

    users, items = sample_exposures(rng, num_users, num_items, interactions_per_user, popularity)
    item_bias = brand_quality[item_brand] + item_noise
    raw_logits = (
        user_bias[users] + np.einsum("nf,nf->n", user_weights[users], item_features[items]) + item_bias[items]
    )
    intercept = calibrate_intercept(raw_logits, positive_rate)
    meta = {
        "generator": "marc.data.synthetic.make_synthetic",
        "params": {
            "num_items": num_items,
            "num_users": num_users,
            "interactions_per_user": interactions_per_user,
            "cold_fraction": cold_fraction,
            "seed": seed,
            "positive_rate": positive_rate,
        },
        "click_model": CLICK_MODEL + " with item_bias = brand_quality[item_brand] + item_noise",
        "feature_names": feature_names(),
        "brands": list(BRANDS),
        "intercept": intercept,
        "item_features": item_features,
        "item_brand": item_brand,
        "brand_quality": brand_quality,
        "item_noise": item_noise,
        "item_bias": item_bias,
        "user_weights": user_weights,
        "user_bias": user_bias,
    }
    ids = [f"item-{i:05d}" for i in range(num_items)]
    probabilities = sigmoid(raw_logits + intercept)
    return build_simulated_dataset(
        "synthetic", rng, ids, texts, num_users, users, items, probabilities, cold_fraction, meta
    )
