"""The one check every reader of a user's file makes before opening it: is it a regular file?

Opening a FIFO for reading blocks until some writer opens it (forever, for a FIFO nobody writes),
so no timeout can bound the wait; a directory, a socket or a device is no model or data file
either. `check_regular` stats the path (symlinks followed) and refuses anything else with
"PATH: not a regular file (a FIFO)"; `open_regular` opens without blocking and checks the opened
file itself (a FIFO swapped in after a check cannot block either).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lowprec.errors import InputError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_regular(path: str | os.PathLike, mode: int) -> InputError:
    """The refusal of `path`, whose st_mode is `mode` and not a regular file's."""
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    return InputError(f"{path}: not a regular file ({kind})")


def check_regular(path: str | os.PathLike) -> bool:
    """True if `path` is a regular file, False if nothing is there (or a symlink to nothing: the
    caller says "missing" its own way); InputError naming it if it is anything else."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:  # a symlink loop, no permission on a directory, a name too long
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(path, st.st_mode)
    return True


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of regular file `path`, opened with O_NONBLOCK (so a FIFO cannot
    block the open) and refused unless fstat says regular. FileNotFoundError if it is missing."""
    fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        return fd
    except BaseException:
        os.close(fd)
        raise
