"""Recipes: one TOML per data set / model family with windows, budgets, candidates and observer.

    [windows]    train = "0-3"   validate = "4"   calibrate = "4"   evaluate = "5-7"   monitor = "5-13"
    [budgets]    max_ne_increase = "0.1%"   max_auc_drop = 0.001   memory_budget = 500000000 (bytes; omit: none)
    [candidates] table_precisions = ["fp32", ...]   layer_precisions = [...]   sharing_ratios = [4, 16]
                 tier_layouts = ["0.02:fp16/int4"] (lowprec.serve.tiers.parse_layout)
    [calibrate]  method = "minmax"   percentile = 99.99
    [search]     max_rows = 50000   range_method = "l2"   objective = "bytes"   accept = "interval"

Who reads what: `lowprec train --recipe` takes [windows] train and validate (early stopping);
`lowprec search --recipe` takes [windows] calibrate and evaluate, [budgets], [candidates] (sharing_precisions: the precisions a
shared table may take, among the table precisions), [calibrate] and [search]; `lowprec drift --recipe` takes [windows] monitor;
[recipe] is description only. Every key is typed here; an unknown section or key, or a value of the
wrong type (or a negative, NaN or infinite number), is an InputError naming the key and the file;
so is a [calibrate] value calibration refuses (`calib_config`), whichever command reads the recipe
and whether or not it calibrates.
`pick_where` says where a value came from (the flag or FILE: [section] key), for messages that
must name it.

Commands take `--recipe FILE`; any flag given explicitly overrides the recipe's value. Window
values are SPEC strings (`4`, `0-3`, `5,7`, `all`) or, for data prepared by year/month, resolved
against window labels with `label:2015` / `label:2016..2018` / `label:2016-01..2016-06`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from lowprec.errors import InputError
from lowprec.tomlfile import read_toml

SCHEMA: dict[str, set[str]] = {
    "windows": {"train", "validate", "calibrate", "evaluate", "test", "monitor"},
    "budgets": {"max_ne_increase", "max_auc_drop", "memory_budget"},
    "candidates": {"table_precisions", "layer_precisions", "sharing_ratios", "sharing_precisions", "tier_layouts"},
    "calibrate": {"method", "percentile", "max_rows"},
    "search": {"max_rows", "range_method", "objective", "max_rounds", "margin", "accept"},
    "recipe": {"name", "description", "data"},
}
_NUM = (int, float)
_STR_OR_LIST = (str, list)
_BARE = re.compile(r"[A-Za-z0-9_-]+")  # a TOML bare key
TYPES: dict[str, tuple[type, ...]] = {  # "section.key" -> accepted TOML value types (default: str or int)
    "budgets.max_ne_increase": (str, *_NUM), "budgets.max_auc_drop": (str, *_NUM),
    "budgets.memory_budget": (int,), "candidates.table_precisions": _STR_OR_LIST,
    "candidates.layer_precisions": _STR_OR_LIST, "candidates.sharing_ratios": _STR_OR_LIST,
    "candidates.sharing_precisions": _STR_OR_LIST, "candidates.tier_layouts": _STR_OR_LIST,
    "calibrate.method": (str,),
    "calibrate.percentile": _NUM, "calibrate.max_rows": (int,), "search.max_rows": (int,),
    "search.range_method": (str,), "search.objective": (str,), "search.max_rounds": (int,),
    "search.margin": _NUM, "search.accept": (str,),
    "recipe.name": (str,), "recipe.description": (str,), "recipe.data": (str,),
}


_PRECISIONS = 'a list of precisions such as ["fp16", "int8"] (or one comma-separated string)'
_BUDGET = 'a number >= 0 or a percentage string such as "0.1%"'
_AT_LEAST_1 = "a whole number >= 1"
TAKES: dict[str, str] = {  # "section.key" -> what it takes, in TOML's words, for messages
    "budgets.max_ne_increase": _BUDGET, "budgets.max_auc_drop": _BUDGET,
    "budgets.memory_budget": "a whole number of bytes >= 0",
    "candidates.table_precisions": _PRECISIONS, "candidates.layer_precisions": _PRECISIONS,
    "candidates.sharing_precisions": _PRECISIONS,
    "candidates.sharing_ratios": "a list of numbers > 1 such as [4, 16]",
    "candidates.tier_layouts": 'a list of tier layouts such as ["0.02:fp16/int4"]',
    "calibrate.method": 'a string such as "minmax"', "calibrate.percentile": "a number in (50, 100]",
    "calibrate.max_rows": _AT_LEAST_1, "search.max_rows": _AT_LEAST_1, "search.max_rounds": _AT_LEAST_1,
    "search.range_method": 'a string such as "l2"', "search.objective": '"bytes" or "latency"',
    "search.margin": "a number in (0, 1]", "search.accept": '"interval" or "point"',
}
_TAKES_SECTION = {"windows": 'a window SPEC such as "0-3", "5,7" or "all" (or one window number)',
                  "recipe": "a string"}


def toml_text(value: Any) -> str:
    """A TOML value as the recipe spells it (true, not Python's True; "x", not 'x'; nan, inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k if _BARE.fullmatch(k) else json.dumps(k)} = {toml_text(v)}"
                               for k, v in value.items()) + "}"
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _check_value(path: Path, section: str, key: str, value: Any) -> None:
    kinds = TYPES.get(f"{section}.{key}", (str, int))
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and isinstance(value, list):
        ok = all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)
        if ok and (section, key) == ("candidates", "sharing_ratios"):
            ok = all(isinstance(v, str) or (math.isfinite(v) and v > 1) for v in value)
    if ok and isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
        ok = False
    if not ok:
        takes = TAKES.get(f"{section}.{key}") or _TAKES_SECTION.get(section, "a string or a number")
        raise InputError(f"{path}: [{section}] {key} = {toml_text(value)}: expected {takes}")


