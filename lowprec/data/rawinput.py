"""What every raw-data reader (Criteo TSV, CSV, MovieLens) shares: opening an input (plain or gzip,
hashed as it is read), naming read errors by file and line, counting and locating bad rows, and
writing windows in input order.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lowprec.data.dataset import DatasetWriter, WindowWriter
from lowprec.data.records import spans
from lowprec.data.rowsample import rows_digest
from lowprec.errors import InputError
from lowprec.progress import Stages

DEFAULT_MAX_BAD_ROWS = 1000
CHUNK_ROWS = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"  # an input is gzip by its first bytes, whatever its name

Reporter = Callable[[str], None]
# progress(name, total, unit) -> update(n): the caller (the CLI) owns the bar; None shows nothing


@dataclass
class BadRows:
    """Counts malformed rows; reports the first `keep` + 1 as `file:line: reason` (the last of them
    for the reporter to say that more are counted); raises past `max_bad`."""

    max_bad: int | None = DEFAULT_MAX_BAD_ROWS
    report: Reporter | None = None
    count: int = 0
    by_reason: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    keep: int | None = 20  # bad rows located in provenance (`examples`); None: all

    def add(self, path: Path | str, line: int, kind: str, detail: str) -> None:
        self.count += 1
        self.by_reason[kind] += 1
        msg = f"{path}:{line}: {detail}"
        if self.keep is None or len(self.examples) < self.keep:
            self.examples.append(msg)
        if self.report is not None and (self.keep is None or self.count <= self.keep + 1):
            self.report(msg)  # the rows it shows, and one more to say that others are counted
        if self.max_bad is not None and self.count > self.max_bad:
            raise InputError(
                f"{msg}\n{self.count} bad rows exceed --max-bad-rows {self.max_bad}; "
                f"nothing was written"
            )

    def add_counted(self, kind: str, n: int) -> None:
        """n more bad rows of `kind` that are counted, not located (beyond what `stored` keeps)."""
        self.count += n
        self.by_reason[kind] += n

    @property
    def stored(self) -> int | None:
        """How many located bad rows a share of the input must keep so that adding them in order, then
        counting the rest, reports, keeps and stops exactly as adding every one would (None: all)."""
        if self.keep is None and self.max_bad is None:
            return None
        return max(-1 if self.keep is None else self.keep, -1 if self.max_bad is None else self.max_bad) + 1

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "max_bad_rows": self.max_bad,
                "by_reason": dict(sorted(self.by_reason.items())), "examples": self.examples}


class _HashingReader(io.RawIOBase):
    """Passes bytes through while hashing them (sha256) and counting them (for the progress bar)."""

    def __init__(self, raw: io.BufferedReader):
        self.raw, self.sha, self.nbytes = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self.raw.readinto(buf)
        if n:
            self.sha.update(memoryview(buf)[:n])
            self.nbytes += n
        return n or 0


@dataclass
class InputStats:
    path: str
    sha256: str = ""
    lines: int = 0
    rows: int = 0
    bad_rows: int = 0
    rows_digest: str = ""  # of the rows read (RowDigests): the same rows under other bytes have the same one

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_input(path: Path) -> None:
    """InputError unless `path` is a file (a directory or a missing file named as such)."""
    if path.is_dir():
        raise InputError(f"input {path} is a directory; give the files themselves (e.g. {path}/day_0.tsv ...)")
    if path.is_symlink() and not path.exists():
        raise InputError(f"input {path} is a symlink to nothing (a missing target or a symlink loop)")
    if path.exists() and not path.is_file():
        raise InputError(f"input {path} is not a regular file (a FIFO, socket or device); give a file")
    if not path.is_file():
        raise InputError(f"input file not found: {path}")


def check_inputs(paths: list[Path]) -> None:
    """`check_input` for each, before reading hours of the others; and no file given twice (the same
    path, a symlink or a hard link to it): its rows would count twice."""
    if not paths:
        raise InputError("no input files given")
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        check_input(path)
        st = path.stat()
        if (st.st_dev, st.st_ino) in seen:
            raise InputError(f"input {path} is the same file as {seen[st.st_dev, st.st_ino]}, given twice: its rows "
                             f"would count twice; give each file once")
        seen[st.st_dev, st.st_ino] = path


def header_positions(path: Path, header: list[str], want: list[str], named_in: str = "") -> list[int]:
    """Where each `want` column sits in a CSV header (names stripped of spaces). A column missing, or
    named twice (the reader could not tell which to read), is an error naming the file's line 1;
    repeats of columns nobody reads are fine. `named_in` says who named the columns, for the message."""
    cols = [h.strip() for h in header]
    missing = [c for c in dict.fromkeys(want) if c not in cols]
    if missing:
        raise InputError(f"{path}:1: header {cols} lacks column(s) {missing}{named_in}")
    twice = [c for c in dict.fromkeys(want) if cols.count(c) > 1]
    if twice:
        raise InputError(f"{path}:1: header names column(s) {twice} more than once; which to read is "
                         "ambiguous (rename one in the file)")
    return [cols.index(c) for c in want]


SAME_ROWS_REFUSED = 100  # an input this long whose rows repeat another's, all of them, is a copy, not chance


def check_distinct(stats: list[InputStats]) -> list[str]:
    """After reading: no two inputs with the same bytes (a copy of a file given beside it), nor with
    the same rows under other bytes (the day gzipped beside itself, other line endings, a byte-order
    mark: their rows digests match), whose rows would count twice. Inputs of fewer than
    SAME_ROWS_REFUSED rows that repeat another's rows may do so by chance: returned as warnings."""
    seen: dict[str, str] = {}
    rows_seen: dict[tuple[int, str], str] = {}
    warnings = []
    for s in stats:
        if s.sha256 in seen and s.rows:  # (quiet days' empty or header-only files have the same bytes: no row twice)
            raise InputError(f"input {s.path} holds the same bytes as {seen[s.sha256]} (same sha256): a copy given "
                             f"twice would count its rows twice; give each file once")
        seen.setdefault(s.sha256, s.path)
        key = (s.rows, s.rows_digest)
        if s.rows and s.rows_digest and key in rows_seen:
            said = f"input {s.path} holds the same {s.rows:,} rows as {rows_seen[key]} (other bytes)"
            if s.rows < SAME_ROWS_REFUSED:
                warnings.append(f"{said}: if it is the same data again, its rows count twice")
                continue
            raise InputError(f"{said}: the same data twice (another compression, line endings or byte-order "
                             f"mark?) would count its rows twice; give each file once")
        rows_seen.setdefault(key, s.path)
    return warnings


