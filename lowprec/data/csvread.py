"""Reading CSV records into a prepared dataset, as a schema (lowprec.data.csvschema) describes them.

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
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data.criteo import (
    DEFAULT_MAX_BAD_ROWS, BadRows, InputStats, Reporter, SequentialWindows, guarded, open_input,
)
from lowprec.data.csvencode import Encoder, load_vocabularies, write_vocabulary
from lowprec.data.csvschema import (
    CALENDAR, F32_LIMIT, TIME_FORMATS, CsvSchema, load_schema, parse_time, parse_window_option, schema_from,
    time_hint,
)
from lowprec.data.dataset import DatasetMeta, DatasetWriter, SparseFeature
from lowprec.data.movielens import CalendarWindows, header_positions
from lowprec.data.records import records, spans, strict_reader
from lowprec.errors import InputError, warn
from lowprec.fileio import sha256_file
from lowprec.progress import Stages

CHUNK_ROWS = 1 << 16


class _RowParser:
    """Turns CSV records into (dense, ids, label, time) or a (kind, detail) complaint."""

    def __init__(self, schema: CsvSchema, vocabularies: dict[str, tuple[list[str], int]] | None = None):
        self.schema = schema
        vocabularies = vocabularies or {}
        self.encoders = [Encoder(c, vocabularies.get(c.name)) for c in schema.categorical]
        self.index: dict[str, int] = {}
        self.width = 0
        self.epoch_zero = 0  # rows kept whose time is exactly the unix epoch (often a missing timestamp)
        self.multiline: list[tuple[Path, int, int]] = []  # kept records over several lines: (file, first, last)

    def bind(self, path: Path, header: list[str] | None) -> None:
        if header is None:
            raise InputError(f"{path}: empty file (expected a header row)")
        s = self.schema
        need = [s.label.column] + [c.column for c in s.dense + s.categorical] + ([s.time] if s.time else [])
        self.index = dict(zip(need, header_positions(path, header, need, " named in the schema")))
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
        reader = strict_reader(stream, parser.schema.delimiter, errors="surrogateescape")
        rows = guarded(records(reader), path, lambda: reader.line_num + 1)
        first, last, header = next(rows, (0, 0, None))
        if isinstance(header, csv.Error):
            raise InputError(f"{path}:{first}: cannot read the header ({header})")
        if header is not None and _bad_utf8(header):
            raise InputError(f"{path}:{last}: the header is not valid UTF-8 ({_bad_utf8(header)})")
        parser.bind(path, header)
        for first, last, row in rows:
            stats.lines = last
            if isinstance(row, csv.Error):
                parsed: tuple = ("quoting", f"malformed quoting ({row})" + spans(first, last))
            elif not row or row == [""]:
                continue
            elif _bad_utf8(row):
                parsed = ("encoding", f"not valid UTF-8 ({_bad_utf8(row)})")
            elif last > first and parser.line_break(row):  # before parse: it grows vocabularies
                parsed = ("quoting", f"column {parser.line_break(row)!r} holds a line break" + spans(first, last))
            else:
                parsed = parser.parse(row)
                if last > first and not isinstance(parsed[0], str):
                    parser.multiline.append((path, first, last))
            if isinstance(parsed[0], str):
                stats.bad_rows += 1
                bad.add(path, first, *parsed)
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
    if parser.multiline:
        where, first, last = parser.multiline[0]
        writer.warnings.append(f"{len(parser.multiline):,} record(s) run over several lines, the first at {where}:{first}-"
                               f"{last}: quoted cells holding line breaks (in columns the schema does not read), "
                               f"kept as one record each. If a quote was left open, the lines up to the next quote "
                               f"were read as part of that cell: check {where}:{first}")
        warn(writer.warnings[-1])
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
