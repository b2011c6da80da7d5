"""The `lowprec` command line: a thin click group.

Each module in this package owns a few commands and lists them in `COMMANDS`; they are registered
here by discovery, so adding a command never touches this file. Commands parse options, build a
config, make one library call and render the result. `InputError` from the library becomes exit
code 2 with its message, and so does an OSError the user can fix (disk full, read-only file system,
permission denied: `fileio.USER_ERRNOS`), naming the file; the messages are listed in docs/errors.md; `--json` output is one JSON object on the last line of stdout.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from typing import Any

import click

from lowprec.allocator import keep_buffers_in_heap
from lowprec.errors import InputError


class BadInput(click.ClickException):
    """Bad usage or bad input: exit code 2, as the CLI contract says."""

    exit_code = 2


class LowprecGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            raise BadInput(str(exc)) from exc
        except OSError as exc:  # disk full, read-only, permission denied: the user's to fix
            from lowprec.fileio import USER_ERRNOS, os_error

            if exc.errno not in USER_ERRNOS:
                raise
            raise BadInput(str(os_error(exc, exc.filename or "an output"))) from exc


@click.group(cls=LowprecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowprec")
def main() -> None:
    """lowprec: serve DLRM-style recommendation models in low precision.

    Typical flow: `data synth|prepare` -> `train` -> `calibrate` -> `search` -> `convert` ->
    `drift`. Exit codes: 0 success, 1 drift alarm (drift only), 2 bad usage or input.
    """
    keep_buffers_in_heap()  # reuse activation buffers across batches (lowprec/allocator.py)


def emit_json(obj: dict[str, Any]) -> None:
    """Print the one JSON object that --json promises, as the last line of stdout."""
    click.echo(json.dumps(obj, default=float))


def _register() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
