"""Window SPEC parsing, the one parser every command uses.

A SPEC is `3`, `0-4`, `5,7,9`, `all`, any comma-separated mix (`0-2,5`), or, matched against window
labels (data prepared by year/month/day), `label:2015`, `label:2016..2018`, `label:2016-01..2016-06`.
Specs are checked against the dataset's windows before anything is allocated: `0-99999999999` is
an error naming the dataset's range, not a set of 10**11 integers.
"""

from __future__ import annotations

import itertools
from typing import Any

from lowprec.errors import InputError

USAGE = "use `3`, `0-4`, `5,7,9`, `all` or `label:A..B`"


def _range(part: str, spec: Any) -> tuple[int, int]:
    lo_s, sep, hi_s = part.partition("-") if not part.startswith("-") else ("", "", "")
    try:
        lo = int(lo_s if sep else part)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise InputError(f"bad window SPEC {spec!r}: {USAGE}") from None
    if hi < lo or lo < 0:
        raise InputError(f"bad window SPEC {spec!r}: {part!r} is not a range of window numbers; {USAGE}")
    return lo, hi


def parse_windows(spec: str | int | list[int], available: list[int]) -> list[int]:
    """Turn a numeric SPEC into a sorted list of window indices, each of which must exist in `available`."""
    have = sorted(set(available))
    if isinstance(spec, bool) or not isinstance(spec, (str, int, list)):
        raise InputError(f"bad window SPEC {spec!r}: {USAGE}")
    if isinstance(spec, list):
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec):
            raise InputError(f"bad window list {spec!r}: window numbers must be integers")
        parts = [(s, s) for s in spec]
    else:
        text = str(spec).strip()
        if text == "all":
            if not have:
                raise InputError("the dataset has no windows")
            return have
        parts = [_range(p.strip(), spec) for p in text.split(",")]
    chosen: list[int] = []
    have_set = set(have)
    for lo, hi in parts:
        inside = [w for w in have if lo <= w <= hi]
        if len(inside) != hi - lo + 1:  # never enumerates lo..hi: a huge range costs nothing
            missing = list(itertools.islice((w for w in range(lo, hi + 1) if w not in have_set), 10))
            raise InputError(f"window(s) {missing}{' ...' if len(missing) == 10 else ''} of {part_text(lo, hi)} "
                             f"not in the dataset (it has windows {format_windows(have) or 'none'})")
        chosen += inside
    if not chosen:
        raise InputError(f"window SPEC {spec!r} selects no window")
    return sorted(set(chosen))


def select_windows(spec: Any, meta: Any, what: str = "--windows") -> list[int]:
    """Any SPEC, numeric or `label:...`, resolved against a DatasetMeta; errors name `what`."""
    if spec is None:
        raise InputError(f"no {what} windows given")
    text = str(spec).strip() if not isinstance(spec, list) else None
    if text is None or not text.startswith("label:"):
        try:
            return parse_windows(spec, meta.window_indices)
        except InputError as exc:
            raise InputError(f"{what}: {exc}") from None
    chosen = []
    for part in text[len("label:"):].split(","):
        lo, _, hi = part.strip().partition("..")
        hi = hi or lo
        chosen += [w.index for w in meta.windows if lo <= w.label <= hi and len(w.label) == len(lo)]
    if not chosen:
        raise InputError(f"{what}: {text!r} matches no window label "
                         f"(labels: {[w.label for w in meta.windows][:20]})")
    return sorted(set(chosen))


def part_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def format_windows(windows: list[int]) -> str:
    """Compact form of a window list: [0,1,2,5] -> '0-2,5'."""
    ws = sorted(windows)
    parts: list[str] = []
    i = 0
    while i < len(ws):
        j = i
        while j + 1 < len(ws) and ws[j + 1] == ws[j] + 1:
            j += 1
        parts.append(str(ws[i]) if i == j else f"{ws[i]}-{ws[j]}")
        i = j + 1
    return ",".join(parts)
