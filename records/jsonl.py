"""JSON-lines records: read line by line, each error naming the file, the line and the field; and the
items file (`items.jsonl`: one ``{"item_id", "text"}`` per line) that datasets and `marc precompute` read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from records.errors import DataError, require_file


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for every non-blank line; malformed lines raise `DataError`."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError.at(path, line_number, f"not valid UTF-8 ({error.reason})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError.at(path, line_number, f"not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError.at(path, line_number, f"expected a JSON object, got {type(record).__name__}")
            yield line_number, record


def id_field(record: dict[str, Any], field: str, path: Path, line: int) -> str:
    if field not in record:
        raise DataError.at(path, line, f"missing field '{field}'")
    value = record[field]
    # bool is an int subclass, but `true` is never a sensible id.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError.at(path, line, f"field '{field}' must be a string or an integer, got {value!r}")
    text = str(value)
    if not text.strip():
        raise DataError.at(path, line, f"field '{field}' is empty")
    return text


def iter_items_jsonl(path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream (item_id, text) from an items.jsonl file, validating every line as it goes.

    Raises `DataError` (file, line, field) for a missing file, bad JSON, a missing/ill-typed
    `item_id`, an empty `text`, or an item id seen before in the file.
    """
    path = require_file(Path(path), "items")
    seen: set[str] = set()
    for line, record in iter_records(path):
        item_id = id_field(record, "item_id", path, line)
        text = record.get("text")
        if "text" not in record:
            raise DataError.at(path, line, "missing field 'text'")
        if not isinstance(text, str):
            raise DataError.at(path, line, f"field 'text' must be a string, got {text!r}")
        if not text.strip():
            raise DataError.at(path, line, "field 'text' is empty")
        if item_id in seen:
            raise DataError.at(path, line, f"field 'item_id': duplicate item id {item_id!r}")
        seen.add(item_id)
        yield item_id, text
