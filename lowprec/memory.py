"""How much memory this machine has, and how much more this process may take.

Commands that grow a structure with their input (a CSV vocabulary) ask `headroom_bytes()` as they
grow and stop with a clear error while there is still room to write one, rather than being killed by
the kernel's OOM killer (or, under a data limit, spinning on failed allocations) with nothing said.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path


def physical_bytes() -> int | None:
    """The machine's RAM, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _kib_field(path: str, name: str) -> int | None:
    """`name:  N kB` from a /proc file, in bytes."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def headroom_bytes() -> int | None:
    """Bytes this process can still allocate: the machine's available memory (MemAvailable), or
    less when a data limit (RLIMIT_DATA, as `prlimit --data` or a job scheduler sets it) is nearer.
    None off Linux (no /proc)."""
    room = [_kib_field("/proc/meminfo", "MemAvailable")]
    soft = resource.getrlimit(resource.RLIMIT_DATA)[0]
    data = _kib_field("/proc/self/status", "VmData")
    if soft != resource.RLIM_INFINITY and data is not None:
        room.append(max(soft - data, 0))
    known = [r for r in room if r is not None]
    return min(known) if known else None
