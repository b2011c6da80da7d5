"""One safetensors file mapped read-only: its header parsed and checked, tensors as zero-copy views,
and its sha256 computed as a reader moves through it (lowprec.checkpoint.mapped builds on this).

The mapping is PROT_READ/MAP_SHARED (`mmap.ACCESS_READ`): it works for files larger than RAM + swap
and does not count against RLIMIT_DATA. Every header entry is checked against the file size.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowprec.errors import InputError
from lowprec.filekind import open_regular
from lowprec.progress import Update

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header

# safetensors dtype code -> (numpy dtype used for the mapping, torch dtype of the view)
DTYPES: dict[str, tuple[Any, torch.dtype]] = {
    "F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16), "BF16": (np.uint16, torch.bfloat16),
    "I64": (np.int64, torch.int64), "I32": (np.int32, torch.int32), "I16": (np.int16, torch.int16),
    "I8": (np.int8, torch.int8), "U8": (np.uint8, torch.uint8), "BOOL": (np.bool_, torch.bool),
}


@dataclass(frozen=True)
class Entry:
    """One tensor of one file: absolute byte range [start, stop) of its data in the file."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def itemsize(self) -> int:
        return np.dtype(DTYPES[self.dtype][0]).itemsize


def _bad(path: Path, msg: str) -> InputError:
    return InputError(f"{path}: not a valid safetensors file: {msg}")


def parse_header(path: Path, head: bytes, size: int) -> tuple[dict[str, Entry], dict[str, str]]:
    """Entries and metadata of a safetensors file from its first bytes (>= 8 + header length)."""
    if size < 8 or len(head) < 8:
        raise _bad(path, f"{size} bytes is too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER or 8 + n > size:
        raise _bad(path, f"header length {n} does not fit the file ({size} bytes)")
    try:
        obj = json.loads(head[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # (decode errors, and ints past 4,300 digits)
        raise _bad(path, f"header is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _bad(path, "header is not a JSON object")
    meta = obj.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _bad(path, "__metadata__ is not an object")
    base, data = 8 + n, size - 8 - n
    entries = {}
    for name, spec in obj.items():
        entries[name] = _entry(path, name, spec, base, data)
    return entries, {str(k): str(v) for k, v in meta.items()}


def _entry(path: Path, name: str, spec: Any, base: int, data: int) -> Entry:
    where = f"tensor {name!r}"
    if not isinstance(spec, dict):
        raise _bad(path, f"{where}: entry is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPES:
        raise _bad(path, f"{where}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(path, f"{where}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data):
        raise _bad(path, f"{where}: data_offsets {offsets!r} outside the {data} data bytes")
    need = math.prod(shape) * np.dtype(DTYPES[dtype][0]).itemsize
    if offsets[1] - offsets[0] != need:
        raise _bad(path, f"{where}: {offsets[1] - offsets[0]} bytes for {dtype} {shape} "
                         f"(needs {need})")
    return Entry(path, name, dtype, tuple(shape), base + offsets[0], base + offsets[1])


def map_file(path: Path) -> tuple[mmap.mmap | None, int]:
    """A read-only shared mapping of the whole file (None for an empty one) and its size; a FIFO,
    directory or device is refused before anything could block on it (lowprec.filekind)."""
    try:
        fd = open_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"missing tensor file {path}") from None
    except OSError as exc:  # no permission, a symlink loop
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None, 0
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
    except (OSError, ValueError, OverflowError) as exc:
        size = path.stat().st_size if path.exists() else 0
        raise InputError(f"{path}: cannot map {size} bytes read-only ({exc}); check the "
                         f"address-space limit (ulimit -v)") from None
    finally:
        os.close(fd)


def as_tensor(buf: mmap.mmap | None, entry: Entry) -> torch.Tensor:
    """A torch view of `entry`'s bytes in the mapping (read-only; a copy only if misaligned)."""
    np_dtype, torch_dtype = DTYPES[entry.dtype]
    count = math.prod(entry.shape)
    if count == 0 or buf is None:
        return torch.empty(entry.shape, dtype=torch_dtype)
    arr = np.frombuffer(buf, dtype=np_dtype, count=count, offset=entry.start).reshape(entry.shape)
    if entry.start % entry.itemsize:  # the format does not promise alignment; torch needs it
        arr = arr.copy()
    with warnings.catch_warnings():  # read-only on purpose: the mapping is PROT_READ
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        t = torch.from_numpy(arr)
    return t.view(torch_dtype) if torch_dtype is torch.bfloat16 else t


class MappedFile:
    """One safetensors file, mapped read-only: `entries` by name, `tensor(name)` zero-copy."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.buf, self.size = map_file(self.path)
        if self.buf is None:
            raise _bad(self.path, "the file is empty")
        (n,) = struct.unpack("<Q", self.buf[:8]) if self.size >= 8 else (0,)
        head = self.buf[: 8 + min(n, MAX_HEADER, self.size)]
        self.entries, self.metadata = parse_header(self.path, head, self.size)

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.entries:
            raise InputError(f"{self.path}: no tensor {name!r}")
        return as_tensor(self.buf, self.entries[name])


class Sha256Stream:
    """sha256 of one file, fed from its mapping as a reader moves forward (`advance(stop)`).

    A read ending beyond the hashed prefix extends it to that end (bytes skipped are hashed
    then too), so a reader in file order hashes in the same pass; `finish()` hashes the rest and
    raises InputError naming the file on a mismatch."""

    BLOCK = 16 << 20

    def __init__(self, mapped: MappedFile, expected: str, progress: Update | None):
        self.mapped, self.expected, self.progress = mapped, expected, progress
        self.h, self.pos = hashlib.sha256(), 0

    def advance(self, stop: int) -> None:
        view = memoryview(self.mapped.buf)
        try:
            while self.pos < min(stop, self.mapped.size):
                end = min(self.pos + self.BLOCK, stop, self.mapped.size)
                self.h.update(view[self.pos:end])
                if self.progress is not None:
                    self.progress(end - self.pos)
                self.pos = end
        finally:
            view.release()

    def finish(self) -> None:
        self.advance(self.mapped.size)
        if self.h.hexdigest() != self.expected:
            raise InputError(f"{self.mapped.path}: sha256 does not match the one recorded beside it; "
                             f"the file was modified or truncated after it was written")
