"""A batch's categorical ids in the layout FBGEMM's table-batched embedding kernel reads.

lowprec's batches hold ids as a (B, slots) matrix: row b is one sample, table t owns `hotness[t]`
consecutive slots, PAD_ID (-1) marks an empty multi-hot slot. FBGEMM's TBE wants them table-major:
all of table 0's ids (sample by sample), then table 1's, ..., as int32 `indices` with int32
`offsets` bounding each (table, sample) bag. Going from one layout to the other is a transpose and
a cast, about 0.5 ns per id, which is 5-20% of an embedding lookup here (reports/benchmarks.md a).

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
def bag_offsets(batch: int, hotness: tuple[int, ...]) -> torch.Tensor:
    """int32 offsets of `batch` bags per table, table t's bags holding hotness[t] slots each."""
    sizes = torch.tensor(hotness, dtype=torch.int32).repeat_interleave(batch)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int32)
    torch.cumsum(sizes, 0, out=offsets[1:])
    return offsets


def transpose_ids(sparse: np.ndarray, block_rows: int = 2048) -> np.ndarray:
    """(rows, slots) integer ids -> (slots, rows) int32, in blocks of rows that stay in cache
    (0.3-0.4 ns per id here; one whole-array transpose took 0.6-1.2)."""
    out = np.empty((sparse.shape[1], sparse.shape[0]), dtype=np.int32)
    for i in range(0, sparse.shape[0], block_rows):
        out[:, i : i + block_rows] = sparse[i : i + block_rows].T
    return out


@dataclass(frozen=True)
class FeatureIds:
    """Ids table-major: indices int32 (sum_t batch * hotness[t],), offsets int32 (T * batch + 1,)."""

    indices: torch.Tensor
    offsets: torch.Tensor
    batch: int
    hotness: tuple[int, ...]

    @classmethod
    def from_columns(cls, columns: np.ndarray, hotness: tuple[int, ...]) -> "FeatureIds":
        """From int32 ids slot-major, (slots, B) as `transpose_ids` makes them: one copy."""
        batch = int(columns.shape[1])
        if len(set(hotness)) == 1:  # one strided copy (T, h, B) -> (T, B, h)
            blocks = columns.reshape(len(hotness), hotness[0], batch).transpose(0, 2, 1)
            indices = np.ascontiguousarray(blocks).reshape(-1)
        else:  # table by table: table t's (B, h) block, then one concatenation
            parts, start = [], 0
            for h in hotness:
                parts.append(columns[start : start + h].T.reshape(-1))
                start += h
            indices = np.concatenate(parts)
        return cls(torch.from_numpy(indices), bag_offsets(batch, hotness), batch, hotness)

    @classmethod
    def from_matrix(cls, sparse: torch.Tensor | np.ndarray, hotness: tuple[int, ...]) -> "FeatureIds":
        """From a (B, slots) id matrix (any integer dtype)."""
        return cls.from_columns(transpose_ids(np.asarray(sparse)), hotness)

    def table(self, t: int) -> torch.Tensor:
        """Table t's ids as a (B, hotness[t]) int32 view."""
        start = self.batch * sum(self.hotness[:t])
        return self.indices[start : start + self.batch * self.hotness[t]].view(self.batch, self.hotness[t])

    def to_matrix(self) -> torch.Tensor:
        """Back to the (B, slots) int64 matrix."""
        return torch.cat([self.table(t).long() for t in range(len(self.hotness))], dim=1)
