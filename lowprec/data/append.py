"""`lowprec data append`: add the windows of new raw files to a prepared dataset, in place.

A scheduled job gets a day of logs at a time, and preparing the whole history again every day does
not scale. Append reads the new files exactly as the dataset's own were read: the format, CSV schema,
window option and table sizes recorded in its dataset.json, with CSV vocabularies frozen as under
`--vocab-from` (a new value goes to the reserved id 0, counted), so every id keeps its meaning and a
model trained on the dataset scores the new windows. The new windows come after the last one. The
existing windows' files and entries are not touched, so their fingerprints (drift's history, a
model's record of its training windows) still match.

Refused, with the dataset untouched (exit 2):
- a dataset generated (`data synth`) or read from MovieLens (its features depend on the whole history);
- an input file already in the dataset (same sha256, checked before reading): a re-run of a daily
  job adds nothing twice (a file without rows: only under the same name, since every quiet day's
  header-only file has the same bytes); and an input whose rows are an earlier input's (the same day
  again, recompressed or with other line endings: other bytes, the same rows digest);
- files without a valid row when the dataset makes windows from rows (by time or row count): nothing
  to append. Under one window per file such a file is an empty window, as `data prepare` writes one;
- calendar windows that start before the dataset's last window ends: a period already prepared
  cannot grow (prepare the dataset again to merge late rows);
- new data that does not encode as the dataset does (a check: the recorded settings make it so).

The new windows are prepared in a temporary sibling directory. Then the marker lists their files,
the files are renamed into the dataset, and dataset.json is replaced: that replacement is the commit.
A run killed before it leaves files no window names, which the next append overwrites.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import filecmp
import os
import re
from pathlib import Path
from typing import Any, Iterator

from lowprec import distributed as dist
from lowprec.data.criteo import DENSE_NAMES, SPARSE_NAMES, prepare_criteo
from lowprec.data.csvread import prepare_csv
from lowprec.data.csvschema import CALENDAR
from lowprec.data.dataset import Dataset, DatasetMeta, WindowInfo, window_files
from lowprec.data.rawinput import SAME_ROWS_REFUSED, BadRows, check_inputs, no_rows_text
from lowprec.errors import InputError, user_os_errors
from lowprec.fileio import add_entries, atomic_write_text, fsync_tree, sha256_file, temporary_sibling, through_symlink
from lowprec.jsonsafe import dumps

# what differs from one run over new files to the next; the rest of a run's provenance repeats the
# dataset's own (source, schema, window option, hashing rule, vocabularies)
PER_RUN = ("inputs", "bad_rows", "warnings", "multi_hot_truncated", "vocab_unseen", "hash_collisions")


def append_windows(root: Path, inputs: list[Path], **read: Any) -> tuple[DatasetMeta | None, BadRows, list[int]]:
    """Append `inputs`' windows to the dataset at `root`; returns its new meta, the bad rows of the
    new files and the new windows' indices. `read`: max_bad_rows, report, progress, show_bad_rows.

    Under torchrun (csv and criteo-tsv datasets) every rank reads a share of the new files
    (lowprec.data.sharedread) and rank 0 appends; the other ranks return (None, their BadRows, [])."""
    # staged beside the real directory (its own disk, so renames work); absolute, so `--data .` stages
    # in the parent, not inside the dataset
    root = through_symlink(Path(os.path.abspath(Dataset(root).root)))
    if not dist.is_main():  # a reading rank: once rank 0 holds the lock, its share of the new files
        _told(dist.broadcast_json(None, "append start"))
        return None, *_prepare_like(root, Dataset(root).meta, inputs, None, **read)[1:], []
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_exclusive(root))
            old = Dataset(root).meta  # read under the lock: windows an append just committed are seen
            refusal = _refusal_on_ranks(root, old)
            _check_known_files(old, inputs, root)  # (before reading: a rerun is refused at once)
        except InputError as exc:
            _tell_ranks(str(exc))
            raise
        _tell_ranks(refusal)
        _told(refusal)
        with temporary_sibling(root) as staging, user_os_errors(root):  # (a full disk names --data)
            new, bad = _prepare_like(root, old, inputs, staging, **read)
            _check_some_window(old, new, root)
            said = _check_new_rows(old, new, root, staging / "new")
            _check_same_encoding(old, new, root)
            _check_later(old, new, root)
            added = _commit(root, old, new, staging / "new", said + _repeated_labels(old, new))
    return Dataset(root).meta, bad, added


def _refusal_on_ranks(root: Path, old: DatasetMeta) -> str | None:
    source = old.provenance.get("source")
    if not dist.active() or source in ("csv", "criteo-tsv"):
        return None
    return (f"{root}: a dataset read from {source or 'an unrecorded source'!r} is appended to by one process; "
            f"only csv and criteo-tsv datasets are read on several")


def _tell_ranks(refusal: str | None) -> None:
    """Under torchrun, rank 0 tells the reading ranks (waiting for it) whether the append goes ahead."""
    if dist.active():
        dist.broadcast_json(refusal, "append start")


def _told(refusal: str | None) -> None:
    if refusal:
        raise InputError(refusal)


def _prepare_like(root: Path, old: DatasetMeta, inputs: list[Path], staging: Path | None,
                  **read: Any) -> tuple[DatasetMeta, BadRows]:
    """Read `inputs` into staging/new as the dataset's own files were read (staging None: a reading
    rank under torchrun), its windows numbered from 0 there but warned about by the index they get in
    the dataset, and `rows:N` windows labelled by the dataset's running row count (`after`)."""
    read["after"] = (len(old.windows), sum(w.rows for w in old.windows))
    prov = old.provenance
    source = prov.get("source")
    if source == "csv":
        return prepare_csv(inputs, staging / "new" if staging is not None else None, None,
                           str(prov.get("windows") or "file"), vocab_from=root, empty_ok=True,
                           recorded_schema=prov.get("schema") if isinstance(prov.get("schema"), dict) else {},
                           **read)
    if source == "criteo-tsv":
        if list(old.dense_names) != DENSE_NAMES or old.sparse_names != SPARSE_NAMES:
            raise InputError(f"{root}/dataset.json: its provenance says the data was read from criteo-tsv, but "
                             f"its features ({len(old.dense_names)} dense, {len(old.sparse_names)} sparse: "
                             f"{old.sparse_names[:3]} ...) are not Criteo's 13 + 26; was dataset.json edited? "
                             f"Prepare the dataset again")
        every = re.fullmatch(r"every (\d+) rows", str(prov.get("windows")))
        return prepare_criteo(inputs, staging / "new" if staging is not None else None, list(old.num_embeddings),
                              int(every.group(1)) if every else None, empty_ok=True, **read)
    raise InputError(f"{root}: a dataset from {source or 'an unrecorded source'!r} cannot be appended to; "
                     f"append reads new files as the dataset's own were read, which it can for csv and "
                     f"criteo-tsv datasets (MovieLens history features and generated data depend on all "
                     f"the data): prepare the dataset again with the new files")


