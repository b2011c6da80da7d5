"""Atomic outputs and small JSON helpers.

Every directory lowprec writes (datasets, models, artifacts, reports) is built in a temporary sibling
and renamed into place, so a crash or SIGKILL never leaves half an output and never destroys a good
one already there. The old directory is moved aside first and removed only after the new one is in
place; if we die between the two renames, `recover` puts the old one back on the next write.
Temporary siblings are named `.NAME.tmp-HOST-PID-XXXX`: the next write of NAME removes those of
writers on this host that are no longer running (a SIGKILLed convert, say) and leaves the others.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

_BACKUP_SUFFIX = ".lowprec-old"


def _recover(out: Path) -> None:
    backup = out.with_name(out.name + _BACKUP_SUFFIX)
    if backup.exists() and not out.exists():
        backup.rename(out)
    elif backup.exists():
        shutil.rmtree(backup, ignore_errors=True)


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _sweep_stale(out: Path) -> None:
    """Remove temporary siblings of `out` left by writers on this host that have died."""
    head = f".{out.name}.tmp-{socket.gethostname()}-"
    for p in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        pid = p.name[len(head):].split("-", 1)[0] if p.name.startswith(head) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `out` atomically, on error it vanishes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    _sweep_stale(out)
    if out.exists() and not out.is_dir():
        from lowprec.errors import InputError

        raise InputError(f"{out} exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out.name), dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs should read like any directory
    try:
        yield tmp
        _fsync_tree(tmp)
        backup = out.with_name(out.name + _BACKUP_SUFFIX)
        if out.exists():
            out.rename(backup)
        tmp.rename(out)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read JSON, turning a missing or malformed file into an InputError naming it."""
    from lowprec.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
