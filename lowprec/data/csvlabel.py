"""A CSV schema's label rule: which cells of the label column are positive (docs/csv-schema.md).

Three forms, parsed once when the schema is read:

- no `positive`: the cell is `1`/`true`/`yes` (positive) or `0`/`false`/`no` (negative), any case;
- a comparison with a finite number, `positive = ">= 4"` (operators >= > <= < == !=): the cell must
  be a finite number;
- exact values, `positive = "click"` or `["click", "purchase"]`: those are positive, any other
  non-empty cell negative.

A rule that is none of these is refused, naming the schema file and the key: a string that starts
like a comparison but is not one (`"=> 1"`, `">= abc"`), or an exact value that is a number (`"1.0"`
never matches a cell `1`: write `"== 1"`), would otherwise make every label 0 without a word.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from lowprec.errors import InputError

_COMPARE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}
FORMS = ('accepted: ">= 4" (a comparison with a number: >=, >, <=, <, ==, !=), "click" or '
         '["click", "purchase"] (the exact positive values, not numbers), or no `positive` key '
         '(1/true/yes positive, 0/false/no negative)')


@dataclass(frozen=True)
class LabelRule:
    column: str
    op: str | None = None  # comparison against `threshold`
    threshold: float = 0.0
    values: frozenset[str] | None = None  # positive values

    def __call__(self, text: str) -> int | None:
        """0/1, or None when the value cannot be read under this rule."""
        v = text.strip()
        if self.values is not None:
            return int(v in self.values) if v else None
        if self.op is None:
            low = v.lower()
            return 1 if low in _TRUE else 0 if low in _FALSE else None
        x = _number(v)
        if x is None:
            return None
        ops = {">=": x >= self.threshold, "<=": x <= self.threshold, ">": x > self.threshold,
               "<": x < self.threshold, "==": x == self.threshold, "!=": x != self.threshold}
        return int(ops[self.op])

    def why(self, text: str) -> str:
        """Why a cell this rule could not read (None above) makes its row bad, with the fix its value
        suggests: numbers under the default rule (0.0/1.0 from a dataframe export, click counts, -1/1)."""
        v = text.strip()
        if not v:
            return "the label is empty"
        if self.op is None and self.values is None and _number(v) is not None:
            return (f"label {v!r} is a number; without a `positive` key a label must be 1/true/yes or "
                    f"0/false/no. For numeric labels set a comparison in the schema, e.g. positive = \"> 0\"")
        if self.op is not None:
            return f"label {v!r} is not a finite number, which positive = \"{self.op} {self.threshold:g}\" compares"
        return (f"label {v!r} is none of 1/true/yes, 0/false/no (the rule without a `positive` key). For other "
                f"labels list the values that mark a positive in the schema, e.g. positive = [{json.dumps(v)}] if "
                f"{v!r} is one (any other non-empty value is then negative)")


def plain_float(text: str) -> float:
    """float(text) for numbers as logs write them: Python's own extras, digit-group underscores
    (`1_5` would be 15) and non-ASCII digits (`١٢`), are ValueErrors, not silent numbers."""
    if "_" in text or not text.isascii():
        raise ValueError(f"{text!r} is not a plain decimal number")
    return float(text)


def plain_int(text: str) -> int:
    """int(text) for integers as people type them (surrounding spaces and a sign allowed): digit-group
    underscores (`1_0` would be 10) and non-ASCII digits (`٣`) are ValueErrors, as in `plain_float`."""
    t = text.strip()
    digits = t[1:] if t[:1] in ("-", "+") else t
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{text!r} is not a plain decimal integer")
    return int(text)


def _number(text: str) -> float | None:
    """A finite number, or None (not a number, NaN or an infinity)."""
    try:
        x = plain_float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def label_rule(where: str, column: str, positive: Any) -> LabelRule:
    """The rule of schema `where` for label `column` and its `positive` value (None: absent)."""
    if positive is None:
        return LabelRule(column)
    bad = f"{where}: key 'positive' = {positive!r}"
    if isinstance(positive, str) and positive.strip()[:1] in ("<", ">", "=", "!"):
        m = _COMPARE.match(positive)
        x = _number(m.group(2)) if m else None
        if m is None or x is None:
            raise InputError(f"{bad} is not a comparison with a finite number; {FORMS}")
        return LabelRule(column, op=m.group(1), threshold=x)
    values = [positive] if isinstance(positive, str) else positive
    if not (isinstance(values, list) and values and all(isinstance(v, str) and v.strip() for v in values)):
        raise InputError(f"{bad} must be a comparison string or a non-empty list of non-empty strings; {FORMS}")
    numbers = [v.strip() for v in values if _number(v) is not None]
    if numbers:
        raise InputError(f"{bad}: {numbers[0]!r} is a number, and as an exact value it would not match "
                         f"cells written another way (1 vs 1.0); write a comparison such as "
                         f"\"== {numbers[0]}\"; {FORMS}")
    return LabelRule(column, values=frozenset(v.strip() for v in values))
