"""Sampled row hashes: which rows of a window a model learned from, when the window is not one of its
training windows (a log prepared again by week instead of by day, a day re-cut with one row more).

Window fingerprints (lowprec.data.windows) recognise training data only as whole windows. Training
also keeps a sample of its rows: every row gets a 64-bit hash of its features (dense values' bits and
sparse ids; not its label, index or time), and the rows whose hash is 0 modulo a power of two are
kept, the modulus chosen so that about SAMPLE_ROWS hashes are kept. Any later window is hashed
with the same modulus: the same row is picked wherever it sits, so the share of a window's sampled
rows found among the training sample estimates the share of its rows the model learned from.

Data whose rows repeat (few features of few values) would look "learned from" everywhere; training
records how many of its sampled rows repeat, and the check is made only when they are rare. Rows are
counted once however often a window repeats them (one replayed request is one row), and a window whose
times lie outside the training windows' period is held out by time, whatever its rows share with
them (daily snapshots of the same entities); windows without times (`--window file`, `rows:N`) have
only their rows to go by.
"""
from __future__ import annotations

import base64
import datetime as dt
from typing import Any, Callable

import numpy as np

from lowprec.data.dataset import Dataset, window_files
from lowprec.data.npyfiles import load_window_array

SAMPLE_ROWS = 4096  # hashes kept from the training windows (32 KB, 44 KB of base64 in config.json)
CHUNK_ROWS = 1 << 18
MIN_SAMPLED = 8  # a window with fewer sampled rows is not judged (too few to estimate a share)
LEARNED_SHARE = 0.1  # a window is "learned from" when this share of its sampled rows are training rows
MAX_REPEATS = 0.01  # ... judged only when at most this share of the training sample repeats a row


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (the low bits pick the sample)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def row_hashes(dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """One uint64 a row: its dense values' float32 bits and its sparse ids, column by column."""
    n = len(dense)
    with np.errstate(all="ignore"):  # (a tampered window's values beyond float32 hash as inf; scoring names them)
        cols = [np.ascontiguousarray(dense, dtype=np.float32).view(np.uint32).astype(np.uint64),
                np.ascontiguousarray(sparse, dtype=np.int64).view(np.uint64)]
    h = np.full(n, 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for block in cols:
            for j in range(block.shape[1]):
                h = _mix(h ^ block[:, j] ^ (np.uint64(j + 1) << np.uint64(56)))
    return h


def rows_digest(dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, times: np.ndarray | None) -> int:
    """The sum (mod 2**64) of the rows' hashes with their labels and times: equal for the same rows in
    any order or split, whatever bytes they were read from (lowprec.data.rawinput.RowDigests)."""
    h = row_hashes(dense, sparse)
    with np.errstate(over="ignore"):
        h = _mix(h ^ np.asarray(labels, dtype=np.int64).reshape(-1).view(np.uint64))
        if times is not None:
            h = _mix(h ^ np.ascontiguousarray(times, dtype=np.float64).reshape(-1).view(np.uint64))
        return int(h.sum(dtype=np.uint64))


def window_sample(ds: Dataset, w: int, modulus: int, progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """The hashes of window w's rows whose hash is 0 modulo `modulus` (a power of two), in row order."""
    files = window_files(ds.root, w)  # (dense and sparse only: a window's labels may come later, drift's)
    dense, sparse = (load_window_array(files[kind], w, kind) for kind in ("dense", "sparse"))
    if dense.ndim != 2 or sparse.ndim != 2 or len(dense) != len(sparse):
        return np.zeros(0, np.uint64)  # (a malformed window: scoring it names what is wrong)
    out = []
    for lo in range(0, len(dense), CHUNK_ROWS):
        h = row_hashes(dense[lo:lo + CHUNK_ROWS], sparse[lo:lo + CHUNK_ROWS])
        out.append(h[(h & np.uint64(modulus - 1)) == 0])
        if progress is not None:
            progress(len(h))
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def modulus_for(rows: int) -> int:
    """The least power of two that keeps about SAMPLE_ROWS of `rows` rows."""
    m = 1
    while rows > SAMPLE_ROWS * m:
        m *= 2
    return m


def _encode(hashes: np.ndarray) -> str:
    return base64.b64encode(np.unique(hashes).astype("<u8").tobytes()).decode()


def _decode(text: Any) -> np.ndarray | None:
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except ValueError:
        return None
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64) if raw is not None and len(raw) % 8 == 0 else None


def record(ds: Dataset, train: list[int], val: list[int],
           progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """The `row_sample` a trained model's info carries: modulus, repeat share and the two samples."""
    modulus = modulus_for(sum(ds.meta.window(w).rows for w in (*train, *val)))
    samples = {k: np.concatenate([np.zeros(0, np.uint64)] + [window_sample(ds, w, modulus, progress) for w in ws])
               for k, ws in (("train", train), ("val", val))}
    both = np.concatenate([samples["train"], samples["val"]])
    repeats = 1.0 - len(np.unique(both)) / len(both) if len(both) else 0.0
    spans = [_span(ds, w) for w in (*train, *val)]
    span = [min(s[0] for s in spans).isoformat(), max(s[1] for s in spans).isoformat()] \
        if spans and all(spans) else None
    return {"modulus": modulus, "repeat_share": round(repeats, 6), "span": span,
            "labels": sorted({p for w in (*train, *val) if (p := labels_print(ds, w))}),
            **{k: _encode(v) for k, v in samples.items()}}


def labels_print(ds: Dataset, w: int) -> str | None:
    """sha256 of window w's labels file (None while it is not there: drift's labels may come later): a
    window whose rows AND labels are a training window's is a copy."""
    from lowprec.fileio import sha256_file

    path = window_files(ds.root, w)["labels"]
    return "labels:" + sha256_file(path) if path.is_file() else None


def outside_span(sample: Any, ds: Dataset, w: int) -> bool:
    """Whether window w's times lie outside the training windows' period the record keeps (False
    when either has no times): such a window is held out by time, though its rows may repeat theirs."""
    span = sample.get("span") if isinstance(sample, dict) else None
    learned = _times(*span) if isinstance(span, list) and len(span) == 2 else None
    here = _span(ds, w)
    return learned is not None and here is not None and (here[0] >= learned[1] or here[1] <= learned[0])


def copied_labels(sample: Any, ds: Dataset, w: int) -> bool:
    """Whether window w's labels file is a training or validation window's (the record keeps their sha256)."""
    known = sample.get("labels") if isinstance(sample, dict) else None
    return isinstance(known, list) and (labels_print(ds, w) or "") in known


def _span(ds: Dataset, w: int) -> tuple[dt.datetime, dt.datetime] | None:
    """Window w's [start, end) as times, when it has them (calendar windows; rows:N windows' are offsets)."""
    info = ds.meta.window(w)
    return _times(info.start, info.end)


def _times(start: Any, end: Any) -> tuple[dt.datetime, dt.datetime] | None:
    try:
        a, b = (dt.datetime.fromisoformat(str(x)) for x in (start, end))
    except ValueError:
        return None
    if a.tzinfo is None or b.tzinfo is None:
        return None
    return a, b


def learned_share(sample: Any, ds: Dataset, w: int) -> tuple[str, float] | None:
    """("training" | "validation", share) when window w's sampled rows are at least LEARNED_SHARE
    rows of the recorded sample (training before validation), else None; None too for a record this
    cannot judge (absent, hand-edited, rows that repeat, a window with too few sampled rows)."""
    if not isinstance(sample, dict):
        return None
    modulus, repeats = sample.get("modulus"), sample.get("repeat_share")
    if (type(modulus) is not int or not 1 <= modulus <= 1 << 62 or modulus & (modulus - 1)
            or not isinstance(repeats, (int, float)) or repeats > MAX_REPEATS):
        return None
    if outside_span(sample, ds, w):
        return None  # a time window outside the training period is held out, whatever its rows repeat
    mine = np.unique(window_sample(ds, w, modulus))  # (distinct rows: one row repeated many times is one)
    if len(mine) < MIN_SAMPLED:
        return None
    for kind in ("train", "val"):
        theirs = _decode(sample.get(kind))
        if theirs is not None and len(theirs):
            share = float(np.isin(mine, theirs).mean())
            if share >= LEARNED_SHARE:
                return ("training" if kind == "train" else "validation"), share
    return None