def load_recipe(path: str | Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    path = Path(path)
    obj = read_toml(path, "recipe")
    for section, values in obj.items():
        if section not in SCHEMA:
            raise InputError(f"{path}: unknown section [{section}] (known: {sorted(SCHEMA)})")
        if not isinstance(values, dict):
            raise InputError(f"{path}: [{section}] must be a table")
        unknown = set(values) - SCHEMA[section]
        if unknown:
            raise InputError(f"{path}: unknown key(s) {sorted(unknown)} in [{section}] "
                             f"(known: {sorted(SCHEMA[section])})")
        for key, value in values.items():
            _check_value(path, section, key, value)
    calib_config(obj, path, ())  # [calibrate] checked on every read, not only when a search calibrates
    return obj


def calib_config(recipe: dict[str, dict[str, Any]], path: Any, windows: tuple[int, ...]):
    """The calibration the recipe's [calibrate] describes (lowprec.calibrate.CalibConfig) on `windows`;
    its errors name the recipe and key."""
    from lowprec.calibrate import CalibConfig

    c, at = recipe.get("calibrate", {}), f"{path}: [calibrate]"
    max_rows = c.get("max_rows")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise InputError(f"{at} max_rows: {max_rows!r} is not a whole number >= 1")
    try:
        return CalibConfig(windows, c.get("method", "minmax"), float(c.get("percentile", 99.99)), max_rows=max_rows)
    except (InputError, TypeError, ValueError) as exc:
        raise InputError(f"{at}: {exc}") from None


def pick(explicit: Any, recipe: dict[str, dict[str, Any]], section: str, key: str, default: Any = None) -> Any:
    """The explicit flag if given, else the recipe's value, else the default."""
    if explicit is not None and explicit != ():
        return explicit
    return recipe.get(section, {}).get(key, default)


def pick_where(explicit: Any, recipe: dict[str, dict[str, Any]], path: str | Path | None, section: str, key: str,
               flag: str, default: Any = None) -> tuple[Any, str]:
    """`pick`, and where the value came from for messages: `flag` (given, or the default) or
    `PATH: [section] key` (the recipe's)."""
    if explicit is not None and explicit != ():
        return explicit, flag
    if key in recipe.get(section, {}):
        return recipe[section][key], f"{path}: [{section}] {key}"
    return default, flag


def parse_fraction(value: Any, what: str) -> float:
    """'0.1%' -> 0.001; 0.001 -> 0.001. NaN and infinities are refused (InputError naming `what`)."""
    text = str(value).strip()
    try:
        x = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{what}: {value!r} is not a number or percentage") from None
    if not math.isfinite(x):
        raise InputError(f"{what}: {value!r} is not a finite number")
    return x


def resolve_windows(spec: Any, meta, key: str, where: str) -> list[int]:
    """A window SPEC, or `label:A` / `label:A..B` matched against window labels (years, months), of
    the recipe's [windows] `key`; `where` names the flag or recipe key it came from (`pick_where`)."""
    from lowprec.data.windows import select_windows

    if spec is None:
        raise InputError(f"no {key} windows: give {where} or a recipe with [windows] {key}")
    return select_windows(spec, meta, where)


def pick_windows(explicit: Any, recipe: dict[str, dict[str, Any]], path: str | Path | None, key: str, flag: str,
                 meta, optional: bool = False) -> tuple[list[int], str]:
    """The windows of `flag` if given, else of the recipe's [windows] `key`, and where they came from;
    `optional`: none given is no windows ([]), not an error."""
    spec, where = pick_where(explicit, recipe, path, "windows", key, flag)
    if spec is None and optional:
        return [], where
    return resolve_windows(spec, meta, key, where), where
