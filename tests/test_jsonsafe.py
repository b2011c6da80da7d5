"""Strict JSON: non-finite floats (undefined metrics) become null, never bare NaN / Infinity."""

import json
import math

import numpy as np

from lowprec.jsonsafe import dumps, finite_or_null


def strict(text):
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"bare {c}")))


def test_non_finite_floats_become_null_everywhere():
    obj = {"auc": math.nan, "ne": np.float32("inf"), "w": [1.5, -math.inf, (np.float64("nan"), 2)],
           "n": np.int64(3), "ok": np.bool_(True), "a": np.array([1.0, np.nan]), "s": "NaN"}
    out = strict(dumps(obj))
    assert out == {"auc": None, "ne": None, "w": [1.5, None, [None, 2]], "n": 3, "ok": True,
                   "a": [1.0, None], "s": "NaN"}
    assert finite_or_null({"x": 0.25}) == {"x": 0.25}


def test_the_cli_json_line_is_strict(capsys):
    """`--json` used to print bare NaN (train on an empty window, eval of a one-class window)."""
    from lowprec.cli import emit_json

    emit_json({"auc": float("nan"), "ne": np.float64(0.5), "windows": [{"auc": float("inf")}]})
    assert strict(capsys.readouterr().out) == {"auc": None, "ne": 0.5, "windows": [{"auc": None}]}
