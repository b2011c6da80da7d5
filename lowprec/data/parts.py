"""The parts of raw-data ingest on several processes (lowprec.data.sharedread has the whole job): how
the input is cut into parts and dealt to ranks, and how a rank reads a part into the staging directory.

A reader of parts (lowprec.data.csvrows.RowParser for CSV, lowprec.data.criteo.TsvParser) has
`fresh()` (a reader with nothing read, for one part), `read(path, sink, bad_row, stats, span=,
line_base=, stop_lines=) -> Read`, `widths` (dense values, sparse slots a row), `share(sparse)`
(its state after a part, as JSON) and `absorb(state, path, line_base)` (the merge's: take in a
part's state; the tables that renumber its locally numbered ids).

- A part is a whole input, or a piece of a plain file cut at a line start (a gzip file cannot be
  cut): about PARTS_PER_RANK pieces a rank, each 1-64 MiB (`part_bytes`).
- Parts are dealt by estimated work (a gzip byte counts GZIP_WORK plain bytes), the largest first,
  each to the least loaded rank; a rank reads its parts in input order and stops at its first part
  that ends in an error or in too many bad rows.
- A part is read by a fresh reader (CSV: fresh encoders, lowprec.data.csvencode.Encoder.fresh; hashed
  ids and frozen vocabularies are final, a growing vocabulary numbers the part's values locally).
  Its rows go to raw files, with a JSON summary beside them: lines read, bad rows (as many as
  `BadRows.stored` keeps; the rest counted by kind), the reader's `share`, and the error that
  stopped it, if one did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data.rawinput import BadRows, InputStats, is_gzip
from lowprec.errors import InputError, user_os_errors
from lowprec.fileio import sha256_file
from lowprec.progress import Stages

PART_BYTES = 64 << 20  # ~20 s of reading at the ~3 MB/s one process reads CSV (reports/csv_ingest.md)
MIN_PART_BYTES = 1 << 20
PARTS_PER_RANK = 4
PART_BYTES_ENV = "LOWPREC_CSV_PART_BYTES"  # sets the part size (smaller parts: finer balance, more merging)
GZIP_WORK = 8  # a compressed byte holds about this many bytes of CSV
MIN_RATE = 256 << 10  # bytes/s of work: the slowest reading the barrier's bound allows (~12x below measured)
KINDS = (("dense", np.float32), ("sparse", np.int32), ("labels", np.int32), ("time", np.float64))


@dataclasses.dataclass(frozen=True)
class Part:
    """Bytes [start, end) of input `file` (end None: the whole file, plain or gzip)."""

    file: int
    start: int
    end: int | None
    first: bool  # the file's first part
    last: bool  # the file's last part
    work: int  # estimated work in plain bytes


def _cuts(path: Path, size: int, part_bytes: int) -> list[int]:
    """Offsets [0, c1, ..., size] with each inner cut just after a newline, ~part_bytes apart."""
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + part_bytes < size:
            f.seek(cuts[-1] + part_bytes - 1)
            pos = f.tell()
            while block := f.read(1 << 16):
                nl = block.find(b"\n")
                if nl >= 0:
                    pos += nl + 1
                    break
                pos += len(block)
            if pos >= size or not block:
                break
            cuts.append(pos)
    return cuts + [size]


def plan_parts(inputs: list[Path], part_bytes: int = PART_BYTES) -> list[Part]:
    """The parts of the inputs, in input order (missing files are one part: reading names them)."""
    parts: list[Part] = []
    for i, path in enumerate(inputs):
        if not path.is_file():
            parts.append(Part(i, 0, None, True, True, 0))
            continue
        size, gz = path.stat().st_size, is_gzip(path)
        if gz or size <= part_bytes:
            parts.append(Part(i, 0, None, True, True, size * (GZIP_WORK if gz else 1)))
            continue
        cuts = _cuts(path, size, part_bytes)
        for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            parts.append(Part(i, a, b, k == 0, k == len(cuts) - 2, b - a))
    return parts


def part_bytes(inputs: list[Path], ranks: int) -> int:
    """The positive integer in $LOWPREC_CSV_PART_BYTES; else the plain inputs' bytes over PARTS_PER_RANK
    parts a rank (so shares even out), within [MIN_PART_BYTES, PART_BYTES]."""
    text = os.environ.get(PART_BYTES_ENV, "").strip()
    if text:
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise InputError(f"${PART_BYTES_ENV} = {text!r}: give the bytes of a part as a positive integer")
        return int(text)
    plain = sum(p.stat().st_size for p in inputs if p.is_file() and not is_gzip(p))
    return max(MIN_PART_BYTES, min(PART_BYTES, plain // (PARTS_PER_RANK * ranks)))


def deal(parts: list[Part], n: int) -> list[list[int]]:
    """Part indices per rank: the largest part first, each to the least loaded rank; in order."""
    load, out = [0] * n, [[] for _ in range(n)]
    for i in sorted(range(len(parts)), key=lambda i: (-parts[i].work, i)):
        r = min(range(n), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += parts[i].work
    return [sorted(o) for o in out]


class _Spill:
    """A part's rows as raw arrays: `<base>.dense` (float32, n x dense), `.sparse` (int32, n x
    slots), `.labels` (int32), `.time` (float64)."""

    def __init__(self, base: Path):
        self.files = [open(f"{base}.{kind}", "wb") for kind, _ in KINDS]
        self.rows = 0

    def append(self, *arrays: np.ndarray) -> None:
        for fh, arr, (_, dtype) in zip(self.files, arrays, KINDS):
            fh.write(memoryview(np.ascontiguousarray(arr, dtype=dtype)))  # ENOSPC, not a short count
        self.rows += len(arrays[2])

    def close(self) -> None:
        for fh in self.files:
            fh.close()


def spilled(base: Path, rows: int, widths: tuple[int, int]) -> list[np.ndarray]:
    """The arrays `_Spill` wrote (memory-mapped): dense, sparse, labels, time."""
    shapes = [(rows, widths[0]), (rows, widths[1]), (rows,), (rows,)]
    return [np.memmap(f"{base}.{kind}", dtype=dtype, mode="r", shape=shape)
            for (kind, dtype), shape in zip(KINDS, shapes)]


def drop(base: Path) -> None:
    """Remove a part's files (its rows and summary)."""
    for kind, _ in KINDS + (("json", None),):
        Path(f"{base}.{kind}").unlink(missing_ok=True)


