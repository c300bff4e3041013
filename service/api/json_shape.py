"""A look at a JSON body before it is parsed: does its list hold more items than allowed, and is it
made of more JSON values than a request can need?

Parsing builds an object per value, so a body of hundreds of thousands of tiny items costs far more
than its bytes suggest (a 2 MiB body of ``{"text":"a"}`` items: ~150 ms of validation on this 2-core
machine, on the event loop). This scan finds only what shapes the request - strings are skipped
whole, an array of numbers (token ids) is counted in one step, both by a regular expression at C
speed - and stops as soon as a limit is passed, so such a body is refused after a few kilobytes.
It does not validate: a body it lets through may still be malformed, and the parser says so.
"""

from __future__ import annotations

import re
from typing import Literal

# A complete string; a run of numbers, each followed by a comma (a token array, counted in steps of up
# to 1024, so a huge one is still refused after the first step); a bracket or brace; a comma; or a
# quote that starts no complete string (malformed: the scan stops there and leaves it to the parser).
# Escaped backslashes and quotes are removed first, so a string is simply quote, no quote, quote.
_TOKENS = re.compile(rb'"[^"]*"|(?:[-+.0-9eE]+\s*,\s*){1,1024}|[\[\]{},"]')
_QUOTE, _COMMA, _OPEN_ARRAY, _OPEN_OBJECT = ord('"'), ord(","), ord("["), ord("{")
_CLOSING = (ord("]"), ord("}"))
MAX_DEPTH = 16  # no request is deeper than 4 (body, list, item, token array)

Refusal = Literal["too_many_items", "too_many_values", "too_deep"]


def refusal(
    body: bytes, *, list_field: str, max_items: int, max_values: int, numbers_are_one_item: bool = False
) -> Refusal | None:
    """Why ``body`` must be refused before parsing, or None.

    ``list_field``: the top-level field whose list is counted against ``max_items``. ``max_values``:
    the commas and brackets anywhere in the body, a bound on its JSON values. ``numbers_are_one_item``:
    a list of numbers is one item (an OpenAI token array), not one item per number.
    """
    if body.count(b",") < min(max_items, max_values):
        return None  # too few commas for either limit (nesting alone is caught by the parser)
    key = b'"' + list_field.encode() + b'"'
    if b"\\" in body:
        # Left to right, as a JSON parser pairs them: "\\" first, then "\"" cannot hide a closing quote.
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = values = items = 0
    counting = False  # inside the list being counted
    first_element = False  # the next token is the counted list's first element
    last_string = b""
    for match in _TOKENS.finditer(body):
        first = body[match.start()]
        if first == _QUOTE:
            if match.end() - match.start() == 1:
                return None  # an unterminated string: malformed, the parser reports where
            if depth == 1:
                last_string = match.group()
            first_element = False
            continue
        if first == _COMMA:
            values += 1
            items += counting and depth == 2
        elif first in (_OPEN_ARRAY, _OPEN_OBJECT):
            values += 1
            depth += 1
            if depth > MAX_DEPTH:
                return "too_deep"
            if depth == 2 and first == _OPEN_ARRAY and last_string == key:
                counting = first_element = True
                continue
        elif first in _CLOSING:
            depth -= 1
            counting = counting and depth >= 2
        else:  # a run of numbers
            commas = match.group().count(b",")
            values += commas
            if first_element and numbers_are_one_item:
                counting = False  # a flat token array: one item however long
            items += counting and depth == 2 and commas
        first_element = False
        # ``items`` counts commas between the list's elements: one less than the elements.
        if items >= max_items:
            return "too_many_items"
        if values > max_values:
            return "too_many_values"
    return None