def _check_some_window(old: DatasetMeta, new: DatasetMeta, root: Path) -> None:
    """New files without a valid row: under one window per file each is an empty window (warned
    about, as `data prepare` does with such a file among others); other windowings make windows from
    rows, so there is nothing to append: say so, naming what the files hold."""
    if new.windows:
        return
    prov = old.provenance
    how = str(prov.get("windows"))
    how = f"from the rows' times (--window {how})" if how in CALENDAR else f"by row count ({how})"
    raise InputError(f"no valid rows in {no_rows_text(new.provenance['inputs'], prov.get('source') == 'csv')}: "
                     f"nothing to append. {root} makes its windows {how}, so a file without rows adds no window "
                     f"(a dataset prepared with one window per file, --window file, would get an empty one); "
                     f"the dataset is unchanged")


def _known_inputs(old: DatasetMeta) -> list[dict[str, Any]]:
    """The input records of the dataset's prepare run and of every append since."""
    prov = old.provenance
    return [i for run in [prov, *prov.get("appends", [])] for i in run.get("inputs", []) if isinstance(i, dict)]


def _check_known_files(old: DatasetMeta, inputs: list[Path], root: Path) -> None:
    """Before reading: an input whose bytes are a file already in the dataset (same sha256) would
    add its rows again. A file without rows is such a file only under the same name: every quiet
    day's header-only file has the same bytes, so a new quiet day is not the last one again, a rerun is."""
    known: dict[Any, list[dict[str, Any]]] = {}
    for i in _known_inputs(old):
        known.setdefault(i.get("sha256"), []).append(i)
    check_inputs(inputs)
    for path in inputs:
        same = known.get(sha256_file(path), [])
        same = [i for i in same if i.get("rows") or Path(str(i.get("path"))).name == path.name]
        if same:
            twice = "count its rows twice" if same[-1].get("rows") else "add its empty window twice"
            raise InputError(f"{path}: this file is already in {root} (as {same[-1].get('path')}, same "
                             f"sha256); appending it again would {twice}")


