"""The `.lowprec-output` marker of an output directory: what kind of output it is, and for a directory
written whole (lowprec.fileio.atomic_dir) every entry lowprec wrote into it, so that a later write
of the same kind replaces it only while it holds nothing else (lowprec.fileio.claim_output)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

MARKER = ".lowprec-output"
# the marker's line after which a directory written whole lists the entries lowprec wrote into it
ENTRIES = "# entries lowprec wrote here (any other entry stops lowprec from replacing this directory):"
# the marker's line (before ENTRIES) saying its entries are listed recursively: older markers listed
# top-level names only, a directory by its bare name
RECURSIVE = "# every entry is listed, inside directories too; a directory's name ends in '/'"
# kind -> (the file that identifies an output of that kind, the "format" it declares or None)
KINDS: dict[str, tuple[str, str | None]] = {
    "dataset": ("dataset.json", "lowprec-dataset"),
    "model": ("config.json", "lowprec-float-model"),
    "artifact": ("manifest.json", "lowprec-artifact"),
    "report": ("index.html", None),
    "drift-report": (".lowprec-drift-report", None),
    "demo": ("summary.json", None),
}
# kinds written whole by `atomic_dir` (a replacement deletes the old directory with all it holds);
# reports and demo outputs are written file by file in place
WHOLE = frozenset({"dataset", "model", "artifact", "drift-report"})
# file kinds -> the "format" their JSON declares
FILE_KINDS: dict[str, str] = {"calibration": "lowprec-calibration", "plan": "lowprec-plan"}


def declared_format(f: Path) -> str | None:
    try:
        obj = json.loads(f.read_text(encoding="utf-8-sig"))  # (read as read_json reads it)
    except (OSError, ValueError):
        return None
    return obj.get("format") if isinstance(obj, dict) else None


def marker_lines(d: Path) -> list[str]:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return (d / MARKER).read_text(encoding="utf-8").splitlines()
    return []


def is_kind(d: Path, kind: str) -> bool:
    if (d / MARKER).is_file():
        return marker_lines(d)[:1] == [kind]
    name, fmt = KINDS[kind]
    f = d / name
    return f.is_file() and (fmt is None or declared_format(f) == fmt)


def entries(d: Path) -> list[str]:
    """Every entry under output directory `d` but its marker, relative and '/'-separated, a directory
    with a trailing '/' (its contents listed too; a symlink is an entry, never followed)."""
    out = []
    for top, dirs, files in os.walk(d):
        rel = Path(top).relative_to(d).as_posix()
        prefix = "" if rel == "." else rel + "/"
        out += [prefix + x + "/" for x in dirs if not os.path.islink(os.path.join(top, x))]
        out += [prefix + x for x in files + [x for x in dirs if os.path.islink(os.path.join(top, x))]]
    return sorted(x for x in out if x != MARKER)


def foreign_entries(d: Path) -> list[str]:
    """Entries of output `d` its marker does not list (none if it lists none: older outputs, reports),
    inside its subdirectories too: a marker lists every entry, `sub/` and `sub/file`. An older marker
    listed top-level names only: a directory it lists by bare name is taken as lowprec's whole."""
    lines = marker_lines(d)
    if ENTRIES not in lines:
        return []
    listed, found, recursive = set(lines[lines.index(ENTRIES) + 1:]), [], RECURSIVE in lines

    def walk(rel: str) -> None:
        for p in sorted((d / rel).iterdir()):
            name = rel + p.name
            if p.is_dir() and not p.is_symlink():
                if name + "/" in listed:
                    walk(name + "/")
                elif recursive or name not in listed:  # (by bare name in an older marker: lowprec's whole)
                    found.append(name + "/")
            elif name not in listed and name != MARKER:
                found.append(name)

    walk("")
    return found
