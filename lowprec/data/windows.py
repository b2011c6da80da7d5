"""Window SPEC parsing, the one parser every command uses.

A SPEC is `3`, `0-4`, `5,7,9`, `all`, any comma-separated mix (`0-2,5`), or, matched against window
labels (data prepared by year/month/day), `label:2015`, `label:2016..2018`, `label:2016-01..2016-06`,
`label:2016..` (2016 on), `label:..2015` (up to 2015), `label:2015,2017`. Each part must select at least
one window (a part that matches nothing is an InputError naming it, as a missing window number is),
and window numbers are ASCII digits (`1_0` and `٣` are refused, not read as 10 and 3).
Specs are checked against the dataset's windows before anything is allocated: `0-99999999999` is
an error naming the dataset's range, not a set of 10**11 integers.

Windows that hold no rows (an empty or header-only input file, or one whose rows were all bad) are
dropped here, for every command at once (`select_windows`): a SPEC that selects only such windows is
an InputError naming them; one that also selects windows with rows skips them with a warning
(they would add nothing to any sum, metric or training step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

from lowprec.data.dataset import window_files
from lowprec.data.npyfiles import window_file
from lowprec.errors import InputError, user_os_errors, warn
from lowprec.fileio import file_fingerprint

USAGE = "use `3`, `0-4`, `5,7,9`, `all`, `label:A`, `label:A..B`, `label:A..` (A on) or `label:..B` (up to B)"


def _number(text: str) -> int:
    """A window number: ASCII digits only (int() also reads `1_0` as 10 and `٣` as 3)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _range(part: str, spec: Any) -> tuple[int, int]:
    lo_s, sep, hi_s = part.partition("-") if not part.startswith("-") else ("", "", "")
    try:
        lo = _number(lo_s if sep else part)
        hi = _number(hi_s) if sep else lo
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
            of = f" of {part_text(lo, hi)}" if hi > lo else ""  # ("window(s) [99] of 99" said nothing)
            raise InputError(f"window(s) {missing}{' ...' if len(missing) == 10 else ''}{of} "
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
            numbered = parse_windows(spec, meta.window_indices)
        except InputError as exc:
            raise InputError(f"{what}: {exc}") from None
        return _with_rows(numbered, meta, what)
    parts = [_label_part(p.strip(), text, what) for p in text[len("label:"):].split(",")]
    chosen = []
    for shown, lo, hi in parts:
        width = len(lo or hi)
        matched = [w.index for w in meta.windows
                   if len(w.label) == width and (not lo or lo <= w.label) and (not hi or w.label <= hi)]
        if not matched:
            labels = [w.label for w in meta.windows]
            listed = ", ".join(labels if len(labels) <= 20 else labels[:10] + ["..."] + labels[-5:])
            of = f" (in {text!r})" if len(parts) > 1 else ""
            raise InputError(f"{what}: {shown!r}{of} matches no window label (the {len(labels)} labels: {listed})")
        chosen += matched
    return _with_rows(sorted(set(chosen)), meta, what)


def _label_part(part: str, text: str, what: str) -> tuple[str, str, str]:
    """One comma-separated part of a `label:` SPEC -> (the part as written, low bound, high bound);
    an empty bound is open: `A..` is every label from A on, `..B` every label up to B. A part may
    repeat the `label:` prefix (`label:2015,label:2017`)."""
    bounds = part[len("label:"):] if part.startswith("label:") else part
    lo, sep, hi = (b.strip() for b in bounds.partition(".."))
    hi = hi if sep else lo
    bad = ("is empty" if not lo and not hi else
           "has more than one `..`" if ".." in hi else
           f"has bounds of different forms ({lo!r} and {hi!r}: write both alike, e.g. 2016..2018 or "
           f"2016-01..2016-06)" if lo and hi and len(lo) != len(hi) else
           f"runs backwards ({lo!r} comes after {hi!r})" if lo and hi and lo > hi else "")
    if bad:
        raise InputError(f"{what}: bad window SPEC {text!r}: the part {part!r} {bad}; {USAGE}")
    return f"label:{bounds}", lo, hi


def _with_rows(chosen: list[int], meta: Any, what: str) -> list[int]:
    """`chosen` without the windows that hold no rows (warned about); InputError if none is left."""
    empty = [w for w in chosen if meta.window(w).rows == 0]
    if not empty:
        return chosen
    names = ", ".join(f"{w} ({meta.window(w).label!r})" if meta.window(w).label else str(w) for w in empty[:10])
    names += " ..." if len(empty) > 10 else ""
    if len(empty) == len(chosen):
        raise InputError(f"{what}: window(s) {names} hold no rows (dataset.json: rows 0; was the input file empty, "
                         f"header-only or all bad rows?); choose windows with rows")
    warn(f"{what}: skipping window(s) {names}: they hold no rows")
    return [w for w in chosen if w not in set(empty)]


def window_fingerprint(ds: Any, w: int) -> str:
    """Fingerprint of window w's data, "window:" + sha256: the dataset's feature schema, the window's
    entry in dataset.json and its dense and sparse files (sampled beyond 16 MiB), not its labels (they
    may arrive later). Drift's history records it per window; training records it per training and
    validation window, so scoring can tell a window the model learned from."""
    return fingerprints(ds, w)[0]


def rows_fingerprint(ds: Any, w: int) -> str:
    """Fingerprint of window w's rows alone, "rows:" + sha256: the feature schema and the dense and
    sparse files, not the window's index, label or times. The same rows at another window number
    (a dataset prepared again from a later day, a window's files copied) have the same one: what a
    model learned from is told apart from held-out data wherever it sits (lowprec.train.seen_in_training)."""
    return fingerprints(ds, w)[1]


def fingerprints(ds: Any, w: int) -> tuple[str, str]:
    """(window_fingerprint, rows_fingerprint) of window w, its files read once for both."""
    prints = _file_prints(ds, w)

    def digest(kind: str, head: dict[str, Any]) -> str:
        h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
        for text in prints:
            h.update(text.encode())
        return f"{kind}:{h.hexdigest()}"

    features = _features(ds.meta)
    return (digest("window", dict(features, window=dataclasses.asdict(ds.meta.window(w)))),
            digest("rows", features))


def _features(meta: Any) -> dict[str, Any]:
    return {"dense": list(meta.dense_names),
            "sparse": [[f.name, f.num_embeddings, f.hotness, f.encoding] for f in meta.sparse]}


def _file_prints(ds: Any, w: int) -> list[str]:
    """The dense and sparse files' fingerprints (sampled beyond 16 MiB: lowprec.fileio.file_fingerprint)."""
    files, out = window_files(ds.root, w), []
    for kind in ("dense", "sparse"):
        path = window_file(files[kind], w)
        with user_os_errors(path, "read"):
            out.append(file_fingerprint(path, full_limit=16 << 20, sample=1 << 20))
    return out


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
