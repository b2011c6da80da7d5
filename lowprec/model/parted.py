"""A dense table stored in row-range parts, looked up part by part without joining the parts.

A float model whose table comes as row shards (`model.safetensors.index.json`, layout (c) of
lowprec.checkpoint.mapped) has one read-only mapped view per shard. Joining them would copy the
whole table into anonymous memory; `PartedBag` instead gathers each batch's distinct ids from the
part that holds them (by the row bounds) into a small table and pools it with the same
`embedding_bag` call `DenseBag` makes, so its outputs are DenseBag's bit for bit and memory grows
with the batch, not the table. `weight` (and the state dict) still join the parts, for the steps
that need the whole table at once (search's table forms, training copies); a join this process
cannot hold is an InputError naming the table and its bytes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lowprec.errors import InputError
from lowprec.model.embedding import pad_mask


class PartedBag(nn.Module):
    """DenseBag's lookups over `table`, a lowprec.checkpoint.mapped.LogicalTable (read-only views)."""

    def __init__(self, table, where: str, label: str):
        super().__init__()
        self.table, self.where, self.label = table, where, label
        self.views = [table.rows(p.lo, p.hi) for p in table.parts]
        self.bounds = torch.tensor([p.hi for p in table.parts[:-1]], dtype=torch.long)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of 1-D `ids` (each < the table's rows), gathered from the parts holding them."""
        out = torch.empty((ids.numel(), self.table.shape[1]), dtype=self.table.dtype)
        part = torch.bucketize(ids, self.bounds, right=True)
        for k, (p, view) in enumerate(zip(self.table.parts, self.views)):
            hit = part == k
            if bool(hit.any()):
                out[hit] = view[ids[hit] - p.lo]
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        safe, w = pad_mask(ids)
        if bool((safe >= self.table.shape[0]).any()) or bool((safe < 0).any()):
            raise IndexError(f"{self.table.name}: an id is outside [0, {self.table.shape[0]})")
        distinct, inverse = torch.unique(safe, return_inverse=True)
        return F.embedding_bag(inverse.reshape(safe.shape), self.rows(distinct), mode="sum",
                               per_sample_weights=w)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table, joined in memory (a copy of the table's bytes)."""
        try:
            return self.table.tensor()
        except (MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "memory" not in str(exc):
                raise
            raise InputError(f"{self.where}: table {self.label!r} ({self.table.name}) is stored in "
                             f"{len(self.views)} row shards, and this step needs it whole in memory ({self.table.nbytes:,} bytes), "
                             f"more than this process may allocate (free memory, ulimit -v / RLIMIT_DATA). "
                             f"Give it more memory, or store the table as one tensor (README \"Models "
                             f"larger than RAM\")") from None

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # the checkpoint's key, DenseBag's
        destination[prefix + "bag.weight"] = self.weight
