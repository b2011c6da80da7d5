"""Native (C) kernels: building, caching and loading a C source shipped inside the package.

One place owns how lowprec builds its C kernels (lowprec/quant/range_search_kernel.c and any other
`*.c` beside the module that uses it): on first use, with the system C compiler ($CC, else cc, gcc
or clang; `-O3 -march=native`, ~1-2 s), into $LOWPREC_CACHE_DIR (default ~/.cache/lowprec), named by
a hash of the source, the flags, the compiler and the CPU flags; written to a temporary file and
renamed, so concurrent processes never load a half-written library. x86-64 only (the kernels use
AVX2 and F16C). Anything that fails (no compiler, another architecture, a read-only cache) makes
`load` return None once, with a warning, and the caller runs its torch fallback.
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
from typing import Callable

FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=c11")
_loaded: dict[Path, ctypes.CDLL | None] = {}


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


def cache_dir() -> Path:
    env = os.environ.get("LOWPREC_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lowprec"


def build(source: Path) -> ctypes.CDLL:
    """Compile `source` (or reuse the cached library built from the same bytes) and load it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"native kernels are x86-64 only (this is {platform.machine()})")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
    src = source.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(FLAGS).encode(), cc.encode(), _cpu_flags().encode()]))
    lib = cache_dir() / f"{source.stem}_{key.hexdigest()[:16]}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            res = subprocess.run([cc, *FLAGS, str(source), "-o", tmp, "-lm"], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"{cc} failed on {source.name}: {res.stderr.strip()[-500:]}")
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(lib))


def load(source: Path, declare: Callable[[ctypes.CDLL], None], what: str) -> ctypes.CDLL | None:
    """The library built from `source` with its functions' signatures set by `declare`; None, warned
    once per source, where it cannot be built (`what` names the kernel)."""
    if source not in _loaded:
        try:
            dll = build(source)
            declare(dll)
            _loaded[source] = dll
        except Exception as exc:  # noqa: BLE001 - any build/load problem falls back to torch ops
            _loaded[source] = None
            warnings.warn(f"{what} unavailable, using torch ops: {exc}", stacklevel=3)
    return _loaded[source]


def forget(source: Path) -> None:
    """Drop the loaded state of `source` so the next `load` tries again (tests use it)."""
    _loaded.pop(source, None)
