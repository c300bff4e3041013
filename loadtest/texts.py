"""Deterministic item texts for load tests, unique by index: "long" product titles (~26 SmolLM2 tokens,
24-29) and "short" ones (~11 tokens, 9-13: brand, product and the index in hex).

The same index always gives the same text, so a "hot" pool can be warmed once and hit later, and a
"cold" stream that starts at a fresh offset never repeats a text the cache has already seen.
"""

from __future__ import annotations

from typing import Literal

TextLength = Literal["long", "short"]
TEXT_LENGTHS: tuple[TextLength, ...] = ("long", "short")

ADJECTIVES = ("wireless", "compact", "waterproof", "vintage", "ergonomic", "organic", "foldable", "smart")
PRODUCTS = (
    "speaker",
    "backpack",
    "desk lamp",
    "running shoe",
    "coffee grinder",
    "tent",
    "keyboard",
    "kettle",
)
MATERIALS = ("aluminium", "bamboo", "leather", "recycled plastic", "steel", "cotton", "glass", "oak")
COLOURS = ("blue", "black", "forest green", "sand", "red", "white", "grey", "orange")
BRANDS = ("Norda", "Velo", "Kairo", "Ostra", "Lumen", "Pika", "Tessel", "Brava")


def item_text(index: int, length: TextLength = "long") -> str:
    """A product title that no other index produces (the index is part of the text)."""
    a, p, m, c, b = (index // 8**k % 8 for k in range(5))
    if length == "short":
        return f"{BRANDS[b]} {PRODUCTS[p]} {index:x}"
    price = 5 + index % 495
    return (
        f"{ADJECTIVES[a].capitalize()} {MATERIALS[m]} {PRODUCTS[p]} by {BRANDS[b]}, "
        f"{COLOURS[c]}, {price} USD, model {index}"
    )


def item_texts(start: int, count: int, length: TextLength = "long") -> list[str]:
    return [item_text(index, length) for index in range(start, start + count)]
