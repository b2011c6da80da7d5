"""Window SPEC parsing: `3`, `0-4`, `5,7,9`, `all`, or any comma-separated mix (`0-2,5`)."""

from __future__ import annotations

from lowprec.errors import InputError


def parse_windows(spec: str | int | list[int], available: list[int]) -> list[int]:
    """Turn a SPEC into a sorted list of window indices, each of which must exist in `available`."""
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, list):
        chosen = sorted(set(int(s) for s in spec))
    else:
        text = str(spec).strip()
        if text == "all":
            return sorted(available)
        chosen_set: set[int] = set()
        for part in text.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo_s, hi_s = part.split("-", 1)
                    lo, hi = int(lo_s), int(hi_s)
                    if hi < lo:
                        raise ValueError
                    chosen_set.update(range(lo, hi + 1))
                else:
                    chosen_set.add(int(part))
            except ValueError:
                raise InputError(
                    f"bad window SPEC {spec!r}: use `3`, `0-4`, `5,7,9` or `all`"
                ) from None
        chosen = sorted(chosen_set)
    missing = [w for w in chosen if w not in set(available)]
    if missing:
        raise InputError(
            f"window(s) {missing} not in the dataset (it has windows {format_windows(available)})"
        )
    if not chosen:
        raise InputError(f"window SPEC {spec!r} selects no window")
    return chosen


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
