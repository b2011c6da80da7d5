"""Atomic outputs, the output-directory rule, recovery on read, and small JSON helpers.

Every directory lowprec writes (datasets, models, artifacts, reports) is built in a temporary sibling
and renamed into place, so a crash or SIGKILL never leaves half an output and never destroys a good
one already there. The old directory is moved aside first and removed only after the new one is in
place; if we die between the two renames, `resolve_output` puts the old one back the next time
anything reads or writes the path (every reader of outputs goes through it: `read_json`, `Dataset`,
`load_model`). Temporary siblings are named `.NAME.tmp-HOST-PID-XXXXXXXX` (lowprec.tmpnames): the
next write of NAME removes those of writers on this host that are no longer running and leaves the others.

The output rule (`claim_output`): a path is replaced only if it is absent, an empty directory, or a
lowprec output of the same kind (its `.lowprec-output` marker, or before markers the kind's own file:
dataset.json, config.json, ...), never if it is or holds an input, and for a directory written whole
(`atomic_dir`, whose marker lists its entries) never while it holds anything else (a user's notes):
replacing would delete them. A directory of a kind written whole whose marker lists no entries (an
older output, or a dataset assembled by hand beside a dataset.json) is not replaced at all: what in it
is lowprec's cannot be told. A symlinked path is written through. Anything else is an InputError
(exit 2), nothing touched; fixable write failures (disk full, read-only, EACCES) too, naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from lowprec.errors import InputError, os_error, user_os_errors
from lowprec.filekind import check_regular
from lowprec.jsonsafe import dumps, unique_keys
from lowprec.outputmarker import (ENTRIES, FILE_KINDS, KINDS, MARKER, RECURSIVE, WHOLE, declared_format, entries,
                                  foreign_entries, is_kind, marker_lines)
from lowprec.tmpnames import alive, dead_writers, remove, tmp_prefix, writers

_BACKUP_SUFFIX = ".lowprec-old"
def _live_writer(out: Path) -> bool:
    return any(alive(pid) for _, pid in writers(out))


def resolve_output(path: str | os.PathLike, wait: float = 5.0) -> Path:
    """The output at `path`, restoring it if a writer died between the two renames of a swap. If only
    the moved-aside copy (`NAME.lowprec-old`) exists, a live writer on this host is given `wait` seconds
    to finish its swap; else the old copy is renamed back. A path without a final name (".", "/")
    cannot have been swapped and is returned as it is."""
    out = Path(path)
    if not out.name:
        return out
    backup = out.with_name(out.name + _BACKUP_SUFFIX)
    if out.exists() or not backup.exists():
        return out
    deadline = time.monotonic() + wait
    while _live_writer(out) and time.monotonic() < deadline and not out.exists():
        time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError, OSError):
        if not out.exists():
            backup.rename(out)
    return out


def _named_output(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path, refused (InputError) when it names no entry of its own (".", "..", "/"):
    an output is written beside its final name and swapped in, which such a path cannot be."""
    out = Path(path)
    if out.name in ("", ".."):
        raise InputError(f"{what} {str(path) or repr(str(path))} names no file or directory of its own; "
                         f"give a path such as ./out")
    return out


def _recover(out: Path) -> None:
    resolve_output(out, wait=0.0)
    backup = out.with_name(out.name + _BACKUP_SUFFIX)
    if backup.exists() and out.exists():
        shutil.rmtree(backup, ignore_errors=True)


def add_entries(d: Path, names: Iterable[str]) -> None:
    """List more entries in output `d`'s marker (files `data append` adds in place), so a later write
    of the same kind finds nothing there but its own. A marker that lists none is left as it is."""
    lines = marker_lines(d)
    new = sorted(set(names) - set(lines))
    if ENTRIES in lines and new:
        atomic_write_text(d / MARKER, "".join(f"{x}\n" for x in lines + new))


