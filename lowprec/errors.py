"""User-facing errors and warnings.

`InputError` is raised for anything the user handed us that we cannot use (a malformed row, an
out-of-range id, a tampered file, a plan naming a missing table). The CLI turns it into exit code 2
with the message as-is, so every message names the file, row, table or layer at fault. A write
failure the user fixes on their side (disk full, read-only, permission denied: `USER_ERRNOS`) is
one too (`os_error`, `user_os_errors`), naming the file.

`warn(message)` reports something in the user's input that lowprec worked around and the user
should know about (a window with no rows skipped, a window with one label class): an
`InputWarning`, which the CLI prints on stderr as one `warning: ...` line (rank 0 only).
"""

import contextlib
import errno
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterator


class InputError(Exception):
    """Bad input from the user: message names the place; the CLI exits with code 2."""


class InputWarning(UserWarning):
    """Input lowprec used but the user should look at; the CLI prints `warning: MESSAGE` on stderr."""


def warn(message: str) -> None:
    warnings.warn(message, InputWarning, stacklevel=2)


# errors a user fixes on their side: reported as exit 2 naming the path, not as a traceback
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
               errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR}


def os_error(exc: OSError, path: str | os.PathLike) -> InputError:
    """An InputError for a write failure the user can fix, naming the file."""
    where = exc.filename or path
    return InputError(f"cannot write {where}: {os.strerror(exc.errno) if exc.errno else exc} "
                      f"[{errno.errorcode.get(exc.errno or 0, 'OSError')}]; nothing was replaced")


@contextlib.contextmanager
def user_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn disk-full / read-only / permission errors raised inside into InputErrors naming `path`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in USER_ERRNOS:
            raise os_error(exc, path) from exc
        if exc.errno is None and _disk_full(Path(path)):  # a short write ("N requested and 0 written")
            raise os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path) from exc
        raise
    except Exception as exc:  # safetensors reports I/O failures as SafetensorError("... (os error N)")
        code = _os_error_code(exc)
        if code in USER_ERRNOS:
            raise os_error(OSError(code, os.strerror(code)), path) from exc
        raise


def _disk_full(path: Path) -> bool:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < (64 << 10)
    except OSError:
        return False


def _os_error_code(exc: Exception) -> int | None:
    if type(exc).__name__ != "SafetensorError":
        return None
    m = re.search(r"os error (\d+)", str(exc))
    return int(m.group(1)) if m else None