def _check_new_rows(old: DatasetMeta, new: DatasetMeta, root: Path, staged: Path) -> list[str]:
    """New rows that are rows already in the dataset, under other bytes (the same day gzipped,
    unzipped, with CRLF or a BOM), which the raw files' sha256 does not see: by the inputs' rows
    digests (lowprec.data.rowsample.rows_digest, recorded since lowprec 0.2.0: the same rows in any
    windows, in any order), and for inputs recorded before them by the windows' files
    (`_check_copied_windows`). Returns the warnings said (a few rows that may repeat by chance), which
    the append records in its provenance."""
    known: dict[tuple, str] = {}
    for i in _known_inputs(old):
        if i.get("rows") and i.get("rows_digest"):
            known.setdefault((i.get("rows"), i.get("rows_digest")), str(i.get("path")))  # (the first such input)
    said = []
    for i in new.provenance["inputs"]:
        where = known.get((i.get("rows"), i.get("rows_digest"))) if i.get("rows_digest") else None
        if where is None:
            continue
        what = f"{i['path']} holds the same {i['rows']:,} row{'s' * (i['rows'] != 1)} as {where}, already in {root}"
        if i["rows"] < SAME_ROWS_REFUSED:  # (a few rows may repeat by chance: said, not refused)
            said.append(f"{what}: if it is the same data again, its rows now count twice")  # (said once written)
            continue
        raise InputError(f"{what}: the same data again (another compression, line endings or byte-order "
                         f"mark?); appending it would count its rows twice")
    if not any(i.get("rows_digest") for i in _known_inputs(old)):  # (recorded before rows digests)
        said += _check_copied_windows(old, new, root, staged)
    return said


def _check_copied_windows(old: DatasetMeta, new: DatasetMeta, root: Path, staged: Path) -> list[str]:
    """A new window whose files are byte for byte an existing window's holds the same rows (for
    datasets whose inputs carry no rows digest). Only windows of equal row count are compared
    (streamed, stopping at the first difference), and where the windows carry times (calendar
    windows), only windows of the same times. `--window file` and rows:N windows keep none, so there
    the rows alone decide: a day whose every row repeats an earlier day's, in order, is taken for a
    copy. So an append reads an old window only when it may be the new one's copy."""
    def key(w: WindowInfo) -> tuple:  # (rows:N windows' start and end are row offsets: never the same)
        return (w.rows,) if str(old.provenance.get("windows", "")).startswith("rows:") else (w.rows, w.start, w.end)

    alike: dict[tuple, list[int]] = {}
    for k, w in enumerate(old.windows):
        if w.rows:
            alike.setdefault(key(w), []).append(k)
    out = []
    for j, w in enumerate(new.windows):
        for k in alike.get(key(w), []):
            mine, theirs = window_files(staged, j), window_files(root, k)
            if all(filecmp.cmp(mine[f], theirs[f], shallow=False) for f in ("labels", "dense", "sparse")):
                said = (f"new window {w.label!r} ({w.rows:,} rows) holds exactly the rows of {root}'s window {k} "
                        f"({old.windows[k].label!r})")
                if w.rows < SAME_ROWS_REFUSED:  # (a few rows may repeat by chance: said, not refused)
                    out.append(f"{said}: if it is the same data again, its rows now count twice")
                    break  # (said once for the new window, with the append's warnings once it is written)
                raise InputError(f"{said}: the same data again (another compression, line endings or byte-order "
                                 f"mark?); appending it would count its rows twice")
    return out


