"""The drift database as a file: is this SQLite file a drift history, and the single-writer lock.

A drift history is recognised by what lowprec writes into it, never by a generic row another
application could hold too (`meta` with a `schema_version` row is common): its tables `meta`,
`runs` and `windows` with their columns, every other table of ours that it has with its columns,
and, from this version on, the `format` row lowprec writes into `meta` (`lowprec-drift-history`).
Histories written before that row existed are recognised by their tables and columns alone and
gain the row on open. Anything else is refused before the file is opened for writing, so a user's
SQLite file never gains our tables.

The expected tables and columns are read from the store's own CREATE statements (run on an
in-memory database), so the two cannot disagree.

One run at a time, whatever path reaches the file: `flock(LOCK_EX | LOCK_NB)` on the lock file
beside the file's resolved path (`FILE.sqlite.lock`, symlinks followed, so every symlink to the
database meets the same lock file, which records the holder's pid), and, when the database has
other hard links, on the database file itself too (a hard link is the same file under another
name: only the file itself is common to its names; the holder's pid is read from /proc/locks).
SQLite's own locks are POSIX record locks, which flock does not touch on a local file system; the
database file is flocked only when it has several names because NFS emulates flock with record
locks. The kernel drops both locks when the process dies (even on SIGKILL): a killed run never
leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Iterable

from lowprec.errors import InputError

FORMAT = "lowprec-drift-history"  # meta row `format`
REQUIRED = ("meta", "runs", "windows")


def lock_path(db: Path) -> Path:
    """The lock file of database `db`: beside the file it resolves to (symlinks followed)."""
    real = Path(os.path.realpath(db))
    return real.with_name(real.name + ".lock")


def history_tag(db: Path) -> str:
    """A name for the history in `db` that outputs of it carry (`--on-alarm recalibrate`'s artifacts):
    the file's stem and 8 hex digits of the sha256 of the path it resolves to (symlinks followed, as
    the lock), so two histories never name the same file and one history always names the same one."""
    real = os.path.realpath(db)
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(real).name.split(".")[0])[:32] or "db"
    return f"{stem}-{hashlib.sha256(real.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _columns(conn: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%'")]
    return {t: {r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')} for t in names}


def expected_tables(schema: Iterable[str]) -> dict[str, set[str]]:
    """Table -> columns of a drift history, from the store's CREATE statements."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        for stmt in schema:
            conn.execute(stmt)
        return _columns(conn)


def _not_ours(tables: dict[str, set[str]], expected: dict[str, set[str]], added_later: dict[str, set[str]],
              fmt: str | None, version: str | None) -> str:
    """Why the file is not a drift history ("" when it is one)."""
    missing = [t for t in REQUIRED if t not in tables]
    if missing:
        return f"no {', '.join(missing)} table"
    for t in sorted(set(tables) & set(expected)):
        lacks = expected[t] - added_later.get(t, set()) - tables[t]
        if lacks:
            return f"its table {t} has no column {', '.join(sorted(lacks)[:4])}"
    if fmt is not None and fmt != FORMAT:
        return f"its meta format is {fmt!r}"
    if version is None:
        return "its meta table has no schema_version"
    return ""


def check_ours(db: Path, schema: Iterable[str], added_later: dict[str, set[str]]) -> None:
    """Refuse a --db that holds something other than a drift history (a read-only look: a user's
    own SQLite file must not gain our tables). An empty or absent file is a new history.
    `added_later`: columns a history from an older lowprec may lack (added on open)."""
    if not db.is_file() or db.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = _columns(conn)
            meta = {}
            if {"key", "value"} <= tables.get("meta", set()):
                meta = {str(k): v for k, v in conn.execute(
                    "SELECT key, value FROM meta WHERE key IN ('format', 'schema_version')")}
    except sqlite3.DatabaseError as exc:
        raise InputError(f"--db {db}: not a usable SQLite database ({exc})") from exc
    if not tables:
        return
    why = _not_ours(tables, expected_tables(schema), added_later, meta.get("format"), meta.get("schema_version"))
    if why:
        shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        raise InputError(f"--db {db} is a SQLite database but not a lowprec drift history ({why}; its tables: "
                         f"{shown}); refusing to write into it: give a new path")


def _busy(db: Path, holder: str) -> InputError:
    return InputError(f"--db {db} is in use by another `lowprec drift` run ({holder}); refusing to run "
                      f"concurrently. The lock is released when that run ends.")


def _flock(fd: int) -> bool:
    """Take the exclusive lock on fd without waiting; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def acquire_lock(path: Path, db: Path) -> tuple[int, int | None]:
    """Lock `db` for this process: (the lock file's fd, the database file's fd when it has several
    names, else None); InputError naming the holder's pid when another run holds either."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _flock(fd):
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise _busy(db, holder)
    db_fd = None
    try:
        if db.is_file() and db.stat().st_nlink > 1:
            db_fd = os.open(db, os.O_RDONLY)
            if not _flock(db_fd):
                raise _busy(db, f"pid {_flock_holder(os.fstat(db_fd))}, through another name of the same file")
    except BaseException:
        if db_fd is not None:
            os.close(db_fd)
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {_now()}".encode(), 0)
    os.fsync(fd)
    return fd, db_fd


def _flock_holder(st: os.stat_result) -> str:
    """The pid holding a flock on the file `st` describes, from /proc/locks ("unknown" elsewhere)."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            f = line.split()
            if len(f) >= 6 and f[1] == "FLOCK" and f[5] == dev:
                return f[4]
    return "unknown"


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
