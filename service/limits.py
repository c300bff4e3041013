"""Request limits that come from the running settings (items per request, characters per text).

They raise the same `RequestValidationError` pydantic errors do, so every 422 has one shape and
names the field (e.g. ``items.3.text``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi.exceptions import RequestValidationError

Loc = tuple[str | int, ...]


def enforce_limits(
    texts: Sequence[str],
    *,
    count_loc: Loc,
    text_loc: Callable[[int], Loc],
    max_items: int,
    max_text_chars: int,
) -> None:
    """Reject too many texts (at ``count_loc``) or any text over ``max_text_chars`` (at its loc)."""
    errors: list[dict[str, object]] = []
    if len(texts) > max_items:
        errors.append(
            {
                "type": "too_long",
                "loc": ("body", *count_loc),
                "msg": f"at most {max_items} items per request (got {len(texts)})",
            }
        )
    for index, text in enumerate(texts):
        if len(text) > max_text_chars:
            errors.append(
                {
                    "type": "string_too_long",
                    "loc": ("body", *text_loc(index)),
                    "msg": f"at most {max_text_chars} characters (got {len(text)})",
                }
            )
            break  # one is enough to name the problem; don't echo thousands
    if errors:
        raise RequestValidationError(errors)
