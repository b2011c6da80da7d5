"""Shared CLI pieces: progress bars on stderr, window options, parsing helpers, the finite-float
option type (`FiniteFloat`; `strict_numbers` gives it to every float option of every command, and
`_PlainInt`'s check to every integer option)."""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Iterator

import click
from tqdm import tqdm

from lowprec.data.csvlabel import plain_int
from lowprec.distributed import is_main  # one progress display in a data-parallel job: rank 0's
from lowprec.progress import Update

# Options many commands share, spelled and explained once.
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object (the command's result) as the last line of stdout.")
SEED = click.IntRange(0, 2**63 - 1)  # every --seed: torch.manual_seed, numpy's generators and an int64 all take it
data_option = click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
                           help="Prepared dataset directory (from `lowprec data prepare` or `data synth`).")


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "rows") -> Iterator[Update]:
    """A tqdm bar on stderr; yields the `update(n)` callback library functions accept."""
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
               mininterval=0.5, leave=False, dynamic_ncols=True, disable=not is_main())
    try:
        yield bar.update
    finally:
        bar.close()


def int_list(text: str, what: str) -> tuple[int, ...]:
    """'64,32' -> (64, 32) of widths >= 1; an empty string -> () ('64,,32' is refused: a width left
    out by mistake, read as 64,32 before)."""
    if not text.strip():
        return ()
    try:
        out = tuple(plain_int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers (e.g. 64,32; '' for none), got {text!r}") from None
    if any(x < 1 for x in out):
        raise click.BadParameter(f"{what}: every width must be >= 1, got {text!r}")
    return out


def widths(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    """An option callback: the option's comma-separated widths (`int_list`), checked as it is parsed."""
    return int_list(value, param.opts[0])


def name_value_pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    """Repeated NAME=VALUE options as a dict; a NAME given twice is refused (the last silently won)."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{what} takes NAME=VALUE, got {item!r}")
        if name.strip() in out:
            raise click.BadParameter(f"{what} gives {name.strip()!r} twice ({out[name.strip()]!r} and "
                                     f"{value.strip()!r}); give each name once")
        out[name.strip()] = value.strip()
    return out


def smaller(ratio: float, than: str = "fp32") -> str:
    """How a size compares, as a person says it: `8.0x smaller than fp32`, `the size of fp32`
    (within 5%), `1.3x larger than fp32` (hash sharing's buffers, an fp32 plan's padding)."""
    if ratio >= 1.05:
        return f"{ratio:.1f}x smaller than {than}"
    if ratio > 1 / 1.05:
        return f"the size of {than}"
    return f"{1 / ratio:.1f}x larger than {than}"


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else "nan" if x != x else f"{x:.{digits}f}"


class FiniteFloat(click.FloatRange):
    """A float option that refuses `nan`, `inf` and `-inf` (click's FLOAT and FloatRange take them,
    and a NaN learning rate or threshold only fails later, as a traceback or a broken model), with
    FloatRange's optional bounds: `FiniteFloat(min=0, min_open=True)` is a finite x > 0."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        x = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(x, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        return "FLOAT"

    def _describe_range(self) -> str:
        return "a finite float" if self.min is None and self.max is None else super()._describe_range()


class _PlainInt:
    """click's INT and IntRange read an option with int(): `--epochs 1_0` was 10 and `--windows ٣`
    3. This convert refuses what `plain_int` refuses, then converts as the type it joins."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                plain_int(value)
            except ValueError:
                self.fail(f"{value!r} is not a plain decimal integer (ASCII digits, no `_`)", param, ctx)  # type: ignore[attr-defined]
        return super().convert(value, param, ctx)  # type: ignore[misc]


class PlainInt(_PlainInt, click.types.IntParamType):
    pass


class PlainIntRange(_PlainInt, click.IntRange):
    pass


def strict_numbers(command: click.Command) -> None:
    """Give every float option of `command` (and its subcommands) the FiniteFloat type, keeping any
    FloatRange bounds, and every integer option `_PlainInt`'s check: the one place where the CLI
    refuses NaN, infinities and `1_0` (called at registration, so a new command's options are covered
    without remembering to)."""
    for sub in getattr(command, "commands", {}).values():
        strict_numbers(sub)
    for p in command.params:
        t = p.type
        if isinstance(t, click.types.FloatParamType) and not isinstance(t, FiniteFloat):
            if isinstance(t, click.FloatRange):
                p.type = FiniteFloat(t.min, t.max, t.min_open, t.max_open, t.clamp)
            else:
                p.type = FiniteFloat()
        elif isinstance(t, click.types.IntParamType) and not isinstance(t, _PlainInt):
            p.type = (PlainIntRange(t.min, t.max, t.min_open, t.max_open, t.clamp) if isinstance(t, click.IntRange)
                      else PlainInt())


def json_needs_stdout(command: click.Command) -> None:
    """Every `--json` flag of `command` (and its subcommands) refuses a closed stdout (`>&-`: Python
    then has no sys.stdout and click.echo drops the result silently, exit 0): checked as the options
    are parsed, so before the command writes anything. Called at registration, as strict_numbers."""
    for sub in getattr(command, "commands", {}).values():
        json_needs_stdout(sub)
    for p in command.params:
        if p.name == "as_json":
            p.callback = _stdout_open


def _stdout_open(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value and sys.stdout is None:
        raise click.BadParameter("stdout is closed (started with `>&-`?), so the JSON result would be lost; "
                                 "give the command a stdout (`> FILE`, a pipe) or leave --json out", ctx, param)
    return value


class StageBars:
    """One progress bar per stage of a multi-stage job: the `Stages` of lowprec.progress."""

    def __init__(self) -> None:
        self.bars: list[tqdm] = []

    def __call__(self, name: str, total: int | None, unit: str | None = None) -> Update:
        if self.bars:
            self.bars[-1].close()
        unit = unit or ("it" if total else "rows")
        bar = tqdm(total=total, desc=name, unit=unit, unit_scale=True, file=sys.stderr,
                   mininterval=0.5, leave=False, dynamic_ncols=True, disable=not is_main())
        self.bars.append(bar)
        return bar.update

    def __enter__(self) -> "StageBars":
        return self

    def __exit__(self, *exc: Any) -> None:
        for bar in self.bars:
            bar.close()