class _Enough(Exception):
    """A part found more bad rows than --max-bad-rows: the merge stops the job at it."""


class _Collect:
    """The bad rows of a part: the first `stored` located, every one counted by kind."""

    def __init__(self, bad: BadRows):
        self.stored, self.max_bad = bad.stored, bad.max_bad
        self.rows: list[list[Any]] = []
        self.by_kind: Counter = Counter()

    def __call__(self, first: int, last: int, kind: str, detail: str, spanned: bool) -> None:
        self.by_kind[kind] += 1
        if self.stored is None or len(self.rows) < self.stored:
            self.rows.append([first, last, kind, detail, spanned])
        if self.max_bad is not None and sum(self.by_kind.values()) > self.max_bad:
            raise _Enough(spanned)  # (a record over several lines may be the part's last, cut by the part's end)


def part_base(staging: Path, i: int) -> Path:
    return staging / f"part-{i:06d}"


def read_part(i: int, part: Part, path: Path, parser: Any, bad: BadRows, staging: Path) -> bool:
    """Read part i into the staging directory; False if it stopped at an error or too many bad rows."""
    local, collect, stats = parser.fresh(), _Collect(bad), InputStats(str(path))
    with user_os_errors(staging):  # (a full disk names the output the staging directory is inside)
        return _read_part(i, part, path, local, collect, stats, staging)


def _read_part(i: int, part: Part, path: Path, local: Any, collect: "_Collect", stats: InputStats,
               staging: Path) -> bool:
    spill = _Spill(part_base(staging, i))
    summary: dict[str, Any] = {"error": None, "complete": False, "lines": 0, "malformed_end": False}
    try:
        end = local.read(path, spill, collect, stats, span=None if part.end is None else (part.start, part.end))
        summary.update(complete=True, lines=end.lines, malformed_end=end.malformed_end)
    except InputError as exc:
        summary["error"] = str(exc)
    except _Enough as exc:
        summary["malformed_end"] = exc.args[0]  # the merge reads the part itself rather than stop at it
    finally:
        spill.close()
    if summary["complete"] and part.first:  # the whole file's sha256 (a cut file's first part reads the rest)
        summary["sha256"] = stats.sha256 or sha256_file(path)
    rows = spill.rows if summary["complete"] else 0
    sparse = spilled(part_base(staging, i), rows, local.widths)[1] if rows else None
    summary.update(rows=spill.rows, bad=collect.rows, bad_by_kind=dict(collect.by_kind),
                   state=local.share(sparse if summary["complete"] else None))
    del sparse
    (part_base(staging, i).with_suffix(".json")).write_text(json.dumps(summary))
    return summary["complete"]


def read_share(parts: list[Part], mine: list[int], inputs: list[Path], parser: Any, bad: BadRows,
               staging: Path, progress: Stages | None = None) -> None:
    """Read this rank's parts in order, stopping after one that stopped early."""
    update = progress("read (this process's share)", sum(parts[i].work for i in mine), "B") if progress else None
    for i in mine:
        ok = read_part(i, parts[i], inputs[parts[i].file], parser, bad, staging)
        if update is not None:
            update(parts[i].work)
        if not ok:
            return
