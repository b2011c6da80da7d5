"""Any CSV + a TOML schema -> a prepared dataset. The schema format is documented in docs/csv-schema.md.

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

import csv
import datetime as dt
import io
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data.criteo import (
    DEFAULT_MAX_BAD_ROWS, BadRows, InputStats, Reporter, SequentialWindows, guarded, open_input,
)
from lowprec.data.csvencode import Encoder, load_vocabularies, write_vocabulary
from lowprec.data.csvlabel import LabelRule, label_rule
from lowprec.data.dataset import MAX_HOTNESS, DatasetMeta, DatasetWriter, SparseFeature
from lowprec.data.movielens import CalendarWindows, header_positions
from lowprec.errors import InputError, warn
from lowprec.fileio import sha256_file
from lowprec.progress import Stages

CHUNK_ROWS = 1 << 16
TIME_MIN = dt.datetime(1, 1, 2, tzinfo=dt.timezone.utc).timestamp()  # unix seconds of years 1..9999
TIME_MAX = dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc).timestamp()
TIME_FORMATS = {"auto": "unix seconds, or ISO 8601", "unix": "unix seconds", "unix_ms": "unix milliseconds",
                "iso": "ISO 8601"}  # time_format -> what it reads
CALENDAR = ("year", "month", "day")
F32_LIMIT = 2.0**128 - 2.0**103  # the least |x| a float32 cast makes inf (dense values are stored as float32)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOP_KEYS = {"label", "positive", "time", "time_format", "delimiter", "description", "dense", "categorical"}


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
    try:
        top = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"schema file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _err(where, f"not valid TOML ({exc})") from exc
    return schema_from(top, where)


def schema_from(top: dict[str, Any], where: str) -> CsvSchema:
    """Validate a parsed schema (a TOML file's tables, or the copy a dataset's provenance keeps)."""
    if not isinstance(top, dict):
        raise _err(where, f"a schema is a table of keys, found {type(top).__name__}")
    _check_keys(where, top, _TOP_KEYS)
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
    source = json.loads(json.dumps(top, default=str))
    return CsvSchema(label, dense, cats, _get(where, top, "time", str, None), time_format, delimiter, source)


def parse_time(text: str, fmt: str) -> float | None:
    """Unix seconds of a time cell, or None if unreadable or outside years 1-9999 (no window could
    be labelled by such a time: a millisecond column read as seconds lands there)."""
    v = text.strip()
    if fmt in ("auto", "unix", "unix_ms"):
        try:
            x = float(v)
            x = x / 1000.0 if fmt == "unix_ms" else x
            return x if math.isfinite(x) and TIME_MIN <= x < TIME_MAX else None
        except ValueError:
            if fmt != "auto":
                return None
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def time_hint(text: str, fmt: str) -> str:
    """What the unreadable time cell `text` suggests about time_format, if anything."""
    try:
        x = float(text.strip())
    except ValueError:
        return ' (numbers are read with time_format = "unix" or "unix_ms")' if fmt in ("unix", "unix_ms") else ""
    if fmt in ("auto", "unix") and math.isfinite(x) and TIME_MIN <= x / 1000.0 < TIME_MAX:
        return ' (is the column in milliseconds? set time_format = "unix_ms")'
    return ' (a number: set time_format = "unix" or "unix_ms")' if fmt == "iso" else ""


class _RowParser:
    """Turns CSV records into (dense, ids, label, time) or a (kind, detail) complaint."""

    def __init__(self, schema: CsvSchema, vocabularies: dict[str, tuple[list[str], int]] | None = None):
        self.schema = schema
        vocabularies = vocabularies or {}
        self.encoders = [Encoder(c, vocabularies.get(c.name)) for c in schema.categorical]
        self.index: dict[str, int] = {}
        self.width = 0
        self.epoch_zero = 0  # rows kept whose time is exactly the unix epoch (often a missing timestamp)

    def bind(self, path: Path, header: list[str] | None) -> None:
        if header is None:
            raise InputError(f"{path}: empty file (expected a header row)")
        s = self.schema
        need = [s.label.column] + [c.column for c in s.dense + s.categorical] + ([s.time] if s.time else [])
        self.index = dict(zip(need, header_positions(path, header, need, " named in the schema")))
        self.width = len(header)

    def parse(self, row: list[str]) -> tuple:
        if len(row) != self.width:
            return "field count", f"{len(row)} fields, the header has {self.width}"
        s, ix = self.schema, self.index
        label = s.label(row[ix[s.label.column]])
        if label is None:
            return "label", s.label.why(row[ix[s.label.column]])
        dense = []
        for c in s.dense:
            v = row[ix[c.column]].strip()
            try:
                x = float(v) if v else c.fill
            except ValueError:
                x = math.nan
            if not math.isfinite(x):
                return "dense", f"{c.column} = {v!r} is not a finite number"
            if c.transform == "none" and abs(x) >= F32_LIMIT:
                return "dense", f"{c.column} = {v!r} is beyond float32's range (|x| <= 3.4e38), in which it is stored"
            dense.append(x)
        t = 0.0 if s.time is None else parse_time(row[ix[s.time]], s.time_format)
        if t is None:
            return "time", f"{s.time} = {row[ix[s.time]][:40]!r} is not a time in years 1-9999 as time_format " \
                f"{s.time_format!r} reads it ({TIME_FORMATS[s.time_format]})" + \
                time_hint(row[ix[s.time]], s.time_format)
        ids = [i for e in self.encoders for i in e.ids(row[ix[e.col.column]])]  # last: it grows vocabularies
        self.epoch_zero += s.time is not None and t == 0.0
        return dense, ids, label, t

    def encode_dense(self, dense: list[list[float]]) -> np.ndarray:
        x = np.asarray(dense, dtype=np.float64).reshape(len(dense), len(self.schema.dense))
        for j, c in enumerate(self.schema.dense):
            if c.transform == "log1p":
                x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
        return x.astype(np.float32)


def parse_window_option(text: str) -> tuple[str, int | None]:
    """`file`, `rows:N`, `year`, `month` or `day` -> (kind, N)."""
    if text in ("file",) + CALENDAR:
        return text, None
    if text.startswith("rows:"):
        try:
            n = int(text[5:])
        except ValueError:
            n = 0
        if n >= 1:
            return "rows", n
    raise InputError(f"--window {text!r}: use file, rows:N (N >= 1), year, month or day")


def _bad_utf8(row: list[str]) -> str | None:
    """None if every cell decoded as UTF-8, else which bytes did not (cells carry them escaped)."""
    text = "\x00".join(row)
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = text[exc.start:exc.end].encode("utf-8", "surrogateescape")
        return f"byte(s) {raw!r} at character {exc.start + 1} of the row"
    return None


def _read_csv(path: Path, parser: _RowParser, sink: Any, bad: BadRows, stats: InputStats,
              progress: Stages | None) -> None:
    buf: tuple[list, list, list, list] = ([], [], [], [])

    def flush() -> None:
        if buf[0]:
            sink.append(parser.encode_dense(buf[0]), np.asarray(buf[1], np.int32),
                        np.asarray(buf[2], np.int32), np.asarray(buf[3], np.float64))
            for b in buf:
                b.clear()

    with open_input(path, stats, progress) as (stream, tick):
        # surrogateescape: a bad byte is found row by row below, so its error names the real line
        reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline=""),
                            delimiter=parser.schema.delimiter)
        rows = guarded(reader, path, lambda: reader.line_num + 1)
        header = next(rows, None)
        if header is not None and _bad_utf8(header):
            raise InputError(f"{path}:{reader.line_num}: the header is not valid UTF-8 ({_bad_utf8(header)})")
        parser.bind(path, header)
        for row in rows:
            stats.lines = reader.line_num
            if not row or row == [""]:
                continue
            why = _bad_utf8(row)
            parsed = ("encoding", f"not valid UTF-8 ({why})") if why else parser.parse(row)
            if isinstance(parsed[0], str):
                stats.bad_rows += 1
                bad.add(path, reader.line_num, *parsed)
                continue
            for b, v in zip(buf, parsed):
                b.append(v)
            stats.rows += 1
            if len(buf[0]) >= CHUNK_ROWS:
                flush()
                tick()
        flush()


def prepare_csv(
    inputs: list[Path], root: Path, schema_path: Path | None, window: str = "file",
    max_bad_rows: int | None = DEFAULT_MAX_BAD_ROWS, report: Reporter | None = None,
    progress: Stages | None = None, vocab_from: Path | None = None, show_bad_rows: int | None = 20,
    recorded_schema: dict[str, Any] | None = None,
) -> tuple[DatasetMeta, BadRows]:
    """Read CSV files described by the TOML schema at `schema_path` into a dataset at `root`.

    `vocab_from`: an earlier dataset whose vocabularies the vocab columns reuse (frozen).
    `recorded_schema`: instead of a file, the schema record of a dataset's provenance (`data append`)."""
    if recorded_schema is not None:
        where = f"{vocab_from}/dataset.json: provenance schema"
        schema = schema_from(recorded_schema.get("toml"), where)
        schema_record = recorded_schema
    else:
        where, schema = str(schema_path), load_schema(schema_path)
        schema_record = {"path": str(schema_path), "sha256": sha256_file(schema_path), "toml": schema.source}
    vocabularies = load_vocabularies(Path(vocab_from), schema) if vocab_from is not None else None
    kind, rows_per_window = parse_window_option(window)
    if kind in CALENDAR and schema.time is None:
        raise InputError(f"--window {window}: the schema {where} declares no `time` column")
    if not inputs:
        raise InputError("no input files given")
    parser = _RowParser(schema, vocabularies)
    sparse = [SparseFeature(c.name, c.num_embeddings or 2**31 - 1, c.hotness) for c in schema.categorical]
    writer = DatasetWriter(root, [c.name for c in schema.dense], sparse)
    sink = CalendarWindows(writer, kind) if kind in CALENDAR else SequentialWindows(writer, rows_per_window)
    bad = BadRows(max_bad_rows, report, keep=show_bad_rows)
    stats = [InputStats(str(p)) for p in inputs]
    for path, st in zip(inputs, stats):
        sink.start_file(path)
        _read_csv(path, parser, sink, bad, st, progress)
    sink.finish()
    if sum(s.rows for s in stats) == 0:
        raise InputError(f"no valid rows in {', '.join(map(str, inputs))}")
    if parser.epoch_zero:  # exports write 0 for "no time": those rows would make a 1970 window of their own
        writer.warnings.append(f"{parser.epoch_zero:,} row(s) have {schema.time} = 1970-01-01T00:00:00Z (unix time 0), "
                               f"which usually stands for a missing timestamp; they were kept, in the window of "
                               f"that date. Drop or fix them if their time is unknown")
        warn(writer.warnings[-1])
    vocab_files = {}
    for e in parser.encoders:
        if e.col.encoding == "vocab":
            vocab_files[e.col.name] = f"vocab_{e.col.name}.json"
            write_vocabulary(root / vocab_files[e.col.name], e.vocab)
    writer.provenance.update({
        "source": "csv",
        "inputs": [s.to_json() for s in stats],
        "schema": schema_record,
        "windows": window,
        "sparse_hash": "empty -> 0; else 1 + blake2b-64(utf-8 value) % (num_embeddings - 1)",
        "vocabularies": vocab_files,
        "multi_hot_truncated": {e.col.name: e.truncated for e in parser.encoders if e.col.sep},
        "vocab_overflow": {e.col.name: e.oov for e in parser.encoders if e.col.encoding == "vocab"},
        "vocab_from": str(vocab_from) if vocab_from is not None else None,
        "vocab_unseen": {e.col.name: e.unseen for e in parser.encoders if e.frozen},
        "hash_collisions": {e.col.name: e.collisions() for e in parser.encoders if e.col.encoding == "hash"},
        "bad_rows": bad.to_json(),
    })
    return writer.finish([e.num_embeddings for e in parser.encoders], [e.fingerprint for e in parser.encoders]), bad
