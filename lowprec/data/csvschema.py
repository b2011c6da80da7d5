"""The CSV schema: a TOML file saying what each column of any CSV means (docs/csv-schema.md), the
time column's formats and the window option. lowprec.data.csvrows reads the records with it.

The schema (read with tomllib, validated with errors naming the offending key) declares the label column
and its positive rule (lowprec.data.csvlabel), dense columns (transform none or log1p(max(x, 0)), a fill for empty cells),
categorical columns (hashed, or vocabulary-mapped in order of first appearance; optionally multi-hot
with a separator and a hotness), and an optional time column (unix seconds, unix milliseconds or ISO
8601; naive ISO times are UTC) used for calendar windows.

Categorical ids: id 0 is reserved for an empty cell (single-hot), or for a new value once a capped
vocabulary is full; hashing is id = 1 + blake2b-64(utf-8 value) mod (num_embeddings - 1), stable across
runs and machines. Multi-hot cells are split on `sep`, empty items dropped, the first `hotness` items
kept (the rest counted as truncated) and padded with -1; an empty cell is an empty bag.

Windows: `file` (one per input file), `rows:N`, or `year|month|day` of the time column. Calendar
windows spool rows per period inside the output's temporary directory and then write the periods in
time order, each sorted by time (stable), so the input need not be sorted and memory stays bounded.
Malformed rows are skipped, counted and reported with file:line like the Criteo reader.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowprec.data.csvlabel import LabelRule, label_rule, plain_float, plain_int
from lowprec.data.dataset import MAX_HOTNESS
from lowprec.errors import InputError
from lowprec.tomlfile import read_toml

# unix seconds of years 1..9998: every day, month and year window of such a time starts and ends
# at a date Python can write (a year-9999 window would end in year 10000)
TIME_MIN = dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc).timestamp()
TIME_MAX = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc).timestamp()
TIME_YEARS = "years 1-9998"
DATE_LIKE = (19000101, 21001231)  # unix seconds that read as YYYYMMDD dates of 1900-2100 (all in August 1970)
TIME_FORMATS = {"auto": "unix seconds, or ISO 8601", "unix": "unix seconds", "unix_ms": "unix milliseconds",
                "iso": "ISO 8601"}  # time_format -> what it reads
CALENDAR = ("year", "month", "day")
F32_LIMIT = 2.0**128 - 2.0**103  # the least |x| a float32 cast makes inf (dense values are stored as float32)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOP_KEYS = {"label", "positive", "time", "time_format", "window_timezone", "delimiter", "description", "dense",
             "categorical"}


@dataclass(frozen=True)
class DenseColumn:
    name: str
    column: str
    transform: str = "none"
    fill: float = 0.0


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    column: str
    num_embeddings: int | None
    encoding: str = "hash"
    sep: str | None = None
    hotness: int = 1


@dataclass(frozen=True)
class CsvSchema:
    label: LabelRule
    dense: tuple[DenseColumn, ...]
    categorical: tuple[CategoricalColumn, ...]
    time: str | None = None
    time_format: str = "auto"
    delimiter: str = ","
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    window_timezone: str | None = None  # IANA zone whose calendar --window day/month/year follow (None: UTC)


def _err(where: str, msg: str) -> InputError:
    return InputError(f"{where}: {msg}")


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _err(where, f"must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return table


def _get(where: str, table: dict, key: str, kind: type | tuple, default: Any = None, required: bool = False) -> Any:
    if key not in table:
        if required:
            raise _err(where, f"missing required key {key!r}")
        return default
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _err(where, f"key {key!r} must be {name}, got {value!r}")
    return value


def _label_rule(where: str, top: dict) -> LabelRule:
    return label_rule(where, _get(where, top, "label", str, required=True), top.get("positive"))


def _dense(where: str, name: str, table: Any) -> DenseColumn:
    where = f"{where} [dense.{name}]"
    t = _check_keys(where, table, {"column", "transform", "fill"})
    transform = _get(where, t, "transform", str, "none")
    if transform not in ("none", "log1p"):
        raise _err(where, f"key 'transform' must be \"none\" or \"log1p\", got {transform!r}")
    fill = float(_get(where, t, "fill", (int, float), 0.0))
    if not math.isfinite(fill):
        raise _err(where, "key 'fill' must be finite")
    if transform == "none" and abs(fill) >= F32_LIMIT:
        raise _err(where, f"key 'fill' = {fill:g} is beyond float32's range (|x| <= 3.4e38), in which dense values are stored")
    return DenseColumn(name, _get(where, t, "column", str, name), transform, fill)


def _categorical(where: str, name: str, table: Any) -> CategoricalColumn:
    where = f"{where} [categorical.{name}]"
    t = _check_keys(where, table, {"column", "num_embeddings", "encoding", "sep", "hotness"})
    encoding = _get(where, t, "encoding", str, "hash")
    if encoding not in ("hash", "vocab"):
        raise _err(where, f"key 'encoding' must be \"hash\" or \"vocab\", got {encoding!r}")
    n = _get(where, t, "num_embeddings", int, None, required=encoding == "hash")
    if n is not None and not 2 <= n < 2**31:
        raise _err(where, f"key 'num_embeddings' must be in [2, 2**31), got {n}")
    sep = _get(where, t, "sep", str, None)
    if sep == "":
        raise _err(where, "key 'sep' must not be empty")
    hotness = _get(where, t, "hotness", int, None, required=sep is not None)
    if hotness is not None and sep is None:
        raise _err(where, "key 'hotness' needs 'sep' (it is the most items a multi-hot cell keeps)")
    if hotness is not None and not 1 <= hotness <= MAX_HOTNESS:
        raise _err(where, f"key 'hotness' must be in [1, {MAX_HOTNESS}], got {hotness}")
    return CategoricalColumn(name, _get(where, t, "column", str, name), n, encoding, sep, hotness or 1)


def load_schema(path: str | Path) -> CsvSchema:
    """Read and validate a TOML schema; every error names the file and the key at fault."""
    path = Path(path)
    where = str(path)
    return schema_from(read_toml(path, "schema file"), where)


def schema_from(top: dict[str, Any], where: str) -> CsvSchema:
    """Validate a parsed schema (a TOML file's tables, or the copy a dataset's provenance keeps)."""
    if not isinstance(top, dict):
        raise _err(where, f"a schema is a table of keys, found {type(top).__name__}")
    _check_keys(where, top, _TOP_KEYS)
    _get(where, top, "description", str)
    label = _label_rule(where, top)
    dense = tuple(_dense(where, k, v) for k, v in _get(where, top, "dense", dict, {}).items())
    cats = tuple(_categorical(where, k, v) for k, v in _get(where, top, "categorical", dict, {}).items())
    if not dense or not cats:
        raise _err(where, "declare at least one [dense.NAME] and one [categorical.NAME] table (a DLRM needs both)")
    for name in [c.name for c in dense + cats]:
        if not _NAME.match(name) or [c.name for c in dense + cats].count(name) > 1:
            raise _err(where, f"feature name {name!r} must be unique and use only letters, digits, _ . -")
    used = [c.column for c in dense + cats]
    if label.column in used:
        raise _err(where, f"label column {label.column!r} is also used as a feature")
    time_format = _get(where, top, "time_format", str, "auto")
    if time_format not in TIME_FORMATS:
        raise _err(where, f"key 'time_format' must be one of {list(TIME_FORMATS)}, got {time_format!r}")
    delimiter = _get(where, top, "delimiter", str, ",")
    if len(delimiter) != 1:
        raise _err(where, f"key 'delimiter' must be one character, got {delimiter!r}")
    zone = _get(where, top, "window_timezone", str, None)
    if zone is not None:
        check_zone(zone, f"{where}: key 'window_timezone'")
    source = json.loads(json.dumps(top, default=str))
    return CsvSchema(label, dense, cats, _get(where, top, "time", str, None), time_format, delimiter, source, zone)


def check_zone(name: str, where: str) -> None:
    """InputError unless `name` is an IANA time zone this Python knows (`America/Los_Angeles`, `UTC`)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InputError(f"{where}: {name!r} is not an IANA time zone name (e.g. 'America/Los_Angeles', "
                         f"'Europe/Berlin', 'UTC'; a fixed offset such as '-08:00' is not one)") from None


