"""A batch's categorical ids in the layout FBGEMM's table-batched embedding kernel reads.

lowprec's batches hold ids as a (B, slots) matrix: row b is one sample, table t owns `hotness[t]`
consecutive slots, PAD_ID (-1) marks an empty multi-hot slot. FBGEMM's TBE wants them table-major:
all of table 0's ids (sample by sample), then table 1's, ..., as int32 `indices` with int32
`offsets` bounding each (table, sample) bag. Going from one layout to the other is a transpose and
a cast, 0.5-0.7 ns per id plus the cache lines it evicts: 10-50% of an embedding lookup here
(reports/benchmarks.md a).

`FeatureIds` is that second layout. The data loader builds it once per batch
(`iter_batches(..., feature_ids=True)`), as TorchRec's loaders build a KeyedJaggedTensor, so the
quantized runtime hands it to the kernel as it is. Every bag keeps its fixed number of slots, pads
included: the inference TBE skips index -1 (its pruned-row marker), which is exactly the sum over a
bag's valid ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=16)
def _bag_offsets(batch: int, hotness: tuple[int, ...]) -> np.ndarray:
    offsets = np.zeros(batch * len(hotness) + 1, dtype=np.int32)
    np.cumsum(np.repeat(np.asarray(hotness, dtype=np.int32), batch), out=offsets[1:])
    return offsets


def bag_offsets(batch: int, hotness: tuple[int, ...]) -> torch.Tensor:
    """int32 offsets of `batch` bags per table, table t's bags holding hotness[t] slots each.
    Shared between batches of one shape (read-only by convention; FBGEMM does not write it). Cached
    as numpy: a cached tensor first made under inference_mode would be an inference tensor."""
    return torch.from_numpy(_bag_offsets(batch, hotness))


@dataclass(frozen=True)
class FeatureIds:
    """Ids table-major: indices int32 (sum_t batch * hotness[t],), offsets int32 (T * batch + 1,)."""

    indices: torch.Tensor
    offsets: torch.Tensor
    batch: int
    hotness: tuple[int, ...]

    @classmethod
    def from_matrix(cls, sparse: torch.Tensor | np.ndarray, hotness: tuple[int, ...]) -> "FeatureIds":
        """From a (B, slots) id matrix (any integer dtype)."""
        return TableMajor(np.asarray(sparse), hotness).take(slice(None))

    def table(self, t: int) -> torch.Tensor:
        """Table t's ids as a (B, hotness[t]) int32 view."""
        start = self.batch * sum(self.hotness[:t])
        return self.indices[start : start + self.batch * self.hotness[t]].view(self.batch, self.hotness[t])

    def to_matrix(self) -> torch.Tensor:
        """Back to the (B, slots) int64 matrix."""
        return torch.cat([self.table(t).long() for t in range(len(self.hotness))], dim=1)


class TableMajor:
    """Ids of many rows regrouped table by table once (int32), from which batches are cut.

    The data loader builds one per chunk: the regrouping is the only strided pass (done in blocks of
    rows that stay in cache); each batch's FeatureIds is then one contiguous copy per table."""

    def __init__(self, sparse: np.ndarray, hotness: tuple[int, ...], block_rows: int = 1024):
        rows, self.hotness = sparse.shape[0], tuple(hotness)
        if len(set(self.hotness)) == 1:  # one (T, rows, h) array
            t, h = len(self.hotness), self.hotness[0]
            self.uniform: np.ndarray | None = np.empty((t, rows, h), dtype=np.int32)
            for i in range(0, rows, block_rows):
                self.uniform[:, i : i + block_rows] = sparse[i : i + block_rows].reshape(-1, t, h).transpose(1, 0, 2)
        else:  # per table a (rows, h_t) array
            self.uniform = None
            bounds = np.cumsum((0,) + self.hotness)
            self.tables = [np.empty((rows, h), dtype=np.int32) for h in self.hotness]
            for i in range(0, rows, block_rows):
                block = sparse[i : i + block_rows]
                for out, a, b in zip(self.tables, bounds, bounds[1:]):
                    out[i : i + block_rows] = block[:, a:b]

    def take(self, rows: slice | np.ndarray) -> FeatureIds:
        """The FeatureIds of `rows` (a slice, or an index array for a shuffled batch)."""
        if self.uniform is not None:
            indices = self.uniform[:, rows].reshape(-1)  # a view when `rows` is everything
        else:
            indices = np.concatenate([t[rows].reshape(-1) for t in self.tables])
        batch = indices.size // max(sum(self.hotness), 1)
        return FeatureIds(torch.from_numpy(indices), bag_offsets(batch, self.hotness), batch, self.hotness)