class RowDigests:
    """A window sink (SequentialWindows, CalendarWindows) that also sums each input's rows into its
    InputStats.rows_digest (lowprec.data.rowsample.rows_digest), whichever way the rows were read:
    one process, or the parts of several merged in input order."""

    def __init__(self, sink: Any, inputs: list[Path], stats: list[InputStats]):
        self.sink, self.current = sink, None
        self.stats = {str(p): s for p, s in zip(inputs, stats)}

    def start_file(self, path: Path) -> None:
        self.current = self.stats[str(path)]
        self.sink.start_file(path)

    def append(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, times: Any = None) -> None:
        if self.current is not None and len(labels):
            total = int(self.current.rows_digest or "0", 16) + rows_digest(dense, sparse, labels, times)
            self.current.rows_digest = f"{total % (1 << 64):016x}"
        self.sink.append(dense, sparse, labels, times)

    def finish(self) -> None:
        self.sink.finish()


def no_rows_text(inputs: list[dict[str, Any]], header: bool) -> str:
    """The inputs (InputStats.to_json()) that hold no valid row, each with what it holds instead:
    `day9.csv (empty)`, `(a header line only)`, `(all 3 rows bad)`."""
    out = []
    for s in inputs:
        if s.get("rows"):
            continue
        bad, lines = s.get("bad_rows") or 0, s.get("lines") or 0
        what = (f"all {bad:,} row{'s' * (bad != 1)} bad" if bad else "empty" if lines == 0 else
                "a header line only" if header and lines == 1 else "no rows, only blank lines")
        out.append(f"{s.get('path')} ({what})")
    return ", ".join(out)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def open_input(
    path: Path, stats: InputStats, progress: Stages | None
) -> Iterator[tuple[io.BufferedIOBase, Callable[[], None]]]:
    """Yield (decompressed binary stream, tick) for a plain or gzip file; sha256 lands in `stats`.

    `tick()` reports the compressed bytes read so far to `progress`; call it every few thousand lines.
    Iterate the stream through `guarded` so read errors name the file and line.
    """
    check_input(path)
    with open(path, "rb") as raw:
        is_gz = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        hashing = _HashingReader(raw)
        buffered = io.BufferedReader(hashing, buffer_size=1 << 20)
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=buffered, mode="rb") if is_gz else buffered
        update = progress(path.name, path.stat().st_size, "B") if progress else None
        done = [0]

        def tick() -> None:
            if update is not None:
                update(hashing.nbytes - done[0])
                done[0] = hashing.nbytes

        yield stream, tick
        while buffered.read(1 << 20):  # hash whatever the reader did not consume
            pass
        tick()
        stats.sha256 = hashing.sha.hexdigest()


READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error)


def guarded(items: Iterator[Any], path: Path, line: Callable[[], int]) -> Iterator[Any]:
    """Re-raise read errors (truncated gzip, bad UTF-8, ...) of `items` as InputError naming file:line."""
    it = iter(items)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except READ_ERRORS as exc:
            raise InputError(f"{path}:{line()}: cannot read ({exc})") from exc
        yield item


def rows_window(offset: int, rows: int) -> dict[str, str]:
    """Label, start and end of a `rows:N` window: the good rows [offset, offset + rows) of the dataset."""
    return {"label": f"rows {offset}-{offset + rows - 1}", "start": str(offset), "end": str(offset + rows)}


class SequentialWindows:
    """Writes rows into windows in input order: one window per input file, or every `rows_per_window` rows."""

    def __init__(self, writer: DatasetWriter, rows_per_window: int | None):
        self.writer, self.rows_per_window = writer, rows_per_window
        self.current: WindowWriter | None = None
        self.offset = writer.after[1]  # good rows written before the current window (a dataset's, appended to)

    def start_file(self, path: Path) -> None:
        if self.rows_per_window is None:
            self._close()
            self.current = self.writer.window(label=path.name)

    def append(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, times: Any = None) -> None:
        i = 0
        while i < len(labels):
            if self.current is None:
                self.current = self.writer.window()
            room = len(labels) - i
            if self.rows_per_window is not None:
                room = min(room, self.rows_per_window - self.current.rows)
            self.current.append(dense[i : i + room], sparse[i : i + room], labels[i : i + room])
            i += room
            if self.rows_per_window is not None and self.current.rows >= self.rows_per_window:
                self._close()

    def _close(self) -> None:
        if self.current is None:
            return
        w, self.current = self.current, None
        if self.rows_per_window is not None:
            w.info.update(rows_window(self.offset, w.rows))
        self.offset += w.rows
        self.writer.add_window(w)

    def finish(self) -> None:
        self._close()


BadRow = Callable[[int, int, str, str, bool], None]  # (first line, last line, kind, detail, spans lines)


def locate(bad: BadRows, path: Path) -> BadRow:
    """A `BadRow` that adds to `bad` as `path:LINE: detail`, naming the lines a record ran over when
    the complaint is about its quoting."""
    def add(first: int, last: int, kind: str, detail: str, spanned: bool) -> None:
        bad.add(path, first, kind, detail + (spans(first, last) if spanned else ""))

    return add


@dataclass
class Read:
    """How a read of a file, or of a byte range of it, ended."""

    lines: int = 0  # physical lines read
    malformed_end: bool = False  # the last record was malformed (a range may end inside a quoted cell)
    stopped_at: int | None = None  # the `stop_lines` entry after which reading stopped


@contextlib.contextmanager
def open_span(path: Path, stats: InputStats, progress: Stages | None,
              span: tuple[int, int] | None) -> Iterator[tuple[Any, Callable[[], None]]]:
    """The whole file (gzip or plain, hashed into `stats`, as `open_input`), or the plain file's bytes
    [start, end) (a part of it, lowprec.data.parts) with a tick that does nothing."""
    if span is None:
        with open_input(path, stats, progress) as opened:
            yield opened
        return
    with open(path, "rb") as raw:
        yield io.BufferedReader(_ByteRange(raw, *span), buffer_size=1 << 20), lambda: None


class _ByteRange(io.RawIOBase):
    def __init__(self, raw: Any, start: int, end: int):
        raw.seek(start)
        self.raw, self.left = raw, end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self.raw.readinto(memoryview(buf)[: min(len(buf), self.left)]) if self.left > 0 else 0
        self.left -= n or 0
        return n or 0