def resolved(path: str | os.PathLike) -> Path:
    """`path` with symlinks and `..` followed; a symlink loop is an InputError naming it."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:  # (Python 3.11 raises RuntimeError on a loop, 3.13 OSError)
        raise InputError(f"{path}: cannot follow its symlinks ({exc}); a symlink loop? Give a real path") from None


def through_symlink(path: Path) -> Path:
    """An output path that is a symlink stands for its target: that is what gets written."""
    return resolved(path) if path.is_symlink() else path


def check_parent(out: Path, what: str = "output") -> None:
    """Refuse (InputError) an output whose nearest existing ancestor is not a directory."""
    p = out.parent
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    if (p.exists() or p.is_symlink()) and not p.is_dir():
        raise InputError(f"{what} {out}: {p} is not a directory, so nothing can be written under it; "
                         f"choose another path")


def within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """`path` is `root` or lies under it (both resolved: symlinks and `..` followed)."""
    p, r = resolved(path), resolved(root)
    return p == r or r in p.parents


def _check_inputs(out: Path, inputs: Iterable[str | os.PathLike], what: str) -> None:
    for p in inputs:
        if within(p, out):
            raise InputError(f"{what} {out} would replace the input {p}; choose another path")
        if Path(p).is_dir() and within(out, p):  # (a file there would also stop the input's own rewrite)
            raise InputError(f"{what} {out} lies inside the input {p}; lowprec does not write into its inputs: "
                             f"choose a path outside it")


def claim_output(out: str | os.PathLike, kind: str | None, inputs: Iterable[str | os.PathLike] = (),
                 what: str = "--out") -> Path:
    """Refuse (InputError, nothing touched) unless `out` may be replaced by an output of `kind`.
    Directory kinds (KINDS): absent, an empty directory, or a lowprec output of the same kind.
    File kinds (FILE_KINDS): absent, or a JSON file declaring that kind's format. `kind=None`
    accepts a lowprec output of any kind. Never an input of the command, nor a directory holding one."""
    out = through_symlink(resolve_output(_named_output(out, what), wait=0.0))
    _check_inputs(out, inputs, what)
    check_parent(out, what)
    if kind in FILE_KINDS:
        if out.is_dir():
            raise InputError(f"{what} {out} is a directory; give a file path")
        if out.exists() and declared_format(out) != FILE_KINDS[kind]:
            raise InputError(f"{what} {out} exists and is not a lowprec {kind} file; refusing to "
                             f"replace it (remove it or choose another path)")
        return out
    if not out.exists():
        return out
    if not out.is_dir():
        raise InputError(f"{what} {out} exists and is not a directory")
    try:
        empty = not any(p for p in out.iterdir() if p.name != MARKER)
    except OSError as exc:
        raise os_error(exc, out, "write") from exc
    kinds = [kind] if kind is not None else list(KINDS)
    if not empty and not any(is_kind(out, k) for k in kinds):
        found = next((k for k in KINDS if is_kind(out, k)), None)
        it_is = f" (it is a lowprec {found.replace('-', ' ')})" if found else ""
        raise InputError(f"{what} {out} exists and is not a lowprec {(kind or 'output').replace('-', ' ')}"
                         f"{it_is}; refusing to replace it (remove it or choose an empty or new directory)")
    if not empty and ENTRIES not in marker_lines(out) and any(is_kind(out, k) for k in WHOLE & set(kinds)):
        found = next(k for k in kinds if k in WHOLE and is_kind(out, k)).replace("-", " ")
        raise InputError(f"{what} {out} holds a lowprec {found} but no list of the files lowprec wrote there "
                         f"(an older lowprec's output, or one assembled by hand): replacing it could delete "
                         f"files that are not lowprec's; refusing (remove it yourself or choose another path)")
    foreign = [] if empty else foreign_entries(out)
    if foreign:
        shown = [x if x.isprintable() else repr(x) for x in foreign[:5]]  # (a name with a newline: one line)
        names = ", ".join(shown) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        them = "them" if len(foreign) > 1 else "it"
        raise InputError(f"{what} {out} holds {names}, which lowprec did not write there; refusing to "
                         f"replace it, which would delete {them} (move {them} out or choose another path)")
    return out


def _sweep_stale(out: Path) -> None:
    """Remove temporary siblings of `out` left by writers on this host that have died (lowprec.tmpnames)."""
    for p in dead_writers(out):
        remove(p)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, kind: str | None = None,
               inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `out` atomically, on error it vanishes, and
    so do the parent directories this call created for `out` (never one it did not create).

    `out` must pass `claim_output(out, kind, inputs)` first; the new directory gets a marker naming
    its kind so a later write of the same kind recognises it."""
    out = through_symlink(_named_output(out, "output"))
    _recover(out)
    claim_output(out, kind, inputs)
    made: list[Path] = []  # the parent directories this run creates, outermost first
    with user_os_errors(out.parent):
        for d in [d for d in (out.parent, *out.parent.parents) if not d.exists()][::-1]:
            with contextlib.suppress(FileExistsError):  # (made by someone else meanwhile: not ours)
                d.mkdir()
                made.append(d)
    try:
        with temporary_sibling(out) as tmp, user_os_errors(out):
            yield tmp
            if kind is not None:
                (tmp / MARKER).write_text("".join(line + "\n" for line in [kind, RECURSIVE, ENTRIES, *entries(tmp)]))
            fsync_tree(tmp)
            _swap(tmp, out)  # (tmp is `out` now: nothing left to remove)
    except BaseException:  # nothing written, so no directory made for it either (an emptied one only)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def temporary_sibling(out: Path) -> Iterator[Path]:
    """A new temporary directory beside `out` (the same file system, so its files rename into
    place), named so that `_sweep_stale` removes it if this process dies; removed on exit."""
    _sweep_stale(out)
    with user_os_errors(out):
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(out.name), dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs should read like any directory
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def temporary_file(out: Path) -> Iterator[Path]:
    """A new empty temporary file beside `out`, with normal permissions, named like
    `temporary_sibling`'s (so a dead writer's is swept by the next write of `out`); removed on exit
    unless it was renamed into place."""
    _sweep_stale(out)
    with user_os_errors(out):
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(out.name), dir=out.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # (mkstemp makes 0600)
        os.close(fd)
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _swap(tmp: Path, out: Path) -> None:
    backup = out.with_name(out.name + _BACKUP_SUFFIX)
    for _ in range(3):  # a reader may restore the old copy between our renames: move it aside again
        if out.exists():
            out.rename(backup)
        try:
            tmp.rename(out)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not out.exists():
                raise
            shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(backup, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, kind: str | None = None,
                      inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half of it.

    With a file `kind` (FILE_KINDS), `claim_output` must allow replacing `path` first. The file
    gets normal permissions (0666 minus the umask), not mkstemp's 0600."""
    path = through_symlink(_named_output(path, "output"))
    if kind is not None:
        claim_output(path, kind, inputs)  # (checks the parent too)
    else:
        check_parent(path)
    with user_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_file(path) as tmp, user_os_errors(path), open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
        os.replace(tmp, path)


def fsync_tree(root: Path) -> None:
    """fsync every file, and give it normal permissions (safetensors writes 0600)."""
    mode = 0o666 & ~_umask()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).write_text(dumps(obj, indent=2, sort_keys=False) + "\n")  # strict JSON: NaN -> null


