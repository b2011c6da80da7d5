"""Streaming mini-batches from a prepared dataset.

Memory stays bounded by one chunk whatever the window size: windows are memory-mapped and read in
chunks of `chunk_rows`. Training shuffles the order of chunks (across all chosen windows) and the rows
inside each chunk, from a seeded generator, so a seed fixes the order exactly.
Every batch's ids are checked against num_embeddings; an out-of-range id is an InputError naming the
window, row, feature and value. With `feature_ids=True` each batch also carries its ids in the
quantized runtime's input layout (`FeatureIds`, see lowprec/data/ids.py), built here in the loader so
that the runtime passes them to FBGEMM untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from lowprec.data.dataset import PAD_ID, Dataset, window_files
from lowprec.data.ids import FeatureIds, TableMajor
from lowprec.errors import InputError


@dataclass
class Batch:
    dense: torch.Tensor  # float32 (B, n_dense)
    sparse: torch.Tensor  # int64 (B, slots), PAD_ID where a multi-hot slot is empty
    labels: torch.Tensor  # float32 (B,)
    window: int
    ids: FeatureIds | None = None  # the same ids table-major, when the loader was asked for them
    row0: int = -1  # index of the first row within its window (in order; -1 when shuffled)

    def ids_for(self, model: torch.nn.Module) -> torch.Tensor | FeatureIds:
        """The ids in the layout `model` reads best: FeatureIds for the quantized runtime (when
        this batch carries them), else the id matrix."""
        return self.ids if self.ids is not None and reads_feature_ids(model) else self.sparse

    def __len__(self) -> int:
        return self.labels.shape[0]


def reads_feature_ids(model: torch.nn.Module) -> bool:
    """Whether `model` takes FeatureIds (the quantized runtime does; float models read the matrix)."""
    return bool(getattr(model, "reads_feature_ids", False))


def _check_chunk(ds: Dataset, window: int, row0: int, sparse, labels) -> None:
    meta = ds.meta
    limits = np.repeat(np.asarray(meta.num_embeddings, dtype=np.int64), meta.hotness)
    bad = (sparse < PAD_ID) | (sparse >= limits[None, :])
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        feat = int(np.searchsorted(meta.slot_offsets, c, side="right") - 1)
        raise InputError(
            f"window {window} row {row0 + r}: id {int(sparse[r, c])} of sparse feature "
            f"{meta.sparse_names[feat]!r} is outside [0, {meta.num_embeddings[feat]})"
        )
    if not np.isin(labels, (0, 1)).all():
        r = int(np.argwhere(~np.isin(labels, (0, 1)))[0][0])
        raise InputError(f"window {window} row {row0 + r}: label {labels[r]} is not 0 or 1 "
                         f"(in {window_files(ds.root, window)['labels']})")


def _dense_float32(ds: Dataset, window: int, row0: int, stored: np.ndarray) -> np.ndarray:
    """A chunk of dense features as float32, the model's input; InputError at the first NaN or Inf,
    and at a finite value beyond float32's range (the cast would make it Inf) said as such."""
    with np.errstate(over="ignore", invalid="ignore"):
        dense = np.array(stored, dtype=np.float32)
    bad = ~np.isfinite(dense)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        value = stored[r, c]
        if not np.isfinite(value):
            raise InputError(f"window {window} row {row0 + r}: dense features hold NaN or Inf")
        raise InputError(f"window {window} row {row0 + r}: dense feature {ds.meta.dense_names[c]!r} is "
                         f"{float(value):g}, beyond float32's range (|x| <= 3.4e38) in which the model reads it")
    return dense


def iter_batches(
    ds: Dataset,
    windows: list[int],
    batch_size: int = 2048,
    shuffle: bool = False,
    seed: int = 0,
    chunk_rows: int = 1 << 16,
    feature_ids: bool = False,
    span: tuple[int, int] | None = None,
) -> Iterator[Batch]:
    """Yield batches over `windows` in order (or shuffled by chunk, then by row within a chunk);
    with `feature_ids`, each batch also carries `Batch.ids` (see `Batch.ids_for`). `span=(a, b)`
    yields only batches a..b-1 of the unshuffled sequence (a rank's slice, lowprec.distributed),
    cut exactly where the whole sequence is cut; chunks outside it are not read."""
    if span is not None and shuffle:
        raise ValueError("span selects batches of the unshuffled order")
    first, last = span if span is not None else (0, None)
    seen = 0  # batches before the current chunk
    hotness = tuple(ds.meta.hotness)
    chunks = [
        (w, start)
        for w in windows
        for start in range(0, ds.meta.window(w).rows, chunk_rows)
    ]
    rng = np.random.default_rng(seed)
    if shuffle:
        rng.shuffle(chunks)
    for w, start in chunks:
        n_batches = -(-min(chunk_rows, ds.meta.window(w).rows - start) // batch_size)
        lo, seen = seen, seen + n_batches
        if seen <= first or (last is not None and lo >= last):
            continue
        dense_m, sparse_m, labels_m = ds.arrays(w)
        stop = min(start + chunk_rows, len(labels_m))
        dense = _dense_float32(ds, w, start, dense_m[start:stop])
        sparse = np.array(sparse_m[start:stop], dtype=np.int64)
        labels = np.array(labels_m[start:stop])
        _check_chunk(ds, w, start, sparse, labels)
        # the chunk's ids regrouped table by table once: a batch's FeatureIds is then one copy
        table_major = TableMajor(sparse_m[start:stop], hotness) if feature_ids else None
        order = rng.permutation(len(labels)) if shuffle else None
        for k, b in enumerate(range(0, len(labels), batch_size)):
            if not first <= lo + k < (last if last is not None else seen):
                continue
            idx = slice(b, b + batch_size) if order is None else order[b : b + batch_size]
            yield Batch(
                torch.from_numpy(np.ascontiguousarray(dense[idx])),
                torch.from_numpy(np.ascontiguousarray(sparse[idx])),
                torch.from_numpy(labels[idx].astype(np.float32)),
                w,
                table_major.take(idx) if table_major is not None else None,
                start + b if order is None else -1,
            )


def count_batches(ds: Dataset, windows: list[int], batch_size: int, chunk_rows: int = 1 << 16) -> list[int]:
    """Per window, how many batches `iter_batches` yields for it (in order)."""
    out = []
    for w in windows:
        rows = ds.meta.window(w).rows
        out.append(sum(-(-min(chunk_rows, rows - s) // batch_size) for s in range(0, rows, chunk_rows)))
    return out


def batch_sizes(ds: Dataset, windows: list[int], batch_size: int, max_rows: int | None = None,
                chunk_rows: int = 1 << 16) -> list[int]:
    """Rows of each batch `iter_batches` yields, in order; with max_rows, the batches a reader that
    stops once it has seen max_rows rows takes."""
    out, seen = [], 0
    for w in windows:
        rows = ds.meta.window(w).rows
        for s in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - s)
            for b in range(0, n, batch_size):
                if max_rows is not None and seen >= max_rows:
                    return out
                out.append(min(batch_size, n - b))
                seen += out[-1]
    return out


def count_rows(ds: Dataset, windows: list[int]) -> int:
    return sum(ds.meta.window(w).rows for w in windows)
