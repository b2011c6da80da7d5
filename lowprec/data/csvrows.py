"""CSV records into rows, as a schema (lowprec.data.csvschema) describes them: one file, or a byte
range of one (a part, lowprec.data.parts), into a sink of row chunks.

Records come from lowprec.data.records (strict mode: malformed quoting is a bad row at the line where
the record starts, naming the lines it ran over). A record over several physical lines is legal CSV
(a quoted cell holding line breaks). When such a break lands in a cell the schema reads, the row is
bad: that is how a quote left open until a later quote looks, the lines between swallowed into one
cell. In other columns the record is kept and the file gets a warning with the count and the first
place.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lowprec.data.rawinput import BadRow, InputStats, Read, guarded, header_positions, open_span
from lowprec.data.csvencode import Encoder
from lowprec.data.csvlabel import plain_float
from lowprec.data.csvschema import DATE_LIKE, F32_LIMIT, TIME_FORMATS, TIME_YEARS, CsvSchema, parse_time, time_hint
from lowprec.data.records import LONE_CR, error_text, records, strict_reader
from lowprec.errors import InputError
from lowprec.progress import Stages

CHUNK_ROWS = 1 << 16


FUTURE_SLACK_S = 86400.0  # rows dated up to a day after the clock are kept (time zones, clock drift)


class RowParser:
    """Turns CSV records into (dense, ids, label, time) or a (kind, detail) complaint."""

    def __init__(self, schema: CsvSchema, vocabularies: dict[str, tuple[list[str], int]] | None = None):
        self.schema = schema
        vocabularies = vocabularies or {}
        self.encoders = [Encoder(c, vocabularies.get(c.name)) for c in schema.categorical]
        self.index: dict[str, int] = {}
        self.width = 0
        self.epoch_zero = 0  # rows kept whose time is exactly the unix epoch (often a missing timestamp)
        self.date_like = 0  # rows whose unix-seconds time reads as a YYYYMMDD date (20231114: August 1970)
        self.multiline = 0  # records kept that run over several lines
        self.multiline_first: tuple[Path, int, int] | None = None  # the first of them: (file, first, last line)
        self.path = Path()
        # a row dated after this is a clock's error, not data: its window would lie ahead of every day a
        # scheduled `data append` brings, and refuse them all (QA 8a item 3)
        self.latest = time.time() + FUTURE_SLACK_S

    # -- a reader of parts (lowprec.data.parts): fresh, read, widths, share, absorb --------------------

    def fresh(self) -> "RowParser":
        """A parser of the same schema with nothing read yet (lowprec.data.csvencode.Encoder.fresh)."""
        new = RowParser(self.schema)
        new.encoders = [e.fresh() for e in self.encoders]
        new.latest = self.latest  # (every part judged by one clock)
        return new

    def read(self, path: Path, sink: Any, bad_row: BadRow, stats: InputStats, **how: Any) -> Read:
        return read_csv(path, self, sink, bad_row, stats, **how)

    @property
    def widths(self) -> tuple[int, int]:
        """Dense values and sparse id slots of a row."""
        return len(self.schema.dense), sum(c.hotness for c in self.schema.categorical)

    def share(self, sparse: np.ndarray | None) -> dict[str, Any]:
        """What the merge needs of this parser after it read one part (`sparse`: the part's ids; None
        when the part stopped early): the warnings' counts, each encoder's state and, for growing
        vocabularies, each local id's occurrences (Encoder.absorb counts overflow by them)."""
        counts, offset = {}, 0
        for e in self.encoders:
            if e.numbers_locally and sparse is not None:
                ids = np.asarray(sparse[:, offset: offset + e.col.hotness]).ravel()
                counts[e.col.name] = np.bincount(ids[ids > 0], minlength=len(e.vocab) + 1).tolist()
            offset += e.col.hotness
        first = self.multiline_first
        return {"epoch_zero": self.epoch_zero, "date_like": self.date_like, "multiline": self.multiline,
                "multiline_first": list(first[1:]) if first else None,
                "encoders": [e.share_state() for e in self.encoders], "counts": counts}

    def absorb(self, state: dict[str, Any], path: Path, line_base: int) -> list[tuple[int, int, np.ndarray]]:
        """Take in a part's `share` (its lines numbered from `line_base` + 1): (slot offset, hotness,
        local -> global id table) of each column whose ids the part numbered locally."""
        self.epoch_zero += state["epoch_zero"]
        self.date_like += state["date_like"]
        if state["multiline"]:
            self.multiline += state["multiline"]
            first, last = state["multiline_first"]
            self.multiline_first = self.multiline_first or (path, first + line_base, last + line_base)
        out, offset = [], 0
        for e, enc in zip(self.encoders, state["encoders"]):
            table = e.absorb(enc, np.asarray(state["counts"].get(e.col.name, [0]), np.int64))
            if table is not None:
                out.append((offset, e.col.hotness, table))
            offset += e.col.hotness
        return out

    def bind(self, path: Path, header: list[str] | None) -> None:
        if header is None:  # an empty file (a quiet day's export): no rows, so no columns to find
            self.index, self.path, self.width = {}, path, 0
            return
        s = self.schema
        need = [s.label.column] + [c.column for c in s.dense + s.categorical] + ([s.time] if s.time else [])
        self.index = dict(zip(need, header_positions(path, header, need, " named in the schema")))
        self.path = path
        self.width = len(header)

    def line_break(self, row: list[str]) -> str | None:
        """The first column the schema reads whose cell holds a line break, if any."""
        if len(row) == self.width:
            for column, i in self.index.items():
                if "\n" in row[i] or "\r" in row[i]:
                    return column
        return None

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
                x = plain_float(v) if v else c.fill
            except ValueError:
                x = math.nan
            if not math.isfinite(x):
                return "dense", f"{c.column} = {v!r} is not a finite number"
            if c.transform == "none" and abs(x) >= F32_LIMIT:
                return "dense", f"{c.column} = {v!r} is beyond float32's range (|x| <= 3.4e38), in which it is stored"
            dense.append(x)
        t = 0.0 if s.time is None else parse_time(row[ix[s.time]], s.time_format)
        if t is None:
            return "time", f"{s.time} = {row[ix[s.time]][:40]!r} is not a time in {TIME_YEARS} as time_format " \
                f"{s.time_format!r} reads it ({TIME_FORMATS[s.time_format]})" + \
                time_hint(row[ix[s.time]], s.time_format)
        if t > self.latest:
            return "time", (f"{s.time} = {row[ix[s.time]][:40]!r} is more than a day after the time it was read: "
                            f"a clock-skewed row (its window would lie ahead of every later day and refuse each "
                            f"`data append`)")
        ids = [i for e in self.encoders for i in e.ids(row[ix[e.col.column]])]  # last: it grows vocabularies
        self.epoch_zero += s.time is not None and t == 0.0
        self.date_like += DATE_LIKE[0] <= t <= DATE_LIKE[1] and t == int(t) and s.time_format in ("auto", "unix")
        return dense, ids, label, t

    def encode_dense(self, dense: list[list[float]]) -> np.ndarray:
        x = np.asarray(dense, dtype=np.float64).reshape(len(dense), len(self.schema.dense))
        for j, c in enumerate(self.schema.dense):
            if c.transform == "log1p":
                x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
        return x.astype(np.float32)


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


