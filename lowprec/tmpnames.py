"""The names of temporary siblings (lowprec.fileio) and who may remove one (fileio, lowprec.launchclean).

A writer on host HOST with PID PID builds NAME in `.NAME.tmp-HOST-PID-XXXXXXXX`, XXXXXXXX being the
8 random characters tempfile's mkstemp/mkdtemp add (from `a-z0-9_`: never '-'). A temporary is this
host's writer's exactly when its whole name is `.NAME.tmp-{this host}-{digits}-{8 of those}`: a host
name may hold '-', so `vm-11`'s `.out.tmp-vm-11-4242-abcdefgh` starts like `vm`'s but has one field
more, and is not ours. Anything else (another host's, an older or foreign name) is never removed:
which writer made it, and whether it still runs, cannot be told.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from pathlib import Path

RANDOM = r"[a-z0-9_]{8}"  # tempfile._RandomNameSequence: 8 of "abcdefghijklmnopqrstuvwxyz0123456789_"


def tmp_prefix(name: str) -> str:
    """The prefix this process gives tempfile for a temporary sibling of NAME."""
    return f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def name_of(tmp_name: str) -> str | None:
    """NAME of a temporary sibling's file name `.NAME.tmp-...` (any host's), else None."""
    return tmp_name[1:tmp_name.rfind(".tmp-")] if tmp_name.startswith(".") and ".tmp-" in tmp_name else None


def writer_pid(tmp_name: str, name: str) -> int | None:
    """The PID of the writer on this host that made the temporary `tmp_name` of NAME, else None."""
    head = f".{name}.tmp-{socket.gethostname()}-"
    if not tmp_name.startswith(head):
        return None
    m = re.fullmatch(rf"([0-9]+)-{RANDOM}", tmp_name[len(head):])
    return int(m.group(1)) if m else None


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this host; a zombie (ended, not yet reaped: a rank of a torchrun
    killed outright, until init reaps it) writes nothing more, so it does not."""
    with contextlib.suppress(PermissionError):  # (it exists, owned by someone else)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # (no /proc, not Linux: alive, as kill said; else gone meanwhile or unreadable)
        return not os.path.isdir("/proc") or os.path.exists(f"/proc/{pid}")


def writers(out: Path, name: str | None = None) -> list[tuple[Path, int]]:
    """The temporary siblings of `out` (or of the name `name` beside it, a glob) made on this host,
    with their writers' PIDs."""
    import glob

    pattern = glob.escape(out.name) if name is None else name
    found = []
    for p in out.parent.glob(f".{pattern}.tmp-*") if out.parent.is_dir() else []:
        pid = writer_pid(p.name, out.name if name is None else name_of(p.name))
        if pid is not None:
            found.append((p, pid))
    return found


def dead_writers(out: Path, name: str | None = None) -> list[Path]:
    """`writers`' temporaries whose writers no longer run (never this process's)."""
    return [p for p, pid in writers(out, name) if pid != os.getpid() and not alive(pid)]


def remove(p: Path) -> bool:
    """Remove a temporary (a directory, whole); whether it is gone."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            p.unlink()
    return not os.path.lexists(p)