def read_json(path: str | os.PathLike, what: str, expect: type | None = dict) -> Any:
    """Read JSON, turning a missing, non-regular (a FIFO would block) or malformed file into an
    InputError naming it: its directory is first restored if a writer died mid-swap
    (`resolve_output`); the top-level value must be an `expect` (a JSON object by default)."""
    path = Path(path)
    resolve_output(path.parent)
    if not check_regular(path):
        raise InputError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=unique_keys)  # (a BOM: an editor's)
    except (ValueError, RecursionError) as exc:  # (decode errors, duplicate keys, ints past 4,300 digits)
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    if expect is not None and not isinstance(obj, expect):
        raise InputError(f"{path}: {what} must hold a JSON {'object' if expect is dict else expect.__name__}, "
                         f"found {type(obj).__name__}")
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike, full_limit: int = 256 << 20, sample: int = 4 << 20) -> str:
    """sha256 of a file up to `full_limit` bytes; beyond it, of its size and first and last `sample`
    bytes ("sampled:..."): cheap enough to run on every input of every job, and it tells another
    file from this one (not an edit in the middle of a huge file)."""
    size = os.stat(path).st_size
    if size <= full_limit:
        return sha256_file(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(sample))
        fh.seek(max(size - sample, 0))
        h.update(fh.read(sample))
    return "sampled:" + h.hexdigest()
