"""Fingerprints of a data-parallel job's input files, which every rank compares at start
(`lowprec.distributed.check_same`): the ranks must read the same bytes, wherever each host mounts them.

What a fingerprint covers (README "Running on several machines", docs/errors.md):

- a file of at most FULL_HASH_LIMIT bytes (256 MiB): the sha256 of the whole file;
- a bigger file: the sha256 of its size and of SAMPLE_BLOCKS blocks of SAMPLE_BYTES bytes at evenly
  spaced offsets from its first byte to its last (positions computed from the size alone, so every
  rank reads the same ones): 16 MiB read a file whatever its size, as a dataset of many 10-100 GB
  windows is compared at every start (the first and last 4 MiB read before cost 8 MiB and saw
  nothing in between). Any rewritten stretch longer than the spacing between blocks,
  (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1) (~66 KB at 270 MB, ~25 MB at 100 GB), overlaps a block
  and is seen; an edit that falls wholly between two blocks is not (a 1 KB edit at 270 MB: seen
  with a chance of ~8%);
- with LOWPREC_DIST_FULL_HASH=1 (the same on every rank): the sha256 of every whole file, whatever
  its size (reads every byte of every input at start).

An input directory is walked whole (subdirectories too, symlinked ones followed once); hidden files
and directories (lowprec's output marker, temporaries, staging) are bookkeeping, not content: skipped.
Files are keyed by the input's position and their path inside it, never by the input's own name.
A file inside a directory that this process cannot read is compared as "unreadable" (its errno).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Sequence

from lowprec.errors import InputError
from lowprec.fileio import sha256_file

FULL_HASH_ENV = "LOWPREC_DIST_FULL_HASH"
FULL_HASH_LIMIT = 256 << 20  # bigger files are fingerprinted by evenly spaced blocks (unless FULL_HASH_ENV=1)
SAMPLE_BYTES = 4 << 10  # a page
SAMPLE_BLOCKS = 4096  # 16 MiB read a big file


def full_hash() -> bool:
    """LOWPREC_DIST_FULL_HASH: 1 hashes every input file whole, 0 or unset samples big ones; anything
    else is an InputError naming the variable."""
    raw = os.environ.get(FULL_HASH_ENV, "").strip()
    if raw not in ("", "0", "1"):
        raise InputError(f"{FULL_HASH_ENV}={raw!r}: give 1 (ranks compare the sha256 of every whole input file) "
                         f"or 0 (files over {FULL_HASH_LIMIT >> 20} MiB by {SAMPLE_BLOCKS} evenly spaced blocks; default)")
    return raw == "1"


def sample_offsets(size: int) -> list[int]:
    """Where the SAMPLE_BLOCKS blocks of a file of `size` bytes start: the first at 0, the last ending
    at its last byte, the others evenly between (from the size alone)."""
    blocks, block = SAMPLE_BLOCKS, SAMPLE_BYTES
    if size <= block:
        return [0]
    return sorted({(size - block) * k // (blocks - 1) for k in range(blocks)})


def fingerprint(path: Path, whole: bool | None = None) -> str:
    """sha256 of a file, or beyond FULL_HASH_LIMIT bytes (unless `whole`, default: LOWPREC_DIST_FULL_HASH)
    `sampled:BLOCKSxBYTES:` + the sha256 of its size and its evenly spaced blocks."""
    size = os.stat(path).st_size
    if size <= FULL_HASH_LIMIT or (full_hash() if whole is None else whole):
        return sha256_file(path)
    h = hashlib.sha256(f"size {size}\n".encode())
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in sample_offsets(size):
            h.update(os.pread(fd, SAMPLE_BYTES, offset))
    finally:
        os.close(fd)
    return f"sampled:{SAMPLE_BLOCKS}x{SAMPLE_BYTES}:{h.hexdigest()}"


def _files(root: Path) -> list[Path]:
    """The visible regular files under `root`, sorted; a symlinked directory is followed once (a link
    back up the tree is not walked again)."""
    out, seen = [], set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(top, f) for f in files if not f.startswith(".") and Path(top, f).is_file()]
    return sorted(out)


def describe_inputs(paths: Sequence[Path | str]) -> dict[str, str]:
    """Fingerprint of every file given and every file under a directory given, keyed `input I` (a
    file) or `input I: REL/PATH` (a file inside directory input I): hosts may mount the same inputs
    under other names and paths."""
    out: dict[str, str] = {}
    whole = full_hash()
    for i, p in enumerate(map(Path, paths), start=1):
        if not p.exists():  # the command itself names the missing input (exit 2), on every rank
            out[f"input {i}"] = "missing"
        elif p.is_dir():
            for f in _files(p):
                out[f"input {i}: {f.relative_to(p).as_posix()}"] = _inside(f, whole)
        else:
            out[f"input {i}"] = fingerprint(p, whole)
    return out


def _inside(f: Path, whole: bool) -> str:
    """`fingerprint` of a file found inside an input directory; one this process may not read (a
    user's private notes beside the data) is compared as "unreadable (ERRNO)", not refused: the
    command reads what it needs and says so itself if that is the file."""
    try:
        return fingerprint(f, whole)
    except OSError as exc:
        return f"unreadable ({errno.errorcode.get(exc.errno or 0, 'OSError')})"


def input_names(paths: Sequence[Path | str]) -> dict[str, str]:
    """`input I` -> the input's name on this rank (said in a refusal, not compared)."""
    return {f"input {i}": Path(p).name for i, p in enumerate(paths, start=1)}
