"""The native (C) backend of the L2 range search: building, loading and calling range_search_kernel.c.

Owns the one C kernel lowprec has. It computes exactly what `range_search._search_chunk` does
(same float32 operations per value; sums in another order), 8 rows at a time, so every pass over
those rows runs on data in L1 instead of one memory-bound pass over a whole chunk per operation:
the search reads each input value from memory once (reports/out_of_core.md, "L2 range search").

Built on first use with the system C compiler ($CC, else cc, gcc or clang; `-O3 -march=native`,
1.3 s measured) into $LOWPREC_CACHE_DIR (default ~/.cache/lowprec), named by a hash of the
source, the flags, the compiler and the CPU flags; written to a temporary file and renamed, so
concurrent processes never load a half-written library. Needs AVX2 and F16C (x86-64 since ~2013).
Anything that fails (no compiler, another architecture, a read-only cache) makes `kernel()` return
None once with a warning, and the search runs its torch backends instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("range_search_kernel.c")
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=c11")
_state: dict[str, object] = {}


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc):
        return cc
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _cache_dir() -> Path:
    env = os.environ.get("LOWPREC_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lowprec"


def _build() -> ctypes.CDLL:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"the native kernel is x86-64 only (this is {platform.machine()})")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(_FLAGS).encode(), cc.encode(), _cpu_flags().encode()]))
    lib = _cache_dir() / f"range_search_{key.hexdigest()[:16]}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            res = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"{cc} failed on {_SOURCE.name}: {res.stderr.strip()[-500:]}")
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    dll = ctypes.CDLL(str(lib))
    f = dll.lowprec_l2_search
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    f.argtypes = [p, i64, i32, p, p, i32, p, i32, i32, i32, ctypes.c_float, p, p, p, p, p, i64]
    f.restype = i32
    return dll


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first use; None (warned once) where it cannot be."""
    if "lib" not in _state:
        try:
            _state["lib"] = _build()
        except Exception as exc:  # noqa: BLE001 - any build/load problem falls back to torch ops
            _state["lib"] = None
            warnings.warn(f"native L2 range search unavailable, using torch ops: {exc}", stacklevel=3)
    return _state["lib"]  # type: ignore[return-value]


def search(x: Tensor, lo: Tensor | None, hi: Tensor | None, cuts: tuple[tuple[float, float], ...], bits: int,
           steps: int, relaxation: float, out: tuple[Tensor, ...], packed: Tensor) -> tuple[Tensor, Tensor]:
    """Run the kernel on rows x [rows, dim] (float32, contiguous); returns the row ranges (lo, hi).

    Without lo/hi the kernel takes each row's min and max itself (in the same read), NaN for both
    on rows holding a NaN or an infinity (the caller reports those). out = (scale, bias, err,
    err_minmax), float32 [rows, 1] contiguous; packed is uint8 [rows, dim * bits / 8] with unit
    stride along a row (any row stride).
    """
    rows, dim = x.shape
    given = lo is not None and hi is not None
    lo, hi = ((t.reshape(-1).to(torch.float32).contiguous() for t in (lo, hi)) if given
              else (x.new_empty(rows), x.new_empty(rows)))
    if rows == 0:
        return lo.reshape(-1, 1), hi.reshape(-1, 1)
    lib = kernel()
    if lib is None:
        raise RuntimeError("the native L2 range search kernel is unavailable")
    if not (x.is_contiguous() and x.dtype == torch.float32 and packed.stride(1) == 1):
        raise ValueError("native search needs contiguous float32 rows and unit-stride packed codes")
    if not all(t.is_contiguous() and t.numel() == rows for t in out):
        raise ValueError("native search outputs must be contiguous, one value per row")
    cut = torch.tensor(cuts, dtype=torch.float32).reshape(-1)
    rc = lib.lowprec_l2_search(
        x.data_ptr(), rows, dim, lo.data_ptr(), hi.data_ptr(), int(given), cut.data_ptr(), len(cuts), bits,
        steps, relaxation, *(t.data_ptr() for t in out), packed.data_ptr(), packed.stride(0))
    if rc:
        raise ValueError(f"native L2 range search rejected its arguments (dim {dim}, {bits} bits, code {rc})")
    return lo.reshape(-1, 1), hi.reshape(-1, 1)
