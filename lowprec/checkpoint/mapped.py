"""Read-only, zero-copy reading of tensor files of any size: safetensors, index files, row shards.

One reader for every tensor file lowprec opens. Each file is mapped once with PROT_READ/MAP_SHARED
(`mmap.ACCESS_READ`): such a mapping works for files larger than RAM + swap (safetensors'
`safe_open` maps private and writable, which Linux refuses there) and does not count against
RLIMIT_DATA. The header (8-byte little-endian length, then JSON) is parsed here and every entry
is checked against the file size; tensors are torch views of the mapped bytes, never copies.
Writing to them is a segfault, so callers that must write clone first (`load_float_model(writable=True)`).

Layouts `open_tensors(path)` reads:

(a) one `.safetensors` file;
(b) an index file (`*.safetensors.index.json`, as large-model exporters write):
    {"metadata": {...}, "weight_map": {"tensor name": "shard file.safetensors", ...}}
(c) the same index where a tensor is stored as row-range shards (as MLPerf DLRMv2's reference
    checkpoint stores its tables): the weight_map value is a list
    [{"file": "part0.safetensors", "tensor": "name in that file", "rows": [0, 1000000]}, ...]
    whose ranges cover [0, rows) in order without gaps; every part has the same dtype and
    trailing shape. Such a tensor is one `LogicalTable`; its row chunks are views of one shard.

Shard file names are relative to the index's directory: `..` components and absolute paths are
refused. sha256: `Sha256Stream` hashes a file while its bytes are read (`advance(end)` as the
reader moves forward), so verification costs no second pass where reading is in file order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import torch

from lowprec.checkpoint.safetensors_file import DTYPES, Entry, MappedFile, Sha256Stream, as_tensor
from lowprec.errors import InputError
from lowprec.progress import Update

DEFAULT_CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class Part:
    """Rows [lo, hi) of a logical table, stored as tensor `entry` of a mapped file."""

    lo: int
    hi: int
    entry: Entry


class LogicalTable:
    """A tensor stored in one or more row-range parts, read by rows without materialising it.

    `rows(a, b)` is a view when the range lies in one part (always, for a single part) and a copy
    of just those rows otherwise; `iter_chunks(max_bytes)` yields (start, view) chunks that never
    cross a part; `tensor()` is the whole table as a view (single part) or a copy (several).
    `on_read(file, stop)` is called with the end offset of every chunk read (sha256 streaming)."""

    def __init__(self, name: str, parts: list[Part], files: dict[Path, MappedFile],
                 on_read: Callable[[Path, int], None] | None = None):
        self.name, self.parts, self._files, self.on_read = name, parts, files, on_read
        first = parts[0].entry
        self.dtype = DTYPES[first.dtype][1]
        self.shape = (parts[-1].hi, *first.shape[1:])
        self.row_bytes = math.prod(first.shape[1:]) * first.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def _view(self, part: Part, a: int, b: int) -> torch.Tensor:
        e = part.entry
        t = as_tensor(self._files[e.file].buf, e)
        if self.on_read is not None and b > a:
            self.on_read(e.file, e.start + (b - part.lo) * self.row_bytes)
        return t if (a, b) == (part.lo, part.hi) else t[a - part.lo: b - part.lo]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if not 0 <= start <= stop <= self.shape[0]:
            raise IndexError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.shape[0]})")
        pieces = [self._view(p, max(start, p.lo), min(stop, p.hi)) for p in self.parts
                  if p.lo < stop and start < p.hi]
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
        return torch.cat(pieces)

    def tensor(self) -> torch.Tensor:
        return self.rows(0, self.shape[0])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """`table[a:b]` = `rows(a, b)` clipped to the table (a contiguous slice, as of a tensor)."""
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError(f"{self.name}: only contiguous row slices are read")
        return self.rows(start, max(start, stop))

    def iter_chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, torch.Tensor]]:
        step = max(1, max_bytes // max(self.row_bytes, 1))
        for p in self.parts:
            for a in range(p.lo, p.hi, step):
                yield a, self._view(p, a, min(a + step, p.hi))


def _safe_name(index: Path, name: Any) -> str:
    p = PurePosixPath(name) if isinstance(name, str) else None
    if p is None or not name or p.is_absolute() or ".." in p.parts or "\\" in name or ":" in name:
        raise InputError(f"{index}: shard file {name!r} must be a relative path inside "
                         f"{index.parent} (no '..', no absolute path)")
    return name


def _index_spec(index: Path) -> dict[str, list[tuple[str, str, int | None, int | None]]]:
    """tensor name -> [(file, tensor in file, first row, end row)] (rows None: the whole tensor)."""
    from lowprec.fileio import read_json

    obj = read_json(index, "tensor index")
    wmap = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wmap, dict):
        raise InputError(f"{index}: a tensor index needs a \"weight_map\" object")
    out: dict[str, list[tuple[str, str, int | None, int | None]]] = {}
    for name, where in wmap.items():
        if isinstance(where, str):
            out[name] = [(_safe_name(index, where), name, None, None)]
            continue
        if not isinstance(where, list) or not where:
            raise InputError(f"{index}: weight_map[{name!r}] must be a file name or a list of row shards")
        parts = []
        for i, part in enumerate(where):
            rows = part.get("rows") if isinstance(part, dict) else None
            if (not isinstance(rows, list) or len(rows) != 2 or not all(type(r) is int for r in rows)
                    or not isinstance(part.get("tensor"), str)):
                raise InputError(f"{index}: weight_map[{name!r}][{i}] must be "
                                 f"{{\"file\", \"tensor\", \"rows\": [start, stop]}}, got {part!r}")
            parts.append((_safe_name(index, part.get("file")), part["tensor"], rows[0], rows[1]))
        out[name] = parts
    return out


def index_files(index: Path) -> list[str]:
    """The files a tensor index (model.safetensors.index.json) names, sorted, each once."""
    return sorted({part[0] for parts in _index_spec(index).values() for part in parts})


class MappedTensors:
    """Every tensor of a safetensors file or index, read-only and zero-copy (module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.root = self.path.parent
        if self.path.name.endswith(".index.json"):
            spec = _index_spec(self.path)
        else:
            spec = None
        self.files: dict[Path, MappedFile] = {}
        self._parts: dict[str, list[Part] | Entry] = {}
        if spec is None:
            mf = self._open(self.path)
            self._parts = dict(mf.entries)
        else:
            for name, parts in spec.items():
                self._parts[name] = self._resolve(name, parts)
        self._hash: dict[Path, Sha256Stream] = {}

    def _open(self, path: Path) -> MappedFile:
        if path not in self.files:
            self.files[path] = MappedFile(path)
        return self.files[path]

    def _resolve(self, name: str, parts: list[tuple[str, str, int | None, int | None]]):
        out, expect = [], 0
        for file, tensor, lo, hi in parts:
            mf = self._open(self.root / file)
            if tensor not in mf.entries:
                raise InputError(f"{self.path}: {name!r} is in {mf.path}, which has no tensor {tensor!r}")
            e = mf.entries[tensor]
            if lo is None:
                return e
            first = out[0].entry if out else e
            if (lo != expect or hi < lo or not e.shape or e.shape[0] != hi - lo
                    or e.dtype != first.dtype or e.shape[1:] != first.shape[1:]):
                raise InputError(f"{self.path}: row shard {tensor!r} of {mf.path} for {name!r} does not "
                                 f"continue the table (rows {[lo, hi]}, expected to start at {expect}; "
                                 f"its {e.dtype} {list(e.shape)} vs {first.dtype} {list(first.shape)})")
            out.append(Part(lo, hi, e))
            expect = hi
        return out

    def names(self) -> list[str]:
        return list(self._parts)

    def __contains__(self, name: str) -> bool:
        return name in self._parts

    def _need(self, name: str):
        if name not in self._parts:
            raise InputError(f"{self.path}: no tensor {name!r}")
        return self._parts[name]

    def shape(self, name: str) -> tuple[int, ...]:
        p = self._need(name)
        return p.shape if isinstance(p, Entry) else (p[-1].hi, *p[0].entry.shape[1:])

    def dtype(self, name: str) -> str:
        """The safetensors dtype code of `name` ("F32", ...; row shards share one, checked on open)."""
        p = self._need(name)
        return p.dtype if isinstance(p, Entry) else p[0].entry.dtype

    def table(self, name: str) -> LogicalTable:
        """`name` as a LogicalTable (rows and row chunks); it must have at least one dimension."""
        p = self._need(name)
        if isinstance(p, Entry):
            if not p.shape:
                raise InputError(f"{p.file}: tensor {name!r} is a scalar, not a table")
            p = [Part(0, p.shape[0], p)]
        return LogicalTable(name, p, self.files, self._on_read if self._hash else None)

    def tensor(self, name: str) -> torch.Tensor:
        """The whole tensor: a read-only view (a copy only for a tensor in several row shards)."""
        p = self._need(name)
        if isinstance(p, Entry):
            self._on_read(p.file, p.stop)
            return as_tensor(self.files[p.file].buf, p)
        return self.table(name).tensor()

    def file_bytes(self, name: str) -> tuple[torch.Tensor, int]:
        """(the whole file holding tensor `name` as a flat read-only uint8 view, the tensor's byte
        offset in it): for consumers that address several tensors of one file by offset."""
        e = self._need(name)
        if not isinstance(e, Entry):
            raise InputError(f"{self.path}: {name!r} is stored in row shards, not in one file")
        flat = Entry(e.file, "", "U8", (self.files[e.file].size,), 0, self.files[e.file].size)
        return as_tensor(self.files[e.file].buf, flat), e.start

    get_tensor = tensor  # the name safetensors' safe_open uses, for code written against it

    def entries_in_file_order(self) -> list[tuple[str, Entry]]:
        flat = [(n, e) for n, p in self._parts.items()
                for e in ([p] if isinstance(p, Entry) else [q.entry for q in p])]
        return sorted(flat, key=lambda ne: (str(ne[1].file), ne[1].start))

    # -- sha256 in the same pass as reading

    def expect_sha256(self, expected: dict[str, str], progress: Update | None = None) -> None:
        """Hash the files named in `expected` (names relative to the index's directory) as they are
        read; `check_sha256()` completes the hashes and compares. A listed file must be read here;
        the index itself may be listed too (it is small: hashed and compared at once)."""
        for rel, digest in expected.items():
            path = self.root / _safe_name(self.path, rel)
            if path == self.path and path not in self.files:  # (the index: read as JSON, not mapped)
                from lowprec.fileio import sha256_file

                if sha256_file(path) != digest:
                    raise InputError(f"{path}: sha256 does not match the one recorded beside it; the file "
                                     f"was modified or truncated after it was written")
                continue
            if path not in self.files:
                raise InputError(f"{self.path}: {rel} is listed with a sha256 but holds no tensor read here")
            self._hash[path] = Sha256Stream(self.files[path], digest, progress)

    def _on_read(self, file: Path, stop: int) -> None:
        stream = self._hash.get(file)
        if stream is not None:
            stream.advance(stop)

    def check_sha256(self) -> None:
        for stream in self._hash.values():
            stream.finish()
        self._hash.clear()

    def scan(self, visit: Callable[[str, int, torch.Tensor], None],
             max_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        """Call visit(name, first row, rows) over every tensor's row chunks in file order (one pass
        for reading, hashing and checks); scalars come as one chunk at row 0."""
        for name, e in self.entries_in_file_order():
            buf = self.files[e.file].buf
            if len(e.shape) == 0:
                self._on_read(e.file, e.stop)
                visit(name, 0, as_tensor(buf, e))
                continue
            lo = self._row_offset(name, e)
            part = LogicalTable(name, [Part(0, e.shape[0], e)], self.files, self._on_read)
            for a, chunk in part.iter_chunks(max_bytes):
                visit(name, lo + a, chunk)

    def _row_offset(self, name: str, e: Entry) -> int:
        p = self._parts[name]
        return 0 if isinstance(p, Entry) else next(q.lo for q in p if q.entry is e)


def open_tensors(path: str | Path) -> MappedTensors:
    """Open a `.safetensors` file or a `*.safetensors.index.json` index (module docstring)."""
    return MappedTensors(path)
