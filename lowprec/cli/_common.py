"""Shared CLI pieces: progress bars on stderr, window options, parsing helpers."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import click
from tqdm import tqdm

from lowprec.distributed import is_main  # one progress display in a data-parallel job: rank 0's
from lowprec.progress import Update


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
    """'64,32' -> (64, 32); an empty string -> ()."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


def name_value_pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{what} takes NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def fmt(x: float, digits: int = 4) -> str:
    return "nan" if x != x else f"{x:.{digits}f}"


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
