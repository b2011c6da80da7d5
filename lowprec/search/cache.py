"""The search's measurement cache: PLAN.cache.json beside --out, so an interrupted search resumes.

{"fingerprint": F, "measurements": {option key: {ne, auc, rows, ne_se}}}, rewritten (atomically)
after every round of measurements. F fingerprints the model, data, windows, calibration and settings
(lowprec.search.run.fingerprint); a cache of another fingerprint is measured again. A cache lowprec
wrote (a JSON object with a "fingerprint") whose measurements have the wrong shape is ignored with a
warning naming it, and rebuilt. A file there that lowprec did not write (not JSON, or no
"fingerprint") is a user's: it is left as it is, with a warning, and the search keeps no cache.
`read_scratch` / `ignore` read the latency objective's timing cache too (lowprec.search.latency),
which lives in lowprec's own cache directory and is always rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lowprec import distributed as dist
from lowprec.errors import warn
from lowprec.evaluation.metrics import BinaryStats
from lowprec.fileio import atomic_write_text


class MeasurementCache:
    """Option key -> {ne, auc, rows, ne_se} on disk, flushed after every measurement (round).
    Under torchrun rank 0 reads and writes the file; the other ranks get its contents from rank 0."""

    def __init__(self, path: Path | None, fingerprint: str):
        self.path, self.fingerprint, self.data = (path if dist.is_main() else None), fingerprint, {}
        if self.path is not None and self.path.exists():
            obj, exc = _parse(self.path)
            why = None
            if exc is not None:
                why = f"not readable JSON ({exc})"
            elif not (isinstance(obj, dict) and "fingerprint" in obj):
                why = f"a JSON {type(obj).__name__} without a 'fingerprint'"
            if why:  # a user's file, not one lowprec wrote
                warn(f"{self.path}: {why}, so not lowprec's measurement cache: left as it is, and this search "
                     f"keeps no cache (an interrupted run starts over; choose another --out to keep one)")
                self.path = None
            else:
                self.data = _measurements(self.path, obj, fingerprint)
        self.data = dist.broadcast_json(self.data, "sensitivity cache")

    def get(self, key: str) -> dict[str, float] | None:
        hit = self.data.get(key)
        return hit if hit is not None and "ne_se" in hit else None  # older caches lack the noise

    def put(self, key: str, stats: BinaryStats, ne_se: float = 0.0) -> None:
        self.record({key: measurement(stats, ne_se)})

    def record(self, measurements: dict[str, dict[str, float]]) -> None:
        self.data.update(measurements)
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(
                {"fingerprint": self.fingerprint, "measurements": self.data}, indent=1))


def _measurements(path: Path, obj: dict[str, Any], fingerprint: str) -> dict[str, dict[str, float]]:
    """The cached measurements of this search (same fingerprint) in the cache `obj` read from `path`,
    else none."""
    what = "search's measurement cache"
    if obj.get("fingerprint") != fingerprint:
        return {}  # another search's (other model, data or settings), or none: measured again
    data = obj.get("measurements")
    if not isinstance(data, dict):
        return ignore(path, what, f"'measurements' is a {type(data).__name__}, not an object")
    for key, m in data.items():  # (entries of older caches lack ne_se: measured again, see `get`)
        if not (isinstance(m, dict) and all(is_number(m.get(k)) for k in ("ne", "auc", "rows"))
                and is_number(m.get("ne_se", 0.0))):
            return ignore(path, what, f"measurement {key!r} is not {{ne, auc, rows, ne_se}} numbers")
    return data


def read_scratch(path: Path, what: str) -> dict[str, Any]:
    """A JSON object lowprec keeps for itself (a cache of measurements): {} when absent, and {} with a
    warning naming the file when it cannot be read, does not parse or is not an object (it is rebuilt)."""
    if not path.is_file():
        return {}
    obj, exc = _parse(path)
    if exc is not None:
        return ignore(path, what, f"not readable JSON: {exc}")
    if not isinstance(obj, dict):
        return ignore(path, what, f"a JSON {type(obj).__name__}, not an object")
    return obj


def _parse(path: Path) -> tuple[Any, Exception | None]:
    """The JSON value in `path`, or the error that kept it from being read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, exc


def ignore(path: Path, what: str, why: str) -> dict[str, Any]:
    """{} after warning that the scratch file `path` is not used (the caller measures again)."""
    warn(f"{path}: ignoring the {what} ({why}); measuring again")
    return {}


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def measurement(stats: BinaryStats, ne_se: float) -> dict[str, float]:
    return {"ne": stats.ne, "auc": stats.auc, "rows": stats.weight, "ne_se": ne_se}
