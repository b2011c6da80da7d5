"""Recipes: one TOML per data set / model family with windows, budgets, candidates and observer.

    [windows]    train = "0-3"   calibrate = "4"   evaluate = "5-7"   monitor = "5-13"
    [budgets]    max_ne_increase = "0.1%"   max_auc_drop = 0.001   memory_budget = 0 (0: none)
    [candidates] table_precisions = ["fp32", ...]   layer_precisions = [...]   sharing_ratios = [4, 16]
    [calibrate]  method = "minmax"   percentile = 99.99
    [search]     max_rows = 50000   range_method = "l2"   objective = "bytes"

Commands take `--recipe FILE`; any flag given explicitly overrides the recipe's value. Window
values are SPEC strings (`4`, `0-3`, `5,7`, `all`) or, for data prepared by year/month, resolved
against window labels with `label:2015` / `label:2016..2018` / `label:2016-01..2016-06`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from lowprec.errors import InputError

SCHEMA: dict[str, set[str]] = {
    "windows": {"train", "calibrate", "evaluate", "test", "monitor"},
    "budgets": {"max_ne_increase", "max_auc_drop", "memory_budget"},
    "candidates": {"table_precisions", "layer_precisions", "sharing_ratios", "sharing_precisions"},
    "calibrate": {"method", "percentile", "max_rows"},
    "search": {"max_rows", "range_method", "objective", "max_rounds", "margin"},
    "recipe": {"name", "description", "data"},
}


def load_recipe(path: str | Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe not found: {path}")
    try:
        obj = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from exc
    for section, values in obj.items():
        if section not in SCHEMA:
            raise InputError(f"{path}: unknown section [{section}] (known: {sorted(SCHEMA)})")
        if not isinstance(values, dict):
            raise InputError(f"{path}: [{section}] must be a table")
        unknown = set(values) - SCHEMA[section]
        if unknown:
            raise InputError(f"{path}: unknown key(s) {sorted(unknown)} in [{section}] "
                             f"(known: {sorted(SCHEMA[section])})")
    return obj


def pick(explicit: Any, recipe: dict[str, dict[str, Any]], section: str, key: str, default: Any = None) -> Any:
    """The explicit flag if given, else the recipe's value, else the default."""
    if explicit is not None and explicit != ():
        return explicit
    return recipe.get(section, {}).get(key, default)


def parse_fraction(value: Any, what: str) -> float:
    """'0.1%' -> 0.001; 0.001 -> 0.001."""
    text = str(value).strip()
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{what}: {value!r} is not a number or percentage") from None


def resolve_windows(spec: Any, meta, what: str) -> list[int]:
    """A window SPEC, or `label:A` / `label:A..B` matched against window labels (years, months)."""
    from lowprec.data.windows import parse_windows

    if spec is None:
        raise InputError(f"no {what} windows: give the flag or a recipe with [windows] {what}")
    text = str(spec)
    if not text.startswith("label:"):
        return parse_windows(text, meta.window_indices)
    chosen = []
    for part in text[len("label:"):].split(","):
        lo, _, hi = part.partition("..")
        hi = hi or lo
        chosen += [w.index for w in meta.windows if lo <= w.label <= hi and len(w.label) == len(lo)]
    if not chosen:
        raise InputError(f"{what} windows {text!r} match no window label "
                         f"(labels: {[w.label for w in meta.windows][:20]})")
    return sorted(set(chosen))
