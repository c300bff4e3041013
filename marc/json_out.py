"""JSON that other tools can read: NaN and infinities (undefined metrics, a std over one seed) become
null, numpy scalars and arrays become numbers and lists, tuples lists. `json.dumps` alone writes bare
NaN, which is not JSON (jq, browsers and most parsers reject the file)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (dicts, lists, tuples)."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """Strict JSON of ``value`` (non-finite floats as null); raises on anything else JSON cannot hold."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)
