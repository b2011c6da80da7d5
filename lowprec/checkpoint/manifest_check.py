"""Precision fields of an artifact manifest: present, known, fit for their role, and agreeing with
the bytes in weights.safetensors.

A manifest edited by hand (or corrupted) must not load into a runtime that reads int4 rows as fp16 or
int8 layer weights as floats: every table, physical table and layer precision must parse
(`Precision.parse`), be one a table or layer can take, and match what is stored -- a physical
table's row width is `Precision.bytes_per_row(dim)`, a layer's weight dtype is int8 / float16 /
float32 for int8 / fp16 / fp32. A logical table stored whole in one physical table has its precision.
Anything else is an InputError naming the manifest and the entry.
"""

from __future__ import annotations

from typing import Any

from lowprec.errors import InputError
from lowprec.precision import Precision
from lowprec.serve.layers import LAYER_CODECS
from lowprec.serve.tables import TABLE_CODECS

_SAFETENSORS_DTYPE = {"int8": "I8", "float16": "F16", "float32": "F32"}  # torch dtype -> safetensors name


def _precision(value: Any, where: str, role: str) -> Precision:
    if not isinstance(value, str):
        raise InputError(f"{where}: precision {value!r} is not a string")
    p = Precision.parse(value, where)
    if p not in (TABLE_CODECS if role == "table" else LAYER_CODECS):
        raise InputError(f"{where}: a {role} cannot be stored in {p.value}")
    return p


def _entries(manifest: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = manifest.get(key)
    items = list(value.values()) if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(v, dict) for v in items):
        raise InputError(f"{where}: `{key}` must be a list or object of objects")
    return items


def check_serving(manifest: dict[str, Any], where: str) -> None:
    """Features name a physical table; each model table is served by non-empty groups of features."""
    keys = {str(t.get("key")) for t in _entries(manifest, "physical_tables", where)}
    features = _entries(manifest, "features", where)
    for i, f in enumerate(features):
        transform = f.get("transform")
        if str(f.get("table")) not in keys or not isinstance(transform, dict) or \
                not isinstance(transform.get("kind", ""), str):
            raise InputError(f"{where}: feature {i} must name a physical table and carry a transform "
                             f"object with a string `kind`")
    model = manifest.get("model")
    tables = model.get("tables") if isinstance(model, dict) else None
    serving = _entries(manifest, "serving", where)
    if not isinstance(tables, list) or len(serving) != len(tables):
        raise InputError(f"{where}: `serving` must have one entry per model table")
    for s, t in zip(serving, tables):
        groups = s.get("groups")
        ok = (isinstance(t, dict) and s.get("name") == t.get("name") and s.get("hotness") == t.get("hotness")
              and isinstance(groups, list) and groups
              and all(isinstance(g, list) and g and all(isinstance(i, int) and not isinstance(i, bool)
                                                        and 0 <= i < len(features) for i in g) for g in groups))
        if not ok:
            raise InputError(f"{where}: serving entry {s.get('name')!r} does not match its model table or "
                             f"names features outside 0..{len(features) - 1}")


def check_precisions(manifest: dict[str, Any], where: str, shapes: dict[str, tuple[list[int], str]] | None = None
                     ) -> None:
    """Raise InputError on a bad precision; `shapes` (tensor name -> (shape, dtype)) adds the byte checks."""
    model = manifest.get("model")
    dim = model.get("embedding_dim") if isinstance(model, dict) else None
    physical: dict[str, Precision] = {}
    for t in _entries(manifest, "physical_tables", where):
        key = t.get("key")
        p = physical[str(key)] = _precision(t.get("precision"), f"{where}: physical table {key!r}", "table")
        got = shapes.get(f"tables.{key}") if shapes is not None else None
        d = t.get("dim", dim)
        if got is not None and isinstance(d, int) and d > 0 and got[0][1:] != [p.bytes_per_row(d)]:
            raise InputError(f"{where}: physical table {key!r} says {p.value} ({p.bytes_per_row(d)} bytes a row "
                             f"at dim {d}) but weights.safetensors stores rows of {got[0][1:]} bytes")
    for t in _entries(manifest, "tables", where):
        name = t.get("name")
        p = _precision(t.get("precision"), f"{where}: table {name!r}", "table")
        parts = t.get("physical")
        if t.get("exact") and isinstance(parts, list) and len(parts) == 1 and physical.get(str(parts[0]), p) != p:
            raise InputError(f"{where}: table {name!r} says {p.value} but its physical table {parts[0]!r} "
                             f"is {physical[str(parts[0])].value}")
    layers = manifest.get("layers")
    if not isinstance(layers, dict):
        raise InputError(f"{where}: `layers` must be an object of layer name -> spec")
    for name, spec in layers.items():
        if not isinstance(spec, dict):
            raise InputError(f"{where}: layer {name!r} must be an object")
        p = _precision(spec.get("precision"), f"{where}: layer {name!r}", "layer")
        got = shapes.get(f"layers.{name}.weight") if shapes is not None else None
        if got is not None and got[1] != _SAFETENSORS_DTYPE[str(LAYER_CODECS[p].storage).removeprefix("torch.")]:
            raise InputError(f"{where}: layer {name!r} says {p.value} but its weight is stored as {got[1]}")
