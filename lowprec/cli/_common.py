"""Shared CLI pieces: progress bars on stderr, window options, parsing helpers."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

import click
from tqdm import tqdm


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "rows") -> Iterator[Callable[[int], Any]]:
    """A tqdm bar on stderr; yields the `update(n)` callback library functions accept."""
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
               mininterval=0.5, leave=False, dynamic_ncols=True)
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
    """One progress bar per stage of a multi-stage job; `bars(name, total[, unit])` returns its update.

    The progress convention: a multi-stage job (data synth/prepare, search, drift, demo) takes such a
    `stages` callable; a single-stage library function (train, calibrate, evaluate, convert) takes
    the `update(n)` callback itself (`progress_bar` yields one)."""

    def __init__(self) -> None:
        self.bars: list[tqdm] = []

    def __call__(self, name: str, total: int | None, unit: str | None = None) -> Callable[[int], Any]:
        if self.bars:
            self.bars[-1].close()
        unit = unit or ("it" if total else "rows")
        bar = tqdm(total=total, desc=name, unit=unit, unit_scale=True,
                   file=sys.stderr, mininterval=0.5, leave=False, dynamic_ncols=True)
        self.bars.append(bar)
        return bar.update

    def __enter__(self) -> "StageBars":
        return self

    def __exit__(self, *exc: Any) -> None:
        for bar in self.bars:
            bar.close()
