"""The `lowprec` command line: a thin click group.

Each module in this package owns a few commands and lists them in `COMMANDS`; they are registered
here by discovery, so adding a command never touches this file. Commands parse options, build a
config, make one library call and render the result. `InputError` from the library becomes exit
code 2 with its message, and so does an OSError the user can fix (disk full, read-only file system,
permission denied: `errors.USER_ERRNOS`), naming the file; the messages are listed in docs/errors.md; `--json` output is one JSON object on the last line of stdout.

Ctrl-C is exit 130 with one line. SIGTERM (kill, `timeout`, cron, systemd) to a one-process command
raises `Terminated`, a KeyboardInterrupt, so every `finally` and `except BaseException` cleanup that
Ctrl-C runs (temporary directories, parent directories made for --out, drift's run record) runs
for it too; then one line and exit 143. Not in a rank of a data-parallel job: torchrun stops the
surviving ranks with SIGTERM when one fails, and the launcher reports that rank's failure, not a
"stopped" line from every other rank (lowprec.launch.job_errors). Before the command runs (the
seconds of imports) lowprec.stopping says the same lines; `main` takes over from it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from lowprec import distributed as dist
from lowprec import launch as launcher
from lowprec import stopping
from lowprec.allocator import keep_buffers_in_heap
from lowprec.errors import InputError, InputWarning, os_reason
from lowprec.jsonsafe import dumps

PARALLEL = ("eval", "drift", "calibrate", "search", "compare", "train", "data prepare", "data append")  # commands
# that run data-parallel under torchrun / --nproc
PARALLEL_NAMES = ", ".join(PARALLEL[:-2]) + ", data prepare|append (csv, criteo-tsv)"
_COMMAND_ARGS = "lowprec.command_args"  # ctx.meta: the command and its arguments, after the group's own options
_SIGTERM = "lowprec.sigterm"  # ctx.meta: SIGTERM's handler before the command made it raise Terminated
_WARNED = "lowprec.warned"  # ctx.meta: the `warning:` lines said so far, for --json's "warnings"


class _OncePerJob:
    """An error a data-parallel job prints once: under `--nproc` the ranks record theirs and the
    launcher prints rank 0's and those that differ from it (lowprec.launch.rank_error)."""

    def show(self, file: Any = None) -> None:
        if launcher.rank_error(self.format_message()):  # type: ignore[attr-defined]
            super().show(file)  # type: ignore[misc]


class _JobError(_OncePerJob, click.ClickException):
    """A lowprec error with its own exit code, printed once a job."""


class BadUsage(_OncePerJob, click.UsageError):
    """Bad usage a command finds itself (options that do not go together): exit 2 with the usage
    line, printed once a job (click's UsageError printed once a rank)."""


class BadInput(_JobError):
    """Bad usage or bad input: exit code 2, as the CLI contract says."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM in a one-process command, raised where the command is, so that it unwinds as Ctrl-C does."""


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the cleanup short
    raise Terminated()


class LowprecGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", InputWarning)
                warnings.showwarning = _show_warning(warnings.showwarning, ctx.meta.setdefault(_WARNED, []))
                return super().invoke(ctx)
        except InputError as exc:
            raise BadInput(str(exc)) from exc
        except BrokenPipeError as exc:
            if not _stdout_gone():
                raise InternalError(exc) from exc
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush would fail again)
            raise click.exceptions.Exit(PIPE_CLOSED) from exc
        except OSError as exc:  # disk full, read-only, permission denied: the user's to fix
            from lowprec.errors import USER_ERRNOS, os_error

            if exc.errno not in USER_ERRNOS:
                raise InternalError(exc) from exc
            if exc.filename is None and _stdout_fails(exc):  # (the command's printed result, not a file)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush would fail again)
                raise BadInput(f"cannot write the result to stdout: {os_reason(exc)}; the files the command "
                               f"wrote, if any, are whole") from exc
            raise BadInput(str(os_error(exc, exc.filename or "a file"))) from exc  # (read or write: os_error says)
        except dist.DistributedError as exc:
            raise RankFailed(f"{type(exc).__name__}: {exc}") from exc
        except click.UsageError as exc:
            if isinstance(exc, _OncePerJob):
                raise
            raise BadUsage(exc.format_message(), exc.ctx) from exc
        except Terminated as exc:
            raise Stopped(stopping.STOPPED) from exc
        except (KeyboardInterrupt, click.Abort) as exc:  # click's own handling says "Aborted!", exit 1: an alarm
            raise Interrupted(stopping.INTERRUPTED) from exc
        except (click.ClickException, click.exceptions.Exit):
            raise
        except Exception as exc:  # a bug: never exit 1, which `drift` means as an alarm
            if _out_of_memory(exc):  # the machine's (or a ulimit's) memory, not a bug: exit 2, said so
                raise BadInput(f"out of memory ({type(exc).__name__}: {str(exc)[:200]}): the job needs more memory "
                               f"than this process may use (free memory, ulimit -v / RLIMIT_DATA); "
                               f"{_memory_hint(self, ctx)}see the README's \"Models larger than RAM\"") from exc
            raise InternalError(exc) from exc
        finally:  # done: SIGTERM's handler as it was (one raised now would be click's "Aborted!", exit 1)
            if _SIGTERM in ctx.meta:
                signal.signal(signal.SIGTERM, ctx.meta.pop(_SIGTERM))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        ctx.meta.setdefault(_COMMAND_ARGS, list(args))  # what `--nproc` hands to each rank
        return super().resolve_command(ctx, args)


