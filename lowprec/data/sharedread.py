"""Raw-data ingest on several processes: `lowprec --nproc N data prepare|append ...` (csv, criteo-tsv)
on one machine, or torchrun over several. Every rank reads a share of the input; rank 0 merges the
shares into the dataset one process writes, byte for byte (tests/data/test_parts.py and
tests/distributed/test_ingest.py compare them). The format is the reader's business
(lowprec.data.parts lists what a reader provides); this module knows only parts and lines.

1. Rank 0 plans the parts (lowprec.data.parts) in `.parts` inside the output being built and
   broadcasts the plan. Every rank must see that directory: --out's parent on a file system the
   ranks share, as they share the inputs. A rank that cannot see it stops the job (exit 2).
2. Each rank reads its share of the parts into `.parts`.
3. A barrier, bounded by the usual timeout plus the largest share's work at MIN_RATE bytes a second:
   a rank that dies ends the job at once (its connection closes), one that hangs after that bound.
4. Rank 0 merges the parts in input order (`merge`), as one reader of every file would have read
   them, and removes `.parts`.

A cut can fall inside a record that runs over several lines (a quoted cell holding a line break, legal
CSV): the part before it then runs out inside the quotes and its last record is malformed. The merge
reads that file itself from that part's start until a record ends where a later part begins. Any
part whose last record is malformed is treated so: reading it again is always right, only slower.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from lowprec import distributed as dist
from lowprec.data.rawinput import CHUNK_ROWS, BadRows, InputStats, locate
from lowprec.data.parts import MIN_RATE, Part, deal, drop, part_base, part_bytes, plan_parts, read_share, spilled
from lowprec.errors import InputError
from lowprec.fileio import sha256_file
from lowprec.progress import Stages

VISIBLE_WAIT_S = 15.0  # how long a rank waits to see the plan rank 0 wrote in the staging directory


def _summary(staging: Path, i: int) -> dict[str, Any] | None:
    path = part_base(staging, i).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def _stops(parts: list[Part], results: list[Any], i: int, base: int) -> dict[int, int]:
    """Line -> part: the first line number of each later part of part i's file whose start is known."""
    out, j = {}, i
    while not parts[j].last:
        r = results[j]
        if r is None or not r["complete"]:
            break
        base += r["lines"]
        out[base] = j + 1
        j += 1
    return out


def _replay(part: Part, r: dict[str, Any], base: int, path: Path, parser: Any, sink: Any, bad: BadRows,
            st: InputStats, base_path: Path) -> None:
    add = locate(bad, path)
    for first, last, kind, detail, spanned in r["bad"]:
        add(first + base, last + base, kind, detail, spanned)
    left = dict(r["bad_by_kind"])
    for _, _, kind, _, _ in r["bad"]:
        left[kind] -= 1
    for kind, n in left.items():
        if n:
            bad.add_counted(kind, n)
    if r["error"]:
        raise InputError(r["error"])
    st.rows += r["rows"]
    st.bad_rows += sum(r["bad_by_kind"].values())
    st.lines = base + r["lines"]
    tables = parser.absorb(r["state"], path, base)
    if r["rows"] == 0:
        return
    dense, sparse, labels, times = spilled(base_path, r["rows"], parser.widths)
    for a in range(0, r["rows"], CHUNK_ROWS):
        ids = np.array(sparse[a: a + CHUNK_ROWS])
        for o, h, table in tables:
            block = ids[:, o: o + h]
            ids[:, o: o + h] = np.where(block >= 0, table[np.maximum(block, 0)], -1)
        sink.append(np.asarray(dense[a: a + CHUNK_ROWS]), ids, np.asarray(labels[a: a + CHUNK_ROWS]),
                    np.asarray(times[a: a + CHUNK_ROWS]))
    del dense, sparse, labels, times


def merge(parts: list[Part], inputs: list[Path], staging: Path, parser: Any, sink: Any, bad: BadRows,
          stats: list[InputStats], progress: Stages | None) -> None:
    """Every part into `sink` in input order, with `parser`'s encoders and `bad` as one reader's.

    A part read by a rank is replayed: its bad rows added with the line number the part starts at,
    its encoders' local state absorbed (local vocabulary ids renumbered), its rows appended. A part
    that cannot be trusted is read here instead, from its start: one whose last record is malformed
    (a cut may have fallen inside a quoted cell), or one no rank read (a rank stops after a part that
    stopped early). That reading stops where a record ends on the first line of a later part whose
    start is known (the parts before it were read to their end), and the merge goes on there."""
    results = [_summary(staging, i) for i in range(len(parts))]
    update = progress("merge", len(parts), "parts") if progress else None
    i, base = 0, 0
    while i < len(parts):
        part = parts[i]
        path, st, r = inputs[part.file], stats[part.file], results[i]
        if part.first:
            sink.start_file(path)
            base = 0
        if r is not None and r["complete"] and part.first and r.get("sha256"):
            st.sha256 = r["sha256"]
        start = i
        if r is None or (r["malformed_end"] and not part.last):
            stops = _stops(parts, results, i, base)
            span = None if part.end is None else (part.start, os.stat(path).st_size)
            end = parser.read(path, sink, locate(bad, path), st, span=span, line_base=base,
                              stop_lines=frozenset(stops))
            nxt = stops.get(end.stopped_at) if end.stopped_at is not None else None
            while nxt is None and not parts[i].last:
                i += 1  # read to the end of the file: skip its remaining parts
            i, base = (nxt, end.stopped_at) if nxt is not None else (i + 1, 0)
        else:
            _replay(part, r, base, path, parser, sink, bad, st, part_base(staging, i))
            base += r["lines"]
            i += 1
        for j in range(start, i):  # done with: free the disk as the windows fill it
            drop(part_base(staging, j))
        if update is not None:
            update(i - start)
    for path, st in zip(inputs, stats):
        st.sha256 = st.sha256 or sha256_file(path)