def _check_same_encoding(old: DatasetMeta, new: DatasetMeta, root: Path) -> None:
    def layout(m: DatasetMeta) -> tuple:
        return m.dense_names, tuple((f.name, f.num_embeddings, f.hotness, f.encoding) for f in m.sparse)

    if layout(old) != layout(new):
        raise InputError(f"the new files do not encode as {root}'s windows do (features, table sizes or "
                         f"encodings differ: {layout(new)} against {layout(old)}); prepare the dataset again")


def _check_later(old: DatasetMeta, new: DatasetMeta, root: Path) -> None:
    """Calendar windows: every new window starts at or after the end of the dataset's last one."""
    if str(old.provenance.get("windows")) not in CALENDAR or not old.windows:
        return
    last = old.windows[-1]
    schema = old.provenance.get("schema")
    toml = schema.get("toml") if isinstance(schema, dict) else None
    zone = toml.get("window_timezone") if isinstance(toml, dict) else None
    for w in new.windows:
        if _time(w.start) < _time(last.end) and w.start == last.start:  # the last window's own period
            raise InputError(
                f"{w.rows:,} new row(s) fall in {w.label!r}, the period of {root}'s last window, which holds "
                f"{last.rows:,} row{'s' * (last.rows != 1)} already (it ends {last.end}); append adds later periods "
                f"only. Either the files are cut at another midnight than the windows' ({zone or 'UTC'}) days, so "
                f"each straddles two of them and every day would meet this: set the schema's window_timezone to "
                f"the zone the files are cut in (or prepare with --window file); or an earlier file held rows "
                f"dated into this period (a clock ahead): prepare the dataset again from all its files")
        if _time(w.start) < _time(last.end):
            raise InputError(f"{w.rows:,} new row(s) fall in {w.label!r}, which starts before {root}'s last window "
                             f"{last.label!r} ends ({last.end}); append adds later periods only. Prepare the "
                             f"dataset again from all its files to merge late rows into earlier windows")


def _repeated_labels(old: DatasetMeta, new: DatasetMeta) -> list[str]:
    """A warning when new windows take labels the dataset's windows have (a daily file under one
    name, `--window file`): `label:` specs would then select several windows. (`new`'s labels are
    final: `rows:N` windows were labelled by the dataset's row count, `_prepare_like`.)"""
    repeated = sorted({w.label for w in new.windows if w.label} & {w.label for w in old.windows})
    if not repeated:
        return []
    return [f"new window label(s) {repeated} are already labels of earlier windows (a file name used again?): "
            f"`--windows label:...` selects all of them; give each day's file its own name"]


def _time(iso: str | None) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(str(iso))
    except ValueError:  # (a window of year 9999, prepared before such times became bad rows, ends in 10000)
        raise InputError(f"window time {iso!r} in dataset.json is not a date append can compare (years 1-9999); "
                         f"prepare the dataset again: times past year 9998 are now bad rows") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _commit(root: Path, old: DatasetMeta, new: DatasetMeta, staged: Path, warnings: list[str]) -> list[int]:
    first = len(old.windows)
    moves = [(src, window_files(root, first + w.index)[k])
             for w in new.windows for k, src in window_files(staged, w.index).items() if src.exists()]
    fsync_tree(staged)
    add_entries(root, [dst.name for _, dst in moves])  # a later `data prepare --out` here still owns them
    for src, dst in moves:
        os.replace(src, dst)
    added = [WindowInfo(first + w.index, w.rows, w.label, w.start, w.end) for w in new.windows]
    run = {k: new.provenance[k] for k in PER_RUN if k in new.provenance}
    if warnings:
        run["warnings"] = [*run.get("warnings", []), *warnings]
    prov = {**old.provenance, "appends": [*old.provenance.get("appends", []),
                                          {"windows": [w.index for w in added], **run}]}
    merged = DatasetMeta(old.dense_names, old.sparse, old.windows + tuple(added), prov)
    atomic_write_text(root / "dataset.json", dumps(merged.to_json(), indent=2, sort_keys=False) + "\n")
    return [w.index for w in added]


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """One append at a time per dataset (an flock on its directory, released if the process dies)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{root}: another `lowprec data append` is writing this dataset; try again when it "
                             f"has finished") from None
        yield
    finally:
        os.close(fd)
