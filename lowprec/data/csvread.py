"""`data prepare --format csv`: CSV files into a prepared dataset, as a schema (lowprec.data.csvschema)
describes them. Rows come from lowprec.data.csvrows; under torchrun every rank reads a share of the
input (lowprec.data.sharedread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowprec.data.csvencode import load_vocabularies, write_vocabulary
from lowprec.data.csvrows import RowParser
from lowprec.data.csvschema import CALENDAR, load_schema, parse_window_option, schema_from
from lowprec.data.dataset import DatasetMeta, DatasetWriter, SparseFeature
from lowprec.data.calendar import CalendarWindows
from lowprec.data.rawinput import (DEFAULT_MAX_BAD_ROWS, BadRows, InputStats, Reporter, RowDigests, SequentialWindows,
                                   check_distinct, check_inputs, no_rows_text)
from lowprec.data.sharedread import read_all, read_shared
from lowprec.errors import InputError
from lowprec.fileio import sha256_file
from lowprec.progress import Stages


def prepare_csv(
    inputs: list[Path], root: Path | None, schema_path: Path | None, window: str = "file",
    max_bad_rows: int | None = DEFAULT_MAX_BAD_ROWS, report: Reporter | None = None,
    progress: Stages | None = None, vocab_from: Path | None = None, show_bad_rows: int | None = 20,
    recorded_schema: dict[str, Any] | None = None, in_turn: tuple[int, int] | None = None,
    after: tuple[int, int] = (0, 0), empty_ok: bool = False,
) -> tuple[DatasetMeta | None, BadRows]:
    """Read CSV files described by the TOML schema at `schema_path` into a dataset at `root`.

    `vocab_from`: an earlier dataset whose vocabularies the vocab columns reuse (frozen).
    `recorded_schema`: instead of a file, the schema record of a dataset's provenance (`data append`).
    Under torchrun every rank reads a share of the input and rank 0 writes the dataset
    (lowprec.data.sharedread); the other ranks return (None, their BadRows). `in_turn` = (ranks,
    part bytes): read the shares of that many ranks in turn, in this process (the tests' check that
    the merge gives one reader's dataset). `after`: as DatasetWriter's (`data append`). `empty_ok`: no
    valid row at all is not an error (`data append`: a quiet day's file is an empty window under
    `--window file`, no window otherwise, which append names)."""
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
    check_inputs(inputs)
    parser = RowParser(schema, vocabularies)
    bad = BadRows(max_bad_rows, report, keep=show_bad_rows)
    if root is None:  # a reading rank under torchrun: its share into rank 0's staging directory
        read_shared(inputs, None, parser, None, bad, [], None)
        return None, bad
    sparse = [SparseFeature(c.name, c.num_embeddings or 2**31 - 1, c.hotness) for c in schema.categorical]
    writer = DatasetWriter(root, [c.name for c in schema.dense], sparse, after=after)
    stats = [InputStats(str(p)) for p in inputs]
    windows = (CalendarWindows(writer, kind, schema.window_timezone) if kind in CALENDAR
               else SequentialWindows(writer, rows_per_window))
    sink = RowDigests(windows, inputs, stats)
    read_all(inputs, root, parser, sink, bad, stats, progress, in_turn)
    sink.finish()
    if sum(s.rows for s in stats) == 0 and not empty_ok:
        raise InputError(f"no valid rows in {no_rows_text([s.to_json() for s in stats], header=True)}")
    writer.warnings.extend(check_distinct(stats))
    if parser.multiline_first:
        where, first, last = parser.multiline_first
        writer.warnings.append(f"{parser.multiline:,} record(s) run over several lines, the first at {where}:{first}-"
                               f"{last}: quoted cells holding line breaks (in columns the schema does not read), "
                               f"kept as one record each. If a quote was left open, the lines up to the next quote "
                               f"were read as part of that cell: check {where}:{first}")
    if parser.epoch_zero:  # exports write 0 for "no time": those rows would make a 1970 window of their own
        writer.warnings.append(f"{parser.epoch_zero:,} row(s) have {schema.time} = 1970-01-01T00:00:00Z (unix time 0), "
                               f"which usually stands for a missing timestamp; they were kept, "
                               + ("in the window of that date" if kind in CALENDAR else
                                  "in their file's window" if rows_per_window is None else "in input order")
                               + ". Drop or fix them if their time is unknown")
    if parser.date_like:  # `dt=20231114` columns: read as unix seconds they all fall in August 1970
        writer.warnings.append(f"{parser.date_like:,} row(s) have a {schema.time} that reads as a YYYYMMDD date (e.g. "
                               f"20231114) and was read as unix seconds, a time in August 1970; if the column holds "
                               f"dates, set time_format = \"iso\" in the schema (ISO 8601 reads 20231114 as a date)")
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
