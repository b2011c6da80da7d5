"""The raw Criteo TSV reader (the helpers every raw reader shares: lowprec.data.rawinput).

Criteo Kaggle / Terabyte rows are `label \\t I1..I13 \\t C1..C26`: a 0/1 label, 13 integer counts and
26 categoricals given as hex hashes; every field but the label may be empty. Encoding:

- dense: empty -> 0, negative -> 0, then log1p (what TorchRec's and the reference DLRM's
  preprocessing do), stored as float32;
- sparse: empty -> the reserved id 0; otherwise id = 1 + int(hex, 16) mod (n - 1) for a table of n rows,
  so the hash is stable across runs and machines (never Python's salted `hash()`), and 0 only ever
  means "missing".

A line is malformed when it has other than 40 fields, a label other than `0`/`1`, an integer field
that is not `-?[0-9]+` of at most 18 characters, or a categorical that is not 1-64 hex digits.

Rows are read line by line (plain or gzip, detected by the magic bytes), parsed PARSE_ROWS at a time by
a vectorized parser (`parse_chunk`, checked against the one-line reference `parse_line`) and written in
chunks, so memory stays bounded whatever the input size. Malformed lines are skipped, counted and
reported with file and line through `BadRows`; past `max_bad` it raises `InputError`. Blank lines are
ignored. Windows: one per input file (a file without valid rows gives an empty window), or every
`rows_per_window` good rows across the inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data.csvlabel import plain_int
from lowprec.data.dataset import DatasetMeta, DatasetWriter, SparseFeature
from lowprec.data.rawinput import (
    DEFAULT_MAX_BAD_ROWS, BadRow, BadRows, InputStats, Read, Reporter, RowDigests, SequentialWindows, check_distinct,
    check_inputs, guarded, no_rows_text, open_span,
)
from lowprec.data.sharedread import read_all, read_shared
from lowprec.data.synth import KAGGLE_CARDINALITIES
from lowprec.errors import InputError
from lowprec.progress import Stages

N_DENSE, N_SPARSE = 13, 26
DENSE_NAMES = [f"int_{i}" for i in range(N_DENSE)]
SPARSE_NAMES = [f"cat_{i}" for i in range(N_SPARSE)]
DEFAULT_TABLE_SIZE = 1_000_000
MAX_TABLE = 2**31 - 1  # ids are stored as int32
PARSE_ROWS = 8192  # lines parsed per vectorized step
MISSING_ID = 0
N_FIELDS = 1 + N_DENSE + N_SPARSE
_HEX = b"0123456789abcdefABCDEF"
_INT_MAX, _HEX_MAX = 18, 64  # longest integer field (chars) and hex field (digits) accepted
_NIBBLE = np.full(256, -1, np.int8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_DUMMY = [b"0"] * N_FIELDS

def parse_table_sizes(text: str | int, n: int = N_SPARSE) -> list[int]:
    """Table sizes from `N` (every table), `N1,...,N26` (per table), or `kaggle[:N]`: per table
    min(N, Kaggle cardinality + 1), TorchRec's num_embeddings_per_feature plus the reserved id 0.
    Each size must be in [2, MAX_TABLE] (id 0 is reserved for empty; ids are int32)."""
    text = str(text).strip()
    try:
        if text == "kaggle" or text.startswith("kaggle:"):
            cap = plain_int(text[7:]) if text != "kaggle" else MAX_TABLE
            sizes = [min(cap, c + 1) for c in KAGGLE_CARDINALITIES]
        else:
            sizes = [plain_int(p) for p in text.split(",")]
    except ValueError:
        raise InputError(f"--table-size {text!r}: give N, {n} comma-separated N, or kaggle[:N]") from None
    if len(sizes) == 1:
        sizes = sizes * n
    if len(sizes) != n or min(sizes) < 2 or max(sizes) > MAX_TABLE:
        raise InputError(f"--table-size {text!r}: need 1 or {n} integers, each in [2, {MAX_TABLE}]")
    return sizes


def parse_line(parts: list[bytes], mods: list[int]) -> tuple[int, list[int], list[int]] | tuple[str, str]:
    """Reference parser of one split line: (label, ints, ids), or (kind, detail) when malformed.

    `parse_chunk` is the fast path and must agree with it; this one also explains bad rows."""
    if len(parts) != N_FIELDS:
        return "field count", f"{len(parts)} tab-separated fields, expected {N_FIELDS}"
    lab = parts[0]
    if lab not in (b"0", b"1"):
        return "label", f"label {lab.decode(errors='replace')!r} is not 0 or 1"
    ints = []
    for j, x in enumerate(parts[1 : 1 + N_DENSE]):
        if not x:
            ints.append(0)
        elif (x.isdigit() or (x[:1] == b"-" and x[1:].isdigit())) and len(x) <= _INT_MAX:
            ints.append(int(x))
        else:
            return "integer", f"{DENSE_NAMES[j]} = {x[:40].decode(errors='replace')!r} is not an integer (<= {_INT_MAX} characters)"
    ids = []
    for j, x in enumerate(parts[1 + N_DENSE :]):
        if not x:
            ids.append(MISSING_ID)
        elif not x.translate(None, _HEX) and len(x) <= _HEX_MAX:
            ids.append(1 + int(x, 16) % mods[j])
        else:
            return "hex", f"{SPARSE_NAMES[j]} = {x[:70].decode(errors='replace')!r} is not hexadecimal (<= 64 digits)"
    return int(lab), ints, ids


NUL_ROW = ("field", "the line holds a NUL byte (\\x00), which no Criteo field does")


def _decode(c: np.ndarray, base: int, mods: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """NUL-padded fields as a (rows, fields, width) uint8 array -> (values, ok). Empty -> 0.

    base 10: optional leading '-', at most _INT_MAX chars, negative -> 0.
    base 16: at most _HEX_MAX hex digits, value 1 + int(hex, 16) % mods."""
    c = np.ascontiguousarray(np.moveaxis(c, -1, 0))  # (width, rows, fields): contiguous per position
    present = c != 0
    nib = _NIBBLE[c]
    length = present.sum(0)
    prefix = (present[:-1] >= present[1:]).all(0)
    if base == 10:
        neg = c[0] == ord("-")
        char_ok = ((nib >= 0) & (nib < 10)) | ~present
        char_ok[0] |= neg
        ok = char_ok.all(0) & prefix & (length <= _INT_MAX) & ~(neg & (length == 1))
    else:
        ok = ((nib >= 0) | ~present).all(0) & prefix & (length <= _HEX_MAX)
    exact = mods is None or c.shape[0] <= 16  # 16 hex digits fit in uint64: reduce once at the end
    v = np.zeros(c.shape[1:], np.uint64 if exact else np.int64)
    digit = np.where(present & (nib >= 0), nib, 0).astype(v.dtype)
    use = present & (nib >= 0)
    for k in range(c.shape[0]):
        step = v * v.dtype.type(base) + digit[k]
        v = np.where(use[k], step if exact else step % mods, v)
    if base == 10:
        return np.where(neg, 0, v.astype(np.int64)), ok
    v = v % mods.astype(np.uint64) if exact else v
    return np.where(length > 0, 1 + v.astype(np.int64), MISSING_ID), ok


def parse_chunk(parts: list[list[bytes]], mods: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized parse of split lines: (labels, ints, ids, ok); rows with ok False are malformed."""
    n = len(parts)
    ok = np.fromiter((len(p) == N_FIELDS for p in parts), bool, n)
    shaped = parts if ok.all() else [p if len(p) == N_FIELDS else _DUMMY for p in parts]
    arr = np.array(shaped, dtype=f"S{_HEX_MAX + 1}").reshape(n, N_FIELDS)
    c = arr.view(np.uint8).reshape(n, N_FIELDS, _HEX_MAX + 1)
    width = int(np.flatnonzero(c.any(axis=(0, 1))).max(initial=1)) + 2  # drop all-NUL columns
    c = c[..., : min(width, _HEX_MAX + 1)]
    ok &= ((c[:, 0, 0] == ord("0")) | (c[:, 0, 0] == ord("1"))) & (c[:, 0, 1] == 0)
    ints, ok_i = _decode(c[:, 1 : 1 + N_DENSE], 10, None)
    ids, ok_c = _decode(c[:, 1 + N_DENSE :], 16, mods)
    ok &= ok_i.all(1) & ok_c.all(1)
    return (c[:, 0, 0] == ord("1")).astype(np.int32), ints, ids.astype(np.int32), ok