PIPE_CLOSED = 128 + signal.SIGPIPE  # 141: what a shell reports for a process its closed pipe ended (`yes | head`)


def _stdout_fails(exc: OSError) -> bool:
    """Whether `exc` came from printing the command's result (click.echo to stdout: a full disk,
    /dev/full), not from a file."""
    import traceback

    return any(f.name == "echo" and f.filename.endswith(os.path.join("click", "utils.py"))
               for f in traceback.extract_tb(exc.__traceback__))


def _stdout_gone() -> bool:
    """stdout is a pipe (or socket) whose reader has gone, e.g. `lowprec eval ... | head -1`: no
    error of the command's, so it ends as Unix tools do on SIGPIPE, silently, exit 141 (Python
    ignores SIGPIPE and raises BrokenPipeError instead)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (a test runner's stand-in)
        return False


MEMORY_OPTIONS = ("--batch-size", "--max-rows")  # options that bound a command's memory


def _memory_hint(group: click.Group, ctx: click.Context) -> str:
    """`try a smaller --batch-size, and ` naming only the memory options the running command has
    (import, convert of a big model, inspect, ... have none: then nothing)."""
    cmd: Any = group
    args = list(ctx.meta.get(_COMMAND_ARGS, []))
    try:
        while isinstance(cmd, click.Group) and args:
            _, cmd, args = click.Group.resolve_command(cmd, ctx, args)
    except click.ClickException:
        return ""
    have = {o for p in getattr(cmd, "params", []) for o in p.opts} if cmd is not group else set()
    options = [o for o in MEMORY_OPTIONS if o in have]
    return f"try a smaller {' or '.join(options)}, and " if options else ""


def _out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, or torch's allocator failing (a RuntimeError naming it)."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "not enough memory" in str(exc)))


class InternalError(_JobError):
    """An unexpected exception, i.e. a bug in lowprec: exit code 4 (never 1, a drift alarm), one
    line naming the exception and where it was raised; LOWPREC_DEBUG=1 prints the traceback too."""

    exit_code = 4

    def __init__(self, exc: BaseException):
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "lowprec" in f.filename] or frames
        where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
        if os.environ.get("LOWPREC_DEBUG") == "1":
            traceback.print_exception(exc, file=sys.stderr)
        super().__init__(f"internal error, a bug in lowprec: {type(exc).__name__}: {exc}{where} (exit 4; set "
                         f"LOWPREC_DEBUG=1 for the traceback, and please report it with the command)")


def _show_warning(fallback: Any, said: list[str]) -> Any:
    """`InputWarning`s as one `warning: ...` line on stderr (rank 0 only), kept in `said` for --json;
    other warnings as before."""
    def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, InputWarning):
            fallback(message, category, *args, **kwargs)
        elif dist.is_main():
            said.append(str(message))
            tqdm.write(f"warning: {message}", file=sys.stderr)  # keeps a progress bar intact

    return show


def say_warning(message: str) -> None:
    """A warning a command says itself: one `warning: ...` line on stderr, and in --json's "warnings"."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta.setdefault(_WARNED, []).append(message)
    click.echo(f"warning: {message}", err=True)


class Interrupted(_JobError):
    """Ctrl-C (SIGINT): exit code 130 as a shell gives a process SIGINT ended, never 1 (a drift alarm)."""

    exit_code = 130


class Stopped(_JobError):
    """SIGTERM to a one-process command: exit code 143, as a shell gives a process SIGTERM ended."""

    exit_code = 128 + signal.SIGTERM


class RankFailed(_JobError):
    """A data-parallel job lost a rank (or timed out): exit code 3, nothing written."""

    exit_code = 3