def _header(rows: Iterator[Any], path: Path) -> list[str] | None:
    first, last, header = next(rows, (0, 0, None))
    if isinstance(header, csv.Error):
        old_mac = (" Do its lines end in a lone \\r (as classic Mac OS wrote them)? lowprec reads lines ending in "
                   "\\n or \\r\\n: convert it, e.g. tr '\\r' '\\n'" if LONE_CR in str(header) else "")
        raise InputError(f"{path}:{first}: cannot read the header ({error_text(header)}).{old_mac}")
    if header is not None and _bad_utf8(header):
        raise InputError(f"{path}:{last}: the header is not valid UTF-8 ({_bad_utf8(header)})")
    return header


def file_header(path: Path, delimiter: str) -> list[str] | None:
    """The header record of a plain CSV file (for a reader that starts inside the file)."""
    with open(path, "rb") as raw:
        reader = strict_reader(raw, delimiter, errors="surrogateescape")
        return _header(guarded(records(reader), path, lambda: reader.line_num + 1), path)


def _record(parser: RowParser, first: int, last: int, row: Any) -> tuple | None:
    """(dense, ids, label, time) of a record, (kind, detail, spans lines) if it is bad, None if empty."""
    if isinstance(row, csv.Error):
        if "field larger than field limit" in str(row):  # (csv's only error that is not about quoting)
            return "size", f"a cell is longer than csv's limit of {csv.field_size_limit():,} characters", True
        return "quoting", f"malformed quoting ({error_text(row)})", True
    if not row or (len(row) == 1 and not row[0].strip()):  # a blank line, spaces and tabs only included
        return None
    if _bad_utf8(row):
        return "encoding", f"not valid UTF-8 ({_bad_utf8(row)})", False
    if last > first and parser.line_break(row):  # before parse: it grows vocabularies
        return "quoting", f"column {parser.line_break(row)!r} holds a line break", True
    parsed = parser.parse(row)
    if isinstance(parsed[0], str):
        return (*parsed, False)
    if last > first:
        parser.multiline += 1
        parser.multiline_first = parser.multiline_first or (parser.path, first, last)
    return parsed