def read_in_turn(inputs: list[Path], root: Path, parser: Any, sink: Any, bad: BadRows, stats: list[InputStats],
                 ranks: int, part_size: int) -> None:
    """What `read_shared` does on `ranks` ranks, with every share read in turn by this process: the
    tests check the merge against one reader with it, on parts of a few bytes."""
    staging = root / ".parts"
    staging.mkdir()
    parts = plan_parts(inputs, part_size)
    for mine in deal(parts, ranks):
        read_share(parts, mine, inputs, parser, bad, staging)
    merge(parts, inputs, staging, parser, sink, bad, stats, None)
    shutil.rmtree(staging)


def _appears(path: Path, wait_s: float = VISIBLE_WAIT_S) -> bool:
    """Whether `path` is (or within `wait_s` becomes) visible here: a shared file system may show
    another host's new file a little later (attribute caches)."""
    deadline = time.monotonic() + wait_s
    while not path.is_file():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True


def read_shared(inputs: list[Path], root: Path | None, parser: Any, sink: Any, bad: BadRows,
                stats: list[InputStats], progress: Stages | None) -> None:
    """The whole job on this rank: plan (rank 0), read this rank's share, wait, merge (rank 0)."""
    size = part_bytes(inputs, dist.world_size())  # (every rank: a bad $LOWPREC_CSV_PART_BYTES stops each)
    if dist.is_main():
        assert root is not None
        staging = root / ".parts"
        staging.mkdir()
        parts = plan_parts(inputs, size)
        (staging / "plan.json").write_text(json.dumps([dataclasses.asdict(p) for p in parts]))
        msg = {"staging": str(staging.resolve()), "plan": [dataclasses.asdict(p) for p in parts]}
    msg = dist.broadcast_json(msg if dist.is_main() else None, "ingest plan")
    staging, parts = Path(msg["staging"]), [Part(**p) for p in msg["plan"]]
    wait = min(VISIBLE_WAIT_S, dist.timeout_s() / 2)  # (within the collective's timeout: the refusal, not a timeout)
    seen = dist.gather_rows(np.array([[float(_appears(staging / "plan.json", wait))]]), "staging check")[:, 0]
    if not seen.all():
        blind = [str(r) for r in np.flatnonzero(seen == 0)]
        raise InputError(f"rank(s) {', '.join(blind)} cannot see the staging directory {staging} that rank 0 "
                         f"made inside the output: every rank must see --out's parent directory at the same "
                         f"path (a shared file system), as it sees the inputs (nothing was written)")
    shares = deal(parts, dist.world_size())
    read_share(parts, shares[dist.rank()], inputs, parser, bad, staging, progress if dist.is_main() else None)
    bound = dist.timeout_s() + max(sum(parts[i].work for i in s) for s in shares) / MIN_RATE
    dist.barrier("reading the shares", timeout=bound)
    if not dist.is_main():
        return
    merge(parts, inputs, staging, parser, sink, bad, stats, progress)
    shutil.rmtree(staging)


def read_all(inputs: list[Path], root: Path, parser: Any, sink: Any, bad: BadRows, stats: list[InputStats],
             progress: Stages | None, in_turn: tuple[int, int] | None = None) -> None:
    """Every input into `sink` with `parser`: file after file in one process; under torchrun shared
    by the ranks (`read_shared`, rank 0's half); with `in_turn` = (ranks, part bytes), as that many
    ranks would, in turn (`read_in_turn`)."""
    if dist.active():
        read_shared(inputs, root, parser, sink, bad, stats, progress)
    elif in_turn is not None:
        read_in_turn(inputs, root, parser, sink, bad, stats, *in_turn)
    else:
        for path, st in zip(inputs, stats):
            sink.start_file(path)
            parser.read(path, sink, locate(bad, path), st, progress=progress)