def parse_time(text: str, fmt: str) -> float | None:
    """Unix seconds of a time cell, or None if unreadable or outside TIME_YEARS (no window could
    be labelled by such a time: a millisecond column read as seconds lands there), ISO ones too."""
    v = text.strip()
    if fmt in ("auto", "unix", "unix_ms"):
        try:
            x = plain_float(v)
            x = x / 1000.0 if fmt == "unix_ms" else x
            return x if math.isfinite(x) and TIME_MIN <= x < TIME_MAX else None
        except ValueError:
            if fmt != "auto":
                return None
    if v[-1:] == "z":  # RFC 3339 allows a lowercase z (and t), which fromisoformat refuses (3.11-3.13)
        v = v[:-1] + "Z"
    if v[10:11] == "t":
        v = v[:10] + "T" + v[11:]
    try:
        t = dt.datetime.fromisoformat(v)
        x = (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()
    except (ValueError, OverflowError):
        return None
    return x if TIME_MIN <= x < TIME_MAX else None


def time_hint(text: str, fmt: str) -> str:
    """What the unreadable time cell `text` suggests about time_format, if anything."""
    try:
        x = plain_float(text.strip())
    except ValueError:
        if fmt in ("unix", "unix_ms") and parse_time(text, "iso") is not None:
            return f' (an ISO 8601 time, which time_format "{fmt}" does not read: set time_format = "iso" or "auto")'
        return ""
    if fmt in ("auto", "unix") and math.isfinite(x) and TIME_MIN <= x / 1000.0 < TIME_MAX:
        return ' (is the column in milliseconds? set time_format = "unix_ms")'
    return ' (a number: set time_format = "unix" or "unix_ms")' if fmt == "iso" else ""


def parse_window_option(text: str) -> tuple[str, int | None]:
    """`file`, `rows:N`, `year`, `month` or `day` -> (kind, N)."""
    if text in ("file",) + CALENDAR:
        return text, None
    if text.startswith("rows:"):
        try:
            n = plain_int(text[5:])
        except ValueError:
            n = 0
        if n >= 1:
            return "rows", n
    raise InputError(f"--window {text!r}: use file, rows:N (N >= 1), year, month or day")
