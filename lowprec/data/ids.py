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

Ids enter as any integer array; each must fit int32 (FBGEMM's index type). Building the layout from
a wider or non-integer array checks every id first (int32 input, the loader's, needs no pass), so
2**32 + 5 never wraps into id 5, 2**32 - 1 into a -1 pad, nor 1.5 into id 1: `IdOutOfRange` names
the table, the id and its batch row. `FeatureIds.check` validates a hand-built FeatureIds' layout
where it enters the runtime (dtypes, sizes, the fixed-slot offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from lowprec.errors import InputError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class IdOutOfRange(InputError):
    """An id outside its table, or not an int32 integer (the CLI's exit 2; TorchScript raises it as
    RuntimeError)."""


class BadFeatureIds(InputError, ValueError):
    """A FeatureIds whose layout is not the one the runtime reads (dtypes, sizes, offsets)."""


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
    def from_matrix(cls, sparse: torch.Tensor | np.ndarray, hotness: tuple[int, ...],
                    names: tuple[str, ...] | None = None) -> "FeatureIds":
        """From a (B, slots) id matrix (any integer dtype; every id must fit int32, else
        `IdOutOfRange` naming the table (`names[t]`, or its index), the id and its batch row)."""
        return TableMajor(np.asarray(sparse), hotness, names=names).take(slice(None))

    def check(self) -> None:
        """Raise `BadFeatureIds` unless this is the layout `from_matrix` builds: int32 indices of
        batch * sum(hotness) ids, int32 offsets of the fixed-slot bags. O(1) for the loader's
        offsets (the shared `bag_offsets`), else one compare over T * batch + 1 offsets."""
        n, want = self.batch * sum(self.hotness), len(self.hotness) * self.batch + 1
        idx, off = self.indices, self.offsets
        if idx.dtype != torch.int32 or idx.dim() != 1 or idx.numel() != n or not idx.is_contiguous():
            raise BadFeatureIds(f"FeatureIds indices are {idx.dtype} of shape {tuple(idx.shape)}; a batch of "
                                f"{self.batch} over hotness {list(self.hotness)} needs int32 ({n},) "
                                f"(build them with FeatureIds.from_matrix)")
        if off.dtype != torch.int32 or off.dim() != 1 or off.numel() != want:
            raise BadFeatureIds(f"FeatureIds offsets are {off.dtype} of shape {tuple(off.shape)}; a batch of "
                                f"{self.batch} over {len(self.hotness)} tables needs int32 ({want},)")
        ref = bag_offsets(self.batch, self.hotness)
        if off.data_ptr() != ref.data_ptr() and not torch.equal(off, ref):
            bag = int((off != ref).nonzero()[0, 0])
            raise BadFeatureIds(f"FeatureIds offsets[{bag}] is {int(off[bag])}, not {int(ref[bag])}: the runtime "
                                f"reads fixed-slot bags (table t's bags hold hotness[t] slots, -1 pads); build "
                                f"them with FeatureIds.from_matrix")

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

    def __init__(self, sparse: np.ndarray, hotness: tuple[int, ...], block_rows: int = 1024,
                 names: tuple[str, ...] | None = None):
        rows, self.hotness = sparse.shape[0], tuple(hotness)
        if sparse.ndim != 2 or sparse.shape[1] != sum(self.hotness):
            raise BadFeatureIds(f"id matrix of shape {sparse.shape}; hotness {list(self.hotness)} reads "
                                f"(batch, {sum(self.hotness)}) ids")
        if sparse.dtype.kind not in "iu" or not np.can_cast(sparse.dtype, np.int32, "safe"):  # int64, floats, ...
            _check_int32(sparse, self.hotness, names, block_rows)
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
            # a view when `rows` is everything; a one-row batch reshapes to a strided view (one id a
            # table, `rows` apart), which the runtime refused as not contiguous: copied then
            indices = np.ascontiguousarray(self.uniform[:, rows].reshape(-1))
        else:
            indices = np.concatenate([t[rows].reshape(-1) for t in self.tables])
        batch = indices.size // max(sum(self.hotness), 1)
        return FeatureIds(torch.from_numpy(indices), bag_offsets(batch, self.hotness), batch, self.hotness)


def _check_int32(sparse: np.ndarray, hotness: tuple[int, ...], names: tuple[str, ...] | None,
                 block_rows: int) -> None:
    """Every id of `sparse` is an integer within int32, else IdOutOfRange naming the first bad one
    (a min and a max per block of rows). Float ids are refused as the runtime refuses them, naming
    the first one that is not an integer (or the first); bools and other dtypes by their dtype."""
    kind, what = sparse.dtype.kind, "integer ids in int32 (-1 pads)"
    if kind not in "iuf" or sparse.size == 0 and kind == "f":
        raise IdOutOfRange(f"ids are {sparse.dtype}; FeatureIds take {what}")
    for i in range(0, sparse.shape[0], block_rows):
        block = sparse[i : i + block_rows]
        if block.size == 0:
            continue
        if kind != "f":
            if int(block.min()) >= INT32_MIN and int(block.max()) <= INT32_MAX:
                continue
            bad, why = (block < INT32_MIN) | (block > INT32_MAX), f"does not fit int32 ({INT32_MIN}..{INT32_MAX})"
        else:
            with np.errstate(invalid="ignore"):
                bad = ~(block == np.trunc(block)) | (block < INT32_MIN) | (block > INT32_MAX)  # NaN: bad
            bad = bad if bad.any() else np.ones(block.shape, dtype=bool)
            why = f"is {sparse.dtype}, not an integer dtype"
        row, col = (int(x[0]) for x in np.nonzero(bad))
        t = int(np.searchsorted(np.cumsum(hotness), col, side="right"))
        table = f"table {names[t]!r}" if names else f"table {t}"
        raise IdOutOfRange(f"{table}: id {block[row, col].item()!r} (batch row {i + row}, id column {col}) "
                           f"{why}; FeatureIds take {what}")
