"""CSV records read strictly, for every CSV reader (lowprec.data.csvrows, MovieLens' movies.csv).

Python's csv module is lenient by default: a quote left open reads every line up to the next quote
as one cell (the rows between vanish into it), and `1,"2"x` reads as '2x'. Here records are read in
strict mode, and each comes with the physical lines it spans, so a reader can make a malformed
record a bad row at the line where it starts, name the lines it ran over, and go on at the next
line. Lines end at `\n` (a `\r\n` too), as `grep -n`, `sed`, editors, the Criteo and MovieLens
readers and the part cutter (lowprec.data.parts) count them: a lone `\r` inside a quoted cell is
part of the cell, and outside quotes it makes its record malformed (the csv module's default, a
line break at every lone `\r`, moved every later line number by one). Cells may be up to FIELD_LIMIT bytes (the module's default, 128 KiB, stopped a whole run at one
long cell of a column nobody reads).
"""

from __future__ import annotations

import csv
import io
from typing import IO, Any, Iterator

FIELD_LIMIT = 64 << 20


def strict_reader(stream: IO[bytes], delimiter: str = ",", errors: str = "strict", bom: bool = True) -> Any:
    """A csv reader over a binary stream (UTF-8; a BOM skipped when `bom`: the stream starts a file)
    in strict mode."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    return csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig" if bom else "utf-8", errors=errors, newline="\n"),
                      delimiter=delimiter, strict=True)


LONE_CR = "new-line character seen in unquoted field"  # the csv module's words for a lone \r outside quotes


def error_text(exc: csv.Error) -> str:
    """A malformed record's reason, in words a user can act on."""
    if LONE_CR in str(exc):
        return "a carriage return (\\r) inside an unquoted cell, where no line ends: quote the cell or remove the \\r"
    return str(exc)


def records(reader: Any) -> Iterator[tuple[int, int, list[str] | csv.Error]]:
    """(first line, last line, cells) per record of `reader`; a malformed record's csv.Error in place
    of its cells (the reader goes on at the next line)."""
    it = iter(reader)
    while True:
        first = reader.line_num + 1
        try:
            row: list[str] | csv.Error = next(it)
        except StopIteration:
            return
        except csv.Error as exc:
            row = exc
        yield first, reader.line_num, row


def spans(first: int, last: int) -> str:
    """The end of a bad-row message for a record over several lines."""
    return (f"; the record runs over lines {first}-{last}: is a quote left open until line {last}?"
            if last > first else "")
