"""Streaming mini-batches from a prepared dataset.

Memory stays bounded by one chunk whatever the window size: windows are memory-mapped and read in
chunks of `chunk_rows`. Training shuffles the order of chunks (across all chosen windows) and the rows
inside each chunk, from a seeded generator, so a seed fixes the order exactly.
Every batch's ids are checked against num_embeddings; an out-of-range id is an InputError naming the
window, row, feature and value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from lowprec.data.dataset import PAD_ID, Dataset
from lowprec.errors import InputError


@dataclass
class Batch:
    dense: torch.Tensor  # float32 (B, n_dense)
    sparse: torch.Tensor  # int64 (B, slots), PAD_ID where a multi-hot slot is empty
    labels: torch.Tensor  # float32 (B,)
    window: int

    def __len__(self) -> int:
        return self.labels.shape[0]


def _check_chunk(ds: Dataset, window: int, row0: int, dense, sparse, labels) -> None:
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
    if not np.isfinite(dense).all():
        r = int(np.argwhere(~np.isfinite(dense))[0][0])
        raise InputError(f"window {window} row {row0 + r}: dense features hold NaN or Inf")
    if not np.isin(labels, (0, 1)).all():
        r = int(np.argwhere(~np.isin(labels, (0, 1)))[0][0])
        raise InputError(f"window {window} row {row0 + r}: label {labels[r]} is not 0 or 1")


def iter_batches(
    ds: Dataset,
    windows: list[int],
    batch_size: int = 2048,
    shuffle: bool = False,
    seed: int = 0,
    chunk_rows: int = 1 << 16,
) -> Iterator[Batch]:
    """Yield batches over `windows` in order (or shuffled by chunk, then by row within a chunk)."""
    chunks = [
        (w, start)
        for w in windows
        for start in range(0, ds.meta.window(w).rows, chunk_rows)
    ]
    rng = np.random.default_rng(seed)
    if shuffle:
        rng.shuffle(chunks)
    for w, start in chunks:
        dense_m, sparse_m, labels_m = ds.arrays(w)
        stop = min(start + chunk_rows, len(labels_m))
        dense = np.array(dense_m[start:stop], dtype=np.float32)
        sparse = np.array(sparse_m[start:stop], dtype=np.int64)
        labels = np.array(labels_m[start:stop])
        _check_chunk(ds, w, start, dense, sparse, labels)
        order = rng.permutation(len(labels)) if shuffle else None
        for b in range(0, len(labels), batch_size):
            idx = slice(b, b + batch_size) if order is None else order[b : b + batch_size]
            yield Batch(
                torch.from_numpy(np.ascontiguousarray(dense[idx])),
                torch.from_numpy(np.ascontiguousarray(sparse[idx])),
                torch.from_numpy(labels[idx].astype(np.float32)),
                w,
            )


def count_rows(ds: Dataset, windows: list[int]) -> int:
    return sum(ds.meta.window(w).rows for w in windows)