def encode_dense(ints: np.ndarray) -> np.ndarray:
    """Criteo integer counts -> model-ready floats: negative -> 0, then log1p."""
    return np.log1p(np.maximum(ints.astype(np.float64), 0.0)).astype(np.float32)


class TsvParser:
    """Criteo TSV lines into rows, for one process and for parts (lowprec.data.parts): ids are hashes
    of the table sizes alone, so a part's reader needs no state and the merge nothing of it."""

    widths = (N_DENSE, N_SPARSE)

    def __init__(self, sizes: list[int]):
        self.mods = [s - 1 for s in sizes]

    def fresh(self) -> "TsvParser":
        return self

    def share(self, sparse: np.ndarray | None) -> dict[str, Any]:
        return {}

    def absorb(self, state: dict[str, Any], path: Path, line_base: int) -> list[Any]:
        return []

    def read(self, path: Path, sink: Any, bad_row: BadRow, stats: InputStats, progress: Stages | None = None,
             span: tuple[int, int] | None = None, line_base: int = 0, stop_lines: frozenset[int] = frozenset()) -> Read:
        """The file `path`, or its bytes `span` (starting a line), into `sink`; lines numbered from
        `line_base` + 1; with `stop_lines`, stop after one of those lines."""
        parts: list[list[bytes]] = []
        line_nos: list[int] = []
        nul: list[int] = []  # chunk rows holding a NUL byte (the fixed-width parse would drop trailing NULs)
        mods_arr = np.asarray(self.mods, dtype=np.int64)
        end = Read()

        def flush() -> None:
            if not parts:
                return
            labels, ints, ids, ok = parse_chunk(parts, mods_arr)
            ok[nul] = False
            for i in np.flatnonzero(~ok):
                why = NUL_ROW if i in nul else parse_line(parts[i], self.mods)
                bad_row(line_nos[i], line_nos[i], *(why if isinstance(why[0], str) else ("field", "malformed field")),
                        False)
            stats.rows += int(ok.sum())
            stats.bad_rows += int((~ok).sum())
            sink.append(encode_dense(ints[ok]), ids[ok], labels[ok], np.zeros(int(ok.sum())))
            parts.clear(), line_nos.clear(), nul.clear()

        n = line_base  # the line just read (a local: this loop runs once a line)
        bom = span is None or span[0] == 0  # the file's first line: a UTF-8 byte-order mark is not data
        with open_span(path, stats, progress, span) as (stream, tick):
            for line in guarded(stream, path, lambda: n + 1):
                n += 1
                line = line.rstrip(b"\r\n")
                if bom:
                    line, bom = line.removeprefix(b"\xef\xbb\xbf"), False
                if line and not line.isspace():  # (blank lines, spaces and tabs only included, as in CSV)
                    if b"\0" in line:
                        nul.append(len(parts))
                    parts.append(line.split(b"\t"))
                    line_nos.append(n)
                if len(parts) >= PARSE_ROWS:
                    flush()
                    tick()
                if stop_lines and n in stop_lines:
                    end.stopped_at = n
                    break
            flush()
        stats.lines, end.lines = n, n - line_base
        return end


