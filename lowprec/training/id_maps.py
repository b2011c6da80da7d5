"""Id transforms of many features at once: the (B, slots) id matrix -> one TBE input.

A training *feature* reads the slots of one logical table and maps each id to a row of one physical
table: identity (dense), the hashing trick, QR's quotient or remainder, or one ROBE chunk (row
h(e, x, k) mod rows, optionally a sign h_s(e, x, k)). The hash is `lowprec.quant.hashing`'s family,
computed here for every hashed column in one vectorised pass (per-column coefficients), so a batch
costs a handful of tensor ops whatever the number of tables; `tests/test_train_fused.py` checks it
equals the per-table transforms of `lowprec.model.sharing` exactly.

Output layout is FBGEMM's: features in order, bags sample by sample inside a feature, `indices`
(n,), `offsets` (F * B + 1,), and `weights` (n,) when some feature carries a sign. Empty slots
(PAD_ID) are dropped, so a bag sums exactly its valid ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from lowprec.quant.hashing import DEFAULT_SEED, ROW, SIGN, affine_hash, coefficients

KINDS = ("id", "hash", "qr_q", "qr_r")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: source table `source` (its slots), transform `kind` and its parameters.

    kind "hash" is row = h(table, x, chunk) mod rows (also every ROBE chunk); `sign` adds the
    weight s(table, x, chunk); kind "qr_q"/"qr_r" use `c`."""

    source: int
    kind: str
    table: int = 0
    chunk: int = 0
    seed: int = DEFAULT_SEED
    rows: int = 0
    c: int = 0
    sign: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown feature kind {self.kind!r} (known: {KINDS})")
        if self.kind == "hash" and self.rows < 1:
            raise ValueError("hash feature needs rows >= 1")
        if self.kind in ("qr_q", "qr_r") and self.c < 1:
            raise ValueError("qr feature needs c >= 1")


_hash = affine_hash  # h = (a x + b) mod p per column, as the serving transforms compute it


class BatchedIdMaps:
    """Maps (B, slots) ids to (indices, offsets, weights | None) for a fixed list of features."""

    def __init__(self, features: list[FeatureSpec], hotness: list[int]):
        starts = [sum(hotness[:t]) for t in range(len(hotness))]
        self.features, self.hotness = list(features), [hotness[f.source] for f in features]
        cols = [starts[f.source] + j for f in features for j in range(hotness[f.source])]
        per_col = [f for f in features for _ in range(hotness[f.source])]
        self.src = torch.tensor(cols, dtype=torch.int64)
        self.identity_cols = cols == list(range(len(cols)))
        self.plain = all(f.kind == "id" and not f.sign for f in features)
        self.hash_cols = self._cols(per_col, "hash")
        self.q_cols, self.r_cols = self._cols(per_col, "qr_q"), self._cols(per_col, "qr_r")
        self.sign_cols = torch.tensor([i for i, f in enumerate(per_col) if f.sign], dtype=torch.int64)
        ab = [coefficients(f.table, f.chunk, f.seed, ROW) for f in per_col if f.kind == "hash"]
        self.a = torch.tensor([x for x, _ in ab], dtype=torch.int64)
        self.b = torch.tensor([y for _, y in ab], dtype=torch.int64)
        self.rows = torch.tensor([f.rows for f in per_col if f.kind == "hash"], dtype=torch.int64)
        self.qc = torch.tensor([f.c for f in per_col if f.kind == "qr_q"], dtype=torch.int64)
        self.rc = torch.tensor([f.c for f in per_col if f.kind == "qr_r"], dtype=torch.int64)
        sab = [coefficients(f.table, f.chunk, f.seed, SIGN) for f in per_col if f.sign]
        self.sa = torch.tensor([x for x, _ in sab], dtype=torch.int64)
        self.sb = torch.tensor([y for _, y in sab], dtype=torch.int64)

    @staticmethod
    def _cols(per_col: list[FeatureSpec], kind: str) -> torch.Tensor:
        return torch.tensor([i for i, f in enumerate(per_col) if f.kind == kind], dtype=torch.int64)

    @property
    def num_features(self) -> int:
        return len(self.features)

    def rows_and_signs(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, slots) -> (B, columns) rows, valid mask, signs (or None), columns feature by feature."""
        x = sparse if self.identity_cols and sparse.shape[1] == len(self.src) else sparse.index_select(1, self.src)
        valid = x >= 0
        safe = x.clamp_min(0)
        if self.plain:
            return safe, valid, None
        out = safe.clone()
        if len(self.hash_cols):
            h = _hash(safe.index_select(1, self.hash_cols), self.a, self.b)
            out[:, self.hash_cols] = torch.remainder(h, self.rows)
        if len(self.q_cols):
            out[:, self.q_cols] = torch.div(safe.index_select(1, self.q_cols), self.qc, rounding_mode="floor")
        if len(self.r_cols):
            out[:, self.r_cols] = torch.remainder(safe.index_select(1, self.r_cols), self.rc)
        signs = None
        if len(self.sign_cols):
            hs = _hash(safe.index_select(1, self.sign_cols), self.sa, self.sb)
            signs = torch.ones(out.shape, dtype=torch.float32)
            signs[:, self.sign_cols] = 1.0 - 2.0 * (hs >> 60).to(torch.float32)
        return out, valid, signs

    def __call__(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(indices, offsets, weights | None) in FBGEMM's feature-major bag layout."""
        rows, valid, signs = self.rows_and_signs(sparse)
        batch = rows.shape[0]
        perm, bag, dense_offsets = map(torch.from_numpy, _layout(batch, tuple(self.hotness)))
        flat = rows.reshape(-1).index_select(0, perm)
        weights = signs.reshape(-1).index_select(0, perm) if signs is not None else None
        if bool(valid.all()):
            return flat, dense_offsets, weights
        ok = valid.reshape(-1).index_select(0, perm)
        counts = torch.bincount(bag[ok], minlength=len(self.hotness) * batch)
        offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=offsets[1:])
        return flat[ok], offsets, (weights[ok] if weights is not None else None)


@lru_cache(maxsize=8)
def _layout(batch: int, hotness: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a (B, S) column matrix grouped by feature: the gather that makes it feature-major, each
    position's bag (feature * B + sample), and the offsets when no slot is empty. Cached as numpy:
    a tensor first made under inference_mode (validation) could not be saved for backward."""
    width, starts = sum(hotness), np.cumsum([0, *hotness[:-1]]) if hotness else np.zeros(0)
    perm = [(np.arange(batch)[:, None] * width + s + np.arange(h)[None, :]).reshape(-1)
            for s, h in zip(starts, hotness)]
    bag = [np.repeat(f * batch + np.arange(batch), h) for f, h in enumerate(hotness)]
    offsets = np.zeros(batch * len(hotness) + 1, dtype=np.int64)
    np.cumsum(np.repeat(np.asarray(hotness, dtype=np.int64), batch), out=offsets[1:])
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(perm).astype(np.int64) if perm else empty,
            np.concatenate(bag).astype(np.int64) if bag else empty, offsets)
