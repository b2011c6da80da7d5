"""Reading a prepared dataset's .npy files, and only reading them: every way such a file can be
unusable (missing, a directory, empty, truncated, a garbled header, Python objects, a dtype its
kind cannot hold) is an InputError naming the file, never numpy's exception (exit 4).

`read_npy` maps any .npy read-only and never unpickles; `load_window_array` is what every reader of
a window's `day_{i}_{dense,sparse,labels}.npy` calls (`Dataset.arrays`, drift's pending labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowprec.errors import InputError
from lowprec.filekind import check_regular

# dtype kinds each window file may hold (numpy's dtype.kind), and what to tell the user otherwise
_KINDS = {"dense": ("fiub", "dense features must be real numbers (float, integer or bool)"),
          "sparse": ("i", "ids must be signed integers (int32 or int64; -1 pads a bag)"),
          "labels": ("fiub", "labels must be numbers 0/1 (integer, bool or float)")}
_HELD = {"U": "strings", "S": "bytes", "c": "complex numbers", "V": "records", "M": "dates", "m": "time spans"}


def window_file(path: Path, index: int) -> Path:
    """`path`, one of window `index`'s files, if it is a regular file: the one check every reader of
    window files makes first (InputError naming it if it is missing, or a directory, a FIFO, a
    device: lowprec.filekind; np.load would block forever opening a FIFO)."""
    try:
        if check_regular(path):
            return path
    except InputError as exc:
        raise InputError(f"window {index}: {exc}") from None
    raise InputError(f"window {index}: missing {path}")


def read_npy(path: Path) -> np.ndarray:
    """A .npy file as a read-only memmap, never unpickled; InputError naming it on any failure of
    np.load (an empty or truncated file, a garbled header, an object array, no permission); a FIFO,
    directory or device is refused before np.load would open it (and block, on a FIFO)."""
    check_regular(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except MemoryError:  # (the CLI says "out of memory" for it)
        raise
    except Exception as exc:  # numpy raises EOFError, ValueError, SyntaxError, OSError, ... for a bad file
        raise InputError(f"{path}: unreadable .npy ({_why_unreadable(path, exc)})") from exc


def _why_unreadable(path: Path, exc: Exception) -> str:
    if "allow_pickle" in str(exc) or "Python objects" in str(exc):
        return "its header declares Python objects, not numbers (lowprec never unpickles)"
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    if empty:  # what a copy cut short, a sync job or a labels job that creates the file before filling it leaves
        return "empty file (0 bytes): still being written, or a copy cut short?"
    return f"{type(exc).__name__}: {exc}"


def load_window_array(path: Path, index: int, kind: str) -> np.ndarray:
    """Window `index`'s `kind` ("dense", "sparse", "labels") file (`read_npy`); InputError naming
    it if it is missing, unreadable or of a dtype `kind` cannot hold (strings, complex, records)."""
    arr = read_npy(window_file(path, index))
    kinds, rule = _KINDS[kind]
    if arr.dtype.kind not in kinds:
        held = f" ({_HELD[arr.dtype.kind]})" if arr.dtype.kind in _HELD else ""
        raise InputError(f"{path}: {rule}, found {arr.dtype}{held}")
    return arr
