"""What each recorded drift window was computed from, and the checks that keep a --db honest.

A window's results are only its own while the inputs are: `window_source` fingerprints them (the
window's data: the dataset's feature schema, the window's entry in dataset.json and its dense and
sparse files, sampled beyond 16 MiB -- not the labels, which may arrive later, and not the other
windows, so a dataset that grows by a window a day keeps its history; the window's row count; the
reference's and candidate's sha256; the [alarm] thresholds and [bootstrap] settings its labelled
row was judged with, as JSON: null while its labels are pending, set when they are filled in; the
[estimate] thresholds its label-free record was judged with, when that record was written) and
`DriftStore.record_window` stores that row in the window's transaction. On a later run `check_sources` REFUSES (InputError, exit 2) a recorded
window whose data or models differ (a reused --db with another --data would otherwise report the
old results as the new data's), and returns plain notes, shown by the CLI and in --json: the
labelled windows judged with other [alarm]/[bootstrap] settings (not re-judged; a window still pending, or filled in
by this run, was not judged yet), the windows whose label-free record was judged with other
[estimate] thresholds (not re-judged either), and the windows whose labels file is not the
one their labelled metrics were computed from (`window_labels_sha`, written with the labelled row).
Labels get revised after the fact (late conversions), so that is said, not refused: the recorded
metrics stand. A labels file whose size, mtime and ctime are the recorded ones is not fingerprinted
again (`labels_stat`); one that changed is read whole (sha256 of every byte: a late conversion is
one flipped label anywhere in a file of billions), so the read costs a second or so a GB, once per
rewrite. Histories written before that hold a sampled fingerprint (size, first and last 4 MiB) for
labels files beyond 256 MiB; such a record is compared in its own form and, while it still matches,
replaced by the whole-file one.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lowprec.data.dataset import Dataset, window_files
from lowprec.data.windows import window_fingerprint
from lowprec.drift.store import DriftStore
from lowprec.errors import InputError
from lowprec.fileio import file_fingerprint, sha256_file


def window_labels_sha(ds: Dataset, w: int, like: str | None = None) -> str | None:
    """Fingerprint of window w's labels file, "labels:" + the sha256 of all its bytes; None while
    the file is not there. `like` a recorded "labels:sampled:..." value (an older lowprec's, for a
    file beyond 256 MiB): the fingerprint in that form, to compare with it."""
    path = window_files(ds.root, w)["labels"]
    if not path.is_file():
        return None
    if _sampled(like):
        return "labels:" + file_fingerprint(path)
    return "labels:" + sha256_file(path)


def _sampled(fingerprint: str | None) -> bool:
    return fingerprint is not None and fingerprint.startswith("labels:sampled:")


def labels_stat(ds: Dataset, w: int) -> str | None:
    """Size, mtime and ctime (ns) of window w's labels file, None while it is not there. While they are
    the recorded ones the file was not rewritten, so its fingerprint is not recomputed: a daily job
    over a year of windows would otherwise re-read every labels file on every run."""
    try:
        st = window_files(ds.root, w)["labels"].stat()
    except FileNotFoundError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def alarm_json(job: Any) -> str:
    """The settings a labelled window is judged with ([alarm] thresholds and the [bootstrap] that
    sets its intervals), as recorded in window_sources."""
    c = job.config
    return json.dumps({"alarm": dataclasses.asdict(c.alarm), "bootstrap": dataclasses.asdict(c.bootstrap)},
                      sort_keys=True)


def estimate_json(job: Any) -> str:
    """The [estimate] thresholds a window's label-free record is judged with, as recorded."""
    return json.dumps(dataclasses.asdict(job.config.estimate), sort_keys=True)


def _changed(was: str, now: str) -> list[str]:
    """The sections of recorded settings JSON that differ from now's ([alarm], [bootstrap]); a record
    from before [bootstrap] was recorded holds the [alarm] thresholds alone."""
    old, new = json.loads(was), json.loads(now)
    if "alarm" not in old:
        old = {"alarm": old}
    return [k for k in sorted(old) if old[k] != new.get(k)]