def prepare_criteo(
    inputs: list[Path],
    root: Path | None,
    table_sizes: list[int] | None = None,
    rows_per_window: int | None = None,
    max_bad_rows: int | None = DEFAULT_MAX_BAD_ROWS,
    report: Reporter | None = None,
    progress: Stages | None = None,
    show_bad_rows: int | None = 20,
    in_turn: tuple[int, int] | None = None,
    after: tuple[int, int] = (0, 0),
    empty_ok: bool = False,
) -> tuple[DatasetMeta | None, BadRows]:
    """Read Criteo TSV files into a dataset at `root` (normally `fileio.atomic_dir`'s temp dir).

    Under torchrun every rank reads a share of the input and rank 0 (`root`) writes the dataset; the
    other ranks pass root None and get (None, their BadRows) (lowprec.data.sharedread). `in_turn`:
    as csvread.prepare_csv's; `after`: as DatasetWriter's (`data append`); `empty_ok`: as prepare_csv's."""
    check_inputs(inputs)
    sizes = table_sizes or [DEFAULT_TABLE_SIZE] * N_SPARSE
    if len(sizes) != N_SPARSE or min(sizes) < 2 or max(sizes) > MAX_TABLE:
        raise InputError(f"need {N_SPARSE} table sizes, each in [2, {MAX_TABLE}]")
    if rows_per_window is not None and rows_per_window < 1:
        raise InputError("--rows-per-window must be >= 1")
    bad = BadRows(max_bad_rows, report, keep=show_bad_rows)
    parser = TsvParser(sizes)
    if root is None:  # a reading rank under torchrun: its share into rank 0's staging directory
        read_shared(inputs, None, parser, None, bad, [], None)
        return None, bad
    writer = DatasetWriter(root, DENSE_NAMES, [SparseFeature(n, s) for n, s in zip(SPARSE_NAMES, sizes)], after=after)
    stats = [InputStats(str(p)) for p in inputs]
    out = RowDigests(SequentialWindows(writer, rows_per_window), inputs, stats)
    read_all(inputs, root, parser, out, bad, stats, progress, in_turn)
    out.finish()
    if sum(s.rows for s in stats) == 0 and not empty_ok:
        raise InputError(f"no valid rows in {no_rows_text([s.to_json() for s in stats], header=False)}")
    writer.warnings.extend(check_distinct(stats))
    writer.provenance.update({
        "source": "criteo-tsv",
        "inputs": [s.to_json() for s in stats],
        "windows": "per input file" if rows_per_window is None else f"every {rows_per_window} rows",
        "dense_transform": "log1p(max(x, 0)); empty -> 0",
        "sparse_hash": "empty -> 0; else 1 + int(hex, 16) % (num_embeddings - 1)",
        "bad_rows": bad.to_json(),
    })
    from lowprec.data.encoding import hashed

    return writer.finish(encodings=[hashed("criteo-hex-mod", n) for n in sizes]), bad
