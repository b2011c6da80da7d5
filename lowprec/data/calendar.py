"""Calendar windows: rows routed to the year, month or day their time falls in (UTC's calendar, or an
IANA time zone's), whatever the input order; used by MovieLens and by CSV schemas with a time column."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data.dataset import DatasetWriter
from lowprec.data.rawinput import CHUNK_ROWS
from lowprec.errors import InputError


def period_keys(ts: np.ndarray, period: str, zone: str | None = None) -> np.ndarray:
    """Calendar period (numpy datetime64 of unit Y, M or D) of each unix timestamp (seconds): UTC's,
    or the IANA time zone `zone`'s (its local calendar, daylight saving time included)."""
    units = {"year": "Y", "month": "M", "day": "D"}
    if period not in units:
        raise InputError(f"window period {period!r}: use one of {', '.join(units)}")
    secs = np.floor(np.asarray(ts, dtype=np.float64)).astype(np.int64)
    if zone is not None:
        secs = secs + utc_offsets(secs, zone)
    return secs.astype("datetime64[s]").astype(f"datetime64[{units[period]}]")


def utc_offsets(secs: np.ndarray, zone: str) -> np.ndarray:
    """Seconds to add to each unix time for `zone`'s local wall-clock time. Offsets are looked up once
    a quarter-hour (every time zone's offsets change on one); a quarter-hour in which one changes is
    looked up row by row."""
    import zoneinfo

    tz = zoneinfo.ZoneInfo(zone)

    def offset(t: int) -> int:
        return int(dt.datetime.fromtimestamp(t, tz).utcoffset().total_seconds())  # (the zone's at that instant)

    quarters, where = np.unique(secs // 900, return_inverse=True)
    first = np.array([offset(int(q) * 900) for q in quarters], dtype=np.int64)
    last = np.array([offset(int(q) * 900 + 899) for q in quarters], dtype=np.int64)
    out = first[where]
    for i in np.flatnonzero(first[where] != last[where]):
        out[i] = offset(int(secs[i]))
    return out


def period_info(key: np.datetime64, zone: str | None = None) -> dict[str, str]:
    """Window label ("2014", "2014-03", "2014-03-07") and ISO start/end (end exclusive) of a period:
    UTC's (`...Z`), or the local midnights of `zone`, with their UTC offsets (`2024-03-10T00:00:00-08:00`)."""
    if zone is None:
        return {"label": str(key), "start": f"{np.datetime64(key, 's')}Z", "end": f"{np.datetime64(key + 1, 's')}Z"}
    import zoneinfo

    tz = zoneinfo.ZoneInfo(zone)

    def midnight(k: np.datetime64) -> str:
        d = np.datetime64(k, "D").astype(object)
        return dt.datetime(d.year, d.month, d.day, tzinfo=tz).isoformat()

    return {"label": str(key), "start": midnight(key), "end": midnight(key + 1)}


class CalendarWindows:
    """Routes rows to calendar windows by timestamp, whatever the input order.

    Rows are spooled per period into raw files under `<root>/.spool` (opened only while appending, so
    thousands of periods need no open file handles); `finish` writes the periods in time order, each
    sorted by time (stable), in chunks, and removes the spool.
    """

    def __init__(self, writer: DatasetWriter, period: str, zone: str | None = None):
        self.writer, self.period, self.zone = writer, period, zone
        self.spool = writer.root / ".spool"
        self.spool.mkdir()
        self.rows: dict[np.datetime64, int] = {}
        self.sorted: dict[np.datetime64, bool] = {}
        self.last: dict[np.datetime64, float] = {}

    def start_file(self, path: Path) -> None:
        pass

    def _files(self, key: np.datetime64) -> list[tuple[Path, Any]]:
        base = self.spool / str(key)
        w = (len(self.writer.dense_names), self.writer.slots)
        kinds = (("dense", np.float32, w[0]), ("sparse", np.int32, w[1]), ("labels", np.int32, 1),
                 ("time", np.float64, 1))
        return [(Path(f"{base}.{k}"), (dtype, width)) for k, dtype, width in kinds]

    def append(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, times: np.ndarray) -> None:
        keys = period_keys(times, self.period, self.zone)
        order = np.argsort(keys, kind="stable")  # group by period, keeping arrival order inside
        keys = keys[order]
        cuts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1], [True]]))
        for a, b in zip(cuts[:-1], cuts[1:]):
            key, sel = keys[a], order[a:b]
            t = times[sel]
            ok = bool(np.all(t[1:] >= t[:-1])) and t[0] >= self.last.get(key, -np.inf)
            self.sorted[key] = self.sorted.get(key, True) and ok
            self.last[key] = float(t[-1])
            self.rows[key] = self.rows.get(key, 0) + len(sel)
            for (path, (dtype, _)), arr in zip(self._files(key), (dense, sparse, labels, times)):
                with open(path, "ab") as fh:
                    fh.write(memoryview(np.ascontiguousarray(arr[sel], dtype=dtype)))  # ENOSPC, not a short count

    def finish(self) -> None:
        for key in sorted(self.rows):
            n = self.rows[key]
            arrs = [np.memmap(p, dtype=d, mode="r", shape=(n, w)) for p, (d, w) in self._files(key)]
            order = None if self.sorted[key] else np.argsort(arrs[3][:, 0], kind="stable")
            ww = self.writer.window(**period_info(key, self.zone))
            for a in range(0, n, CHUNK_ROWS):
                idx = slice(a, min(a + CHUNK_ROWS, n)) if order is None else order[a : a + CHUNK_ROWS]
                ww.append(arrs[0][idx], arrs[1][idx], arrs[2][idx, 0])
            self.writer.add_window(ww)
            del arrs
        shutil.rmtree(self.spool)
