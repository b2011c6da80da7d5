"""User-facing errors and warnings.

`InputError` is raised for anything the user handed us that we cannot use (a malformed row, an
out-of-range id, a tampered file, a plan naming a missing table). The CLI turns it into exit code 2
with the message as-is, so every message names the file, row, table or layer at fault. A write
failure the user fixes on their side (disk full, read-only, permission denied: `USER_ERRNOS`) is
one too (`os_error`, `user_os_errors`), naming the file and saying whether it was read or written.

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

from lowprec.tmpnames import name_of


class InputError(Exception):
    """Bad input from the user: message names the place; the CLI exits with code 2."""


class InputWarning(UserWarning):
    """Input lowprec used but the user should look at; the CLI prints `warning: MESSAGE` on stderr."""


def warn(message: str) -> None:
    warnings.warn(message, InputWarning, stacklevel=2)


# errors a user fixes on their side: reported as exit 2 naming the path, not as a traceback
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
               errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR}


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # raised by writes only


def os_error(exc: OSError, path: str | os.PathLike, action: str | None = None) -> InputError:
    """An InputError for a failure the user can fix, naming the file: `action` is "read" or "write"
    when the caller knows; else "write" for the errnos only a write raises, and "open" otherwise
    (an EACCES or EISDIR may be either: never tell a user that an input is an output)."""
    where = _users_name(exc.filename or path)
    action = action or ("write" if exc.errno in WRITE_ERRNOS else "open")
    return InputError(f"cannot {action} {where}: {os_reason(exc)}" + ("; nothing was replaced" if action == "write" else ""))


def _users_name(path: str | os.PathLike) -> str | os.PathLike:
    """The output the user named for a path in one of lowprec's temporary siblings (`.NAME.tmp-HOST-
    PID-*`, lowprec.tmpnames; a part staged inside it too): NAME beside it. Other paths unchanged."""
    parts = Path(str(path)).parts
    for i, part in enumerate(parts):
        if (name := name_of(part)) is not None:
            return str(Path(*parts[:i], name))
    return path


def os_reason(exc: OSError) -> str:
    """`No space left on device [ENOSPC]`: what went wrong, as the user's messages say it."""
    return f"{os.strerror(exc.errno) if exc.errno else exc} [{errno.errorcode.get(exc.errno or 0, 'OSError')}]"


@contextlib.contextmanager
def user_os_errors(path: str | os.PathLike, action: str = "write") -> Iterator[None]:
    """Turn disk-full / read-only / permission errors raised inside into InputErrors naming `path`
    (`action`: what the block does to it, "write" or "read")."""
    try:
        yield
    except OSError as exc:
        if exc.errno in USER_ERRNOS:
            raise os_error(exc, path, action) from exc
        if action == "write" and exc.errno is None and _disk_full(Path(path)):  # a short write ("N requested and 0 written")
            raise os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, action) from exc
        raise
    except Exception as exc:  # safetensors reports I/O failures as SafetensorError("... (os error N)")
        code = _os_error_code(exc)
        if code in USER_ERRNOS:
            raise os_error(OSError(code, os.strerror(code)), path, action) from exc
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