def window_source(job: Any, ds: Dataset, models: Any, w: int, judged: bool = True) -> dict[str, Any]:
    """What window w is computed from: data fingerprint, both models, the thresholds judging it
    (`judged` False: its labels are not there, so no [alarm] threshold judges it yet: null, set
    when its labels are filled in)."""
    return {"data_sha256": window_fingerprint(ds, w), "rows": ds.meta.window(w).rows,
            "reference_sha256": models.reference_sha, "candidate_sha256": models.candidate_sha,
            "thresholds": alarm_json(job) if judged else None, "estimate_thresholds": estimate_json(job)}


def _check_same_dataset(job: Any, store: DriftStore, ds: Dataset, recorded: dict[int, dict[str, Any]],
                        chosen: list[int]) -> None:
    """A history follows one dataset as it grows: the last window it recorded (when this run does
    not ask for it again, which the caller checks) must still be --data's window of that number.
    New windows of another dataset were recorded into the same series before (QA 8c item 2)."""
    last = max((w for w, r in recorded.items() if str(r["data_sha256"]).startswith("window:")), default=None)
    if last is None or last in chosen:
        return
    holds = last < len(ds.meta.windows)
    if holds and recorded[last]["data_sha256"] == window_fingerprint(ds, last):
        return
    now = (f"--data {job.data}'s window {last} is other data" if holds else
           f"--data {job.data} holds {len(ds.meta.windows)} windows, not its window {last}")
    raise InputError(f"--db {store.path} follows another dataset: it recorded window {last} from data that "
                     f"{now}; a history follows one dataset as it grows (`data append`). Use a new --db for "
                     f"this data (refused; nothing recorded).")


def check_sources(job: Any, store: DriftStore, ds: Dataset, models: Any, chosen: list[int]) -> list[str]:
    """Refuse recorded windows computed from other data or models; notes on changed thresholds."""
    recorded, notes, rejudge, estimated = store.sources(), [], {}, []
    judged = store.recorded()  # windows with a labelled row; the others were never judged by [alarm]
    for w in sorted(set(chosen) & set(recorded)):
        was, now = recorded[w], window_source(job, ds, models, w)
        if not str(was["data_sha256"]).startswith("window:"):  # recorded before per-window fingerprints
            now["data_sha256"] = sha256_file(ds.root / "dataset.json")
        for key, what in (("data_sha256", "window data"), ("rows", "row count"),
                          ("reference_sha256", "reference"), ("candidate_sha256", "candidate")):
            if was[key] != now[key]:
                raise InputError(
                    f"--db {store.path}: window {w} was computed from another {what} ({was[key]!r}, now "
                    f"{now[key]!r} from --data {job.data}); its recorded results would be reported as "
                    f"this data's. Use a new --db for this data (refused; nothing recorded).")
        if w in judged and was["thresholds"] is not None:
            for section in _changed(was["thresholds"], now["thresholds"]):
                rejudge.setdefault(section, []).append(w)
        if was.get("estimate_thresholds") not in (None, now["estimate_thresholds"]):
            estimated.append(w)
    _check_same_dataset(job, store, ds, recorded, chosen)
    labels, revised, touched = store.label_sources(), [], []
    for w in sorted(set(chosen) & set(labels)):
        sha, stat = labels[w]
        now_stat = labels_stat(ds, w)
        if now_stat is not None and now_stat == stat:
            continue
        if window_labels_sha(ds, w, like=sha) != sha:  # (None: the file was removed)
            revised.append(w)
        elif now_stat is not None:  # the same bytes (touched, copied): remember the new stat
            touched.append((w, window_labels_sha(ds, w) if _sampled(sha) else sha, now_stat))
    if touched:
        store.set_label_sources(touched)
    if revised:
        notes.append(f"windows {revised} have labels that are not the ones their labelled metrics were computed "
                     f"from (revised, or removed, since they were recorded); those metrics and alarms stand as "
                     f"recorded and were NOT recomputed. Use a new --db to score them with these labels.")
    for section, ws in rejudge.items():
        what = "thresholds" if section == "alarm" else "settings (the intervals of their gaps)"
        notes.append(f"windows {ws} were judged with other [{section}] {what} when recorded; they were "
                     f"NOT re-judged (their alarm/ok stands as recorded). Use a new --db to judge them "
                     f"with these settings.")
    if estimated:
        notes.append(f"windows {estimated} had their label-free estimate judged with other [estimate] thresholds "
                     f"when recorded; NOT re-judged (their estimate alarm/ok stands as recorded). Use a new --db "
                     f"to judge them with these thresholds.")
    return notes
