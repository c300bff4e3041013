"""The items.jsonl reader (`records.jsonl`): it streams, stops at the first bad line naming it, and
needs no torch. (Every malformed-file case is in tests/marc/test_data.py, through the dataset loader.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from records.errors import DataError
from records.jsonl import iter_items_jsonl


def test_iter_items_jsonl_streams_until_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": 1, "text": "a"}\n\n{"item_id": 2, "text": "b"}\n{"item_id": 3}\n', encoding="utf-8"
    )
    stream = iter_items_jsonl(path)
    assert next(stream) == ("1", "a") and next(stream) == ("2", "b")
    with pytest.raises(DataError, match=r"items\.jsonl line 4: missing field 'text'"):
        next(stream)


def test_jsonl_module_works_without_torch(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    items = [
        {"item_id": 1, "text": "red shoes"},
        {"item_id": "b", "text": "blue phone"},
        {"item_id": "c", "text": "lamp"},
    ]
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from records.jsonl import iter_items_jsonl\n"
        f"print(len(list(iter_items_jsonl({str(path)!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "3"