def read_csv(path: Path, parser: RowParser, sink: Any, bad_row: BadRow, stats: InputStats,
             progress: Stages | None = None, span: tuple[int, int] | None = None, line_base: int = 0,
             stop_lines: frozenset[int] = frozenset()) -> Read:
    """Read the CSV file `path`, or its bytes `span` = [start, end) (plain files; `start` begins a
    line), into `sink`, bad rows to `bad_row`. Lines are numbered from `line_base` + 1 at the start of
    what is read (the header is line 1 of a file). With `stop_lines`, reading stops after a record
    that ends on one of those lines."""
    buf: tuple[list, list, list, list] = ([], [], [], [])
    end = Read()

    def flush() -> None:
        if buf[0]:
            sink.append(parser.encode_dense(buf[0]), np.asarray(buf[1], np.int32),
                        np.asarray(buf[2], np.int32), np.asarray(buf[3], np.float64))
            for b in buf:
                b.clear()

    with open_span(path, stats, progress, span) as (stream, tick):
        # surrogateescape: a bad byte is found row by row below, so its error names the real line
        bom = span is None or span[0] == 0
        reader = strict_reader(stream, parser.schema.delimiter, errors="surrogateescape", bom=bom)
        rows = guarded(records(reader), path, lambda: line_base + reader.line_num + 1)
        header = _header(rows, path) if bom else file_header(path, parser.schema.delimiter)
        parser.bind(path, header)
        lines, malformed = (1 if bom and header is not None else 0), False  # (locals: this loop runs once a record)
        for first, last, row in rows:
            lines, malformed = last, isinstance(row, csv.Error)
            first, last = first + line_base, last + line_base
            got = _record(parser, first, last, row)
            if got is not None and isinstance(got[0], str):
                stats.bad_rows += 1
                bad_row(first, last, *got)
            elif got is not None:
                for b, v in zip(buf, got):
                    b.append(v)
                stats.rows += 1
                if len(buf[0]) >= CHUNK_ROWS:
                    flush()
                    tick()
            if stop_lines and last in stop_lines:
                end.stopped_at = last
                break
        flush()
    end.lines, end.malformed_end = lines, malformed
    stats.lines = max(stats.lines, line_base + lines)  # (a header-only file has its one line)
    return end
