"""`marc.json_out`: what the reports write is strict JSON - undefined metrics (NaN, infinities) are
null, numpy values plain numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from marc import json_out


def strict_loads(text: str) -> object:
    """json.loads that refuses the NaN/Infinity tokens Python's json accepts by default."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_at_any_depth() -> None:
    value = {
        "std": math.nan,
        "runs": [{"auc": np.float32(0.5), "loss": np.float64(np.inf)}, (1, -math.inf)],
        "array": np.array([0.25, np.nan]),
        "count": np.int64(3),
    }
    text = json_out.dumps(value, indent=2)
    assert strict_loads(text) == {
        "std": None,
        "runs": [{"auc": 0.5, "loss": None}, [1, None]],
        "array": [0.25, None],
        "count": 3,
    }


def test_python_json_alone_writes_nan_which_strict_parsers_refuse() -> None:
    # Why the module exists: the standard dumps writes the bare token.
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"std": math.nan}))


def test_values_json_cannot_hold_are_refused() -> None:
    with pytest.raises(TypeError):
        json_out.dumps({"when": object()})
