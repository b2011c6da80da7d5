"""Strict JSON for everything lowprec prints or writes (RFC 8259: no NaN / Infinity tokens).

A metric that is undefined (AUC of a window with one label class) or a value that overflowed is a
float NaN or ±inf in Python; `json.dumps` would write the bare tokens `NaN` / `Infinity`, which
strict parsers (jq, JavaScript's JSON.parse, Go, serde_json) reject. `finite_or_null` turns every
non-finite float (numpy's too) into None, i.e. JSON `null`, recursively; `dumps` is `json.dumps` of
that with `allow_nan=False`, so a non-finite float that slipped through fails loudly instead.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite_or_null(obj: Any) -> Any:
    """A copy of `obj` (dicts, lists, tuples, numpy scalars/arrays) with NaN/±inf floats as None."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_null(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` writing strict JSON: non-finite floats become null (see the module docstring)."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)


def is_int(x: Any) -> bool:
    """A JSON integer as Python reads it: an int, not a bool (True is an int to isinstance)."""
    return isinstance(x, int) and not isinstance(x, bool)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: with a key twice the last silently won (a plan's second
    "*" rule, a calibration's second "layers" dropping every range); JSON leaves it undefined."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {twice!r} appears twice in one object")
    return obj
