"""What a failed `lowprec --nproc N` job leaves, removed by the launcher once torchrun has ended.

torchrun stops the other ranks with SIGTERM as soon as one fails, and a rank (which keeps the
default SIGTERM action: lowprec.__main__) then dies at once, leaving what it was building: the
temporary sibling of its output, `.NAME.tmp-HOST-PID-*` (lowprec.fileio; a `data prepare`'s
`.parts` staging lives inside it, a `data append`'s beside the dataset), and the parent directories it
created for `--out`. The launcher knows the command's output options (OUTPUT_OPTIONS; and the
outputs a command names after an input, `named_outputs`: drift's recalibrated artifacts beside
--candidate) and which of their parents were missing before the job; after a failed job it removes
those temporaries of writers on this host that are no longer running (the name parsed strictly,
lowprec.tmpnames: another host's, or any other name, is never touched), and those parents if they
are empty again.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Sequence

from lowprec.tmpnames import dead_writers, remove

OUTPUT_OPTIONS = ("--out", "--db", "--report", "--data")  # written, or staged beside (`data append` to --data)


def _values(args: Sequence[str], options: Sequence[str]) -> list[str]:
    """The values of `options` in a command's arguments (`--out X` or `--out=X`), in order."""
    out = []
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        if name in options:
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if value:
                out.append(value)
    return out


def output_paths(args: Sequence[str]) -> list[Path]:
    """The values of OUTPUT_OPTIONS in a command's arguments, made absolute; one that is a symlink
    stands for its target, as for the writer (lowprec.fileio.through_symlink), which builds its
    temporary beside the target (a symlink loop: left as given, the command refuses it)."""
    from lowprec.errors import InputError
    from lowprec.fileio import through_symlink

    out = []
    for value in _values(args, OUTPUT_OPTIONS):
        path = Path(os.path.abspath(value))
        with contextlib.suppress(InputError):
            path = Path(os.path.abspath(through_symlink(path)))
        out.append(path)
    return out


def named_outputs(args: Sequence[str]) -> list[tuple[Path, str]]:
    """Outputs no option names, as (a path beside which they are written, a glob of their names):
    `drift --on-alarm recalibrate` writes `CANDIDATE.recal-*` (its artifacts and their calibration
    files, lowprec.drift.recalibration.recal_paths) beside --candidate, as given; drift spills each
    rank's scores to `DB.spill-w*` beside --db (lowprec.evaluation.paired); search validates in
    temporaries of `OUT.validate` beside --out (lowprec.search.validate.scratch_dir)."""
    if not args or args[0] not in ("drift", "search"):
        return []
    if args[0] == "search":
        outs = [Path(os.path.abspath(v)) for v in _values(args, ("--out",))]
        return [(p, f"{glob.escape(p.name)}.validate") for p in outs]
    candidates = [Path(os.path.abspath(v)) for v in _values(args, ("--candidate",))]
    dbs = [Path(os.path.abspath(v)) for v in _values(args, ("--db",))]
    return [(c, f"{glob.escape(c.name)}.recal-*") for c in candidates] + [
        (d, f"{glob.escape(d.name)}.spill-w*") for d in dbs]


def clean_up(made: dict[Path, list[Path]], named: Sequence[tuple[Path, str]] = ()) -> list[str]:
    """Remove the temporaries of dead writers beside each output (and of the outputs `named`, from
    `named_outputs`) and the parents (`made[out]`: those missing before the job, innermost first) left
    empty; what could not be removed, as paths."""
    left = []
    for p in [p for out in made for p in dead_writers(out)] + [p for at, name in named for p in dead_writers(at, name)]:
        if not remove(p):
            left.append(str(p))
    for out, parents in made.items():
        for d in parents:
            with contextlib.suppress(OSError):  # (not empty: someone else's now, or what the job kept)
                d.rmdir()
    return left


def some_paths(paths: list[str], shown: int = 3) -> str:
    return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
