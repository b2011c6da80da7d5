"""Every ROBE table of a model looked up and trained together, with the update fused into backward.

ROBE-Z (lowprec.model.sharing): element i of value x in table e is
    M[(o(e, x, i // Z) + i mod Z) mod |M|] * s(e, x, i // Z),
o = h mod |M| (exact) or Z * (h mod |M|/Z) (aligned). The per-table module gathers one element per
(sample, output element) through an EmbeddingBag(|M|, 1): B * D one-wide bags per table, a sparse
gradient of B * D * hotness one-element rows, and SparseAdam sorting them: 7-14x slower than a dense
table. Here all robe tables of a batch share one pass:

- one vectorised hash of every (table, chunk) column (`BatchedIdMaps`), giving block starts o and signs;
- forward: gather the (n, Z) blocks of all tables at once, sum them into their bags;
- backward, fused (as FBGEMM's TBE does): scatter-add the block gradients into a dense scratch
  vector, then for every touched element g = scratch[j]:
      state[j] += g^2,   M[j] -= lr * g / (sqrt(state[j]) + eps)
  i.e. FBGEMM's EXACT_ROWWISE_ADAGRAD with one-element rows (M's elements are the rows an exact
  ROBE block straddles). Duplicate indices compute and write identical values, so the update
  needs no sort. Optimizer state: one float per element of M (4 |M| bytes).

The live array is a copy of the model's; `write_back` copies it into the model's RobeArray.
"""

from __future__ import annotations

import torch
from torch import nn

from lowprec.model.sharing import RobeArray, RobeBag
from lowprec.training.id_maps import BatchedIdMaps, FeatureSpec


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hook, owner, starts, weights, bag_of, nbags):  # noqa: D102
        blocks = owner.blocks().index_select(0, starts)  # (n, Z): one contiguous block per id
        if weights is not None:
            blocks = blocks * weights[:, None]
        out = torch.zeros(nbags, owner.z, dtype=blocks.dtype)
        out.index_add_(0, bag_of, blocks)
        ctx.owner = owner
        ctx.save_for_backward(starts, weights if weights is not None else torch.empty(0), bag_of)
        ctx.weighted = weights is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        starts, weights, bag_of = ctx.saved_tensors
        grad = grad_out.index_select(0, bag_of)
        if ctx.weighted:
            grad = grad * weights[:, None]
        # sum the gradients of repeated blocks first (Zipf ids repeat): fewer element updates
        unique, inverse = torch.unique(starts, return_inverse=True)
        summed = torch.zeros(len(unique), grad.shape[1], dtype=grad.dtype).index_add_(0, inverse, grad)
        elems = torch.remainder(unique[:, None] + ctx.owner.offsets, ctx.owner.size)
        ctx.owner.update(elems.reshape(-1), summed.reshape(-1))
        return None, None, None, None, None, None


class RobeBatched(nn.Module):
    """The model's robe tables (sources `logical`) trained as one; forward -> (B, n_tables, D)."""

    def __init__(self, array: RobeArray, bags: list[RobeBag], logical: list[int], hotness: list[int],
                 lr: float, eps: float = 1e-8, init: float = 0.0):
        super().__init__()
        self.array, self.z, self.size, self.lr, self.eps = array, array.z, array.size, lr, eps
        self.dim = bags[0].member.dim
        feats, mult = [], []
        for t, bag in zip(logical, bags):
            m = bag.member
            rows = self.size // self.z if m.align else self.size
            for k in range(m.dim // self.z):
                feats.append(FeatureSpec(t, "hash", m.table, k, array.seed, rows, sign=m.sign))
                mult.append(self.z if m.align else 1)
        self.ids = BatchedIdMaps(feats, hotness)
        self.mult = torch.tensor(mult, dtype=torch.int64)
        self.tables = len(bags)
        # M followed by a copy of its first Z - 1 elements, so the block at any start o is the
        # contiguous slice [o, o + Z): `blocks()` views every block as a row, without copying
        flat = array.weight.detach().reshape(-1)
        self._ext = torch.cat([flat, flat[: self.z - 1]])
        self.weight = self._ext[: self.size]
        self.state = torch.full_like(self.weight, init)  # Adagrad accumulators (fused_tables: init)
        self._scratch = torch.zeros_like(self.weight)
        self._hook = torch.zeros(1, requires_grad=True)  # makes autograd call the fused backward
        self.offsets = torch.arange(self.z)

    def blocks(self) -> torch.Tensor:
        """(|M|, Z) overlapping rows: row o is the block starting at element o (wrapping)."""
        return self._ext.as_strided((self.size, self.z), (1, 1))

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        batch = sparse.shape[0]
        idx, offsets, weights = self.ids(sparse)
        nbags = self.ids.num_features * batch
        bag_of = torch.repeat_interleave(torch.arange(nbags), offsets.diff())
        starts = idx * self.mult.index_select(0, torch.div(bag_of, batch, rounding_mode="floor"))
        out = _Lookup.apply(self._hook, self, starts, weights, bag_of, nbags)  # (F * B, Z)
        chunks = self.dim // self.z
        return out.view(self.tables, chunks, batch, self.z).permute(2, 0, 1, 3).reshape(
            batch, self.tables, self.dim)

    @torch.no_grad()
    def update(self, elems: torch.Tensor, grad: torch.Tensor) -> None:
        """Row-wise Adagrad over one-element rows for the touched elements (duplicates allowed)."""
        # index_select / index_copy_, not x[idx] (aten::index / index_put_: 3-5x slower here)
        self._scratch.index_add_(0, elems, grad)
        g = self._scratch.index_select(0, elems)
        state = self.state.index_select(0, elems).addcmul_(g, g)
        step = g.div_(state.sqrt().add_(self.eps)).mul_(self.lr)
        self.weight.index_copy_(0, elems, self.weight.index_select(0, elems).sub_(step))
        self.state.index_copy_(0, elems, state)
        self._scratch.index_fill_(0, elems, 0.0)
        self._ext[self.size:] = self.weight[: self.z - 1]  # keep the wrap-around copy current

    @torch.no_grad()
    def write_back(self) -> None:
        self.array.weight.copy_(self.weight.view_as(self.array.weight))

    def state_bytes(self) -> int:
        return self.state.numel() * self.state.element_size()
