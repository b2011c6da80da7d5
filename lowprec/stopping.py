"""How a one-process `lowprec` command stops on Ctrl-C (SIGINT) or SIGTERM: one `Error:` line and
exit 130 or 143, never a traceback. The two lines are worded here, once.

Once the command runs, lowprec.cli turns the signal into an exception (KeyboardInterrupt,
`Terminated`), so every cleanup runs before that line. Before it runs, the process spends seconds
importing torch and fbgemm_gpu (`import lowprec` checks they load together), where a Ctrl-C was a
traceback from deep inside torch and a SIGTERM killed the process without a word.
`stop_while_starting`, called by lowprec/__init__.py before those imports in the CLI's process only
(`python -m lowprec`, the `lowprec` console script; never in a library user's process nor in a rank
of a data-parallel job, where torchrun's SIGTERM stops the surviving ranks), says the same line and
exits at once: nothing has been written yet. The CLI takes over with `hand_over`.

Standard library only: this runs before everything else lowprec imports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

INTERRUPTED = "interrupted (Ctrl-C, SIGINT) before the command finished (exit 130)"
STOPPED = "stopped by SIGTERM (kill, timeout, cron or systemd) before the command finished (exit 143)"
_SAID = {signal.SIGINT: INTERRUPTED, signal.SIGTERM: STOPPED}  # exit status 128 + the signal's number
_BEFORE: dict[int, Any] = {}  # the handlers stop_while_starting replaced


def stop_while_starting() -> None:
    """In the CLI's own process, one line and exit 130 / 143 on SIGINT / SIGTERM until `hand_over`."""
    if _BEFORE or not _is_the_cli() or threading.current_thread() is not threading.main_thread():
        return
    if os.environ.get("WORLD_SIZE", "").strip() not in ("", "1"):  # a rank of a torchrun job (see the docstring)
        return
    for signum in _SAID:
        _BEFORE[signum] = signal.signal(signum, _stop)


def hand_over() -> None:
    """The command runs: the handlers `stop_while_starting` replaced are back (Ctrl-C raises
    KeyboardInterrupt again, and lowprec.cli makes SIGTERM raise `Terminated`)."""
    while _BEFORE:
        signum, handler = _BEFORE.popitem()
        signal.signal(signum, handler)


def _stop(signum: int, frame: Any) -> None:
    os.write(2, f"Error: {_SAID[signum]}\n".encode())
    os._exit(128 + signum)  # (nothing to clean up: nothing has been written)


def _is_the_cli() -> bool:
    """`python -m lowprec` (or `-m lowprec.cli`): sys.argv[0] is "-m" while the package is imported;
    the console script: sys.argv[0] is its path, named `lowprec`."""
    if sys.argv[:1] == ["-m"]:
        argv = getattr(sys, "orig_argv", [])
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
        return module in ("lowprec", "lowprec.cli", "lowprec.__main__", "lowprec.cli.__main__")
    return bool(sys.argv) and Path(sys.argv[0]).name == "lowprec"