@click.group(cls=LowprecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowprec")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help=f"Run the command data-parallel as N processes on this machine (torchrun); "
                   f"for {PARALLEL_NAMES}.")
@click.pass_context
def main(ctx: click.Context, nproc: int) -> None:
    """lowprec: serve DLRM-style recommendation models in low precision.

    Typical flow: `data synth|prepare` -> `train` -> `calibrate` -> `search` -> `convert` ->
    `drift`. Exit codes: 0 success, 1 drift alarm (drift only), 2 bad usage or input, 3 a
    data-parallel rank failed, 4 internal error (a bug), 130 interrupted (Ctrl-C), 141 stdout's
    reader gone (`| head`), 143 stopped by SIGTERM.
    """
    stopping.hand_over()  # start-up's one-line exit gives way to the exceptions above (and Terminated, below)
    keep_buffers_in_heap()  # reuse activation buffers across batches (lowprec/allocator.py)
    ranks = dist.env_world_size()
    if nproc > 1 and ranks > 1:
        raise BadInput(f"--nproc {nproc} starts torchrun, but this process already runs under one (WORLD_SIZE="
                       f"{ranks} is set): drop --nproc, or unset WORLD_SIZE if it is left over")
    if nproc > 1 or ranks > 1:
        check_parallel(ctx.invoked_subcommand or "")
    if nproc > 1:
        args = ctx.meta[_COMMAND_ARGS]
        check_parallel(_parse_only(ctx, args))  # bad usage (or --help) once, here, not once a rank
        _warn_if_oversubscribed(nproc)
        ctx.exit(launcher.launch(nproc, args))
    if ranks <= 1 and threading.current_thread() is threading.main_thread():  # (not in a rank: see the docstring)
        ctx.meta[_SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated) or signal.SIG_DFL
    if dist.setup():
        ctx.call_on_close(dist.teardown)


def check_parallel(command: str) -> None:
    """Refuse a command that does not run data-parallel (`data` passes, and is checked again by the
    `data` group once its subcommand is known)."""
    if not any(p == command or p.startswith(f"{command} ") for p in PARALLEL):
        raise BadInput(f"`{command}` does not run data-parallel (only {PARALLEL_NAMES})")


def _parse_only(ctx: click.Context, args: list[str]) -> str:
    """Parse a command and its arguments as the ranks will, running nothing: click's usage errors
    (and --help) here. The command's name (`data prepare`)."""
    names, cmd = [], ctx.command
    while isinstance(cmd, click.Group) and args:
        name, sub, args = cmd.resolve_command(ctx, args)
        assert name is not None and sub is not None  # (click refuses an unknown command)
        ctx, cmd = sub.make_context(name, args, parent=ctx), sub
        names.append(name)
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]  # a group's subcommand (kept apart before click 9)
    return " ".join(names)


def _warn_if_oversubscribed(nproc: int) -> None:
    cores = len(os.sched_getaffinity(0))
    if nproc > 2 * cores:
        warnings.warn(f"--nproc {nproc} starts {nproc} processes on {cores} core{'s' * (cores > 1)}: each holds "
                      f"its own copy of the model and data, so expect it slower than --nproc {cores} and "
                      f"{nproc}x the memory of one process", InputWarning)


def emit_json(obj: dict[str, Any]) -> None:
    """Print the one JSON object that --json promises, as the last line of stdout: strict JSON
    (an undefined or non-finite number is null, lowprec.jsonsafe). A stdout that cannot take it
    (a full disk, /dev/full) is exit 2 naming stdout; a closed one is refused before the command
    runs (`_common.json_needs_stdout`); a pipe whose reader went away is exit 141 (`invoke`).
    Every `warning:` line the command said on stderr is in its "warnings" list, once."""
    ctx = click.get_current_context(silent=True)
    said = ctx.find_root().meta.get(_WARNED, []) if ctx is not None else []
    if said or "warnings" in obj:
        obj = {**obj, "warnings": list(dict.fromkeys([*obj.get("warnings", []), *said]))}
    try:
        click.echo(dumps(obj, default=float))
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise InputError(f"cannot write the --json result to stdout: {os_reason(exc)}; the files the command "
                         f"wrote, if any, are whole") from exc


def _register() -> None:
    from lowprec.cli._common import json_needs_stdout, strict_numbers

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)
    strict_numbers(main)  # no float option takes nan or inf, no integer one `1_0` (lowprec.cli._common), --nproc too
    json_needs_stdout(main)  # no --json with a closed stdout


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
