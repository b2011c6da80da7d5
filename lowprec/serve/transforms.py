"""Id transforms of the serving forms: one TorchScript-compatible module per transform kind.

A serving form's feature looks a physical table up after a transform of the logical ids (see
`lowprec.serve.forms`); its JSON spec, recorded in the artifact's manifest, is built here into a
module `ids (int64, valid ids only) -> (row ids, per-sample weights or None)`. The runtime and the
TorchScript export run these same modules, so every serving form exports.

    identity   x
    hash       h(e, x) mod rows                         hashing trick, hot sharing with no hot rows
    qr_q, qr_r x // c, x mod c                          quotient-remainder
    robe       h(e, x, chunk) mod rows, sign s(e, x, chunk) if sign   one chunk of aligned ROBE
    remap      buffer[x]                                hot sharing, lookup="remap"
    hot_hash   position of x in the sorted hot ids, else K + h(e, x) mod buckets   hot sharing
    tier       x's row in one tier of a tiered table by rank directories, or by its rank (rank map)
               within the tier's bounds, else -1 (lowprec.serve.tiers)

h is lowprec.quant.hashing's family; its coefficients are computed when the module is built.
`TRANSFORMS` is the one registry (a literal: nothing is added at import time).
"""


from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from lowprec.errors import InputError
from lowprec.quant.hashing import DEFAULT_SEED, FAMILY, ROW, SIGN, affine_hash, coefficients

Mapped = Tuple[torch.Tensor, Optional[torch.Tensor]]


def _int(spec: dict[str, Any], key: str, where: str, low: int = 0, default: int | None = None) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{where}: id transform {spec.get('kind')!r} needs an integer {key} >= {low}, "
                         f"got {value!r}")
    return value


def _coeffs(spec: dict[str, Any], where: str, chunk: int, purpose: int) -> torch.Tensor:
    if spec.get("family", FAMILY) != FAMILY:
        raise InputError(f"{where}: hash family {spec.get('family')!r} is not {FAMILY!r}")
    a, b = coefficients(_int(spec, "table", where), chunk, _int(spec, "seed", where, 0, DEFAULT_SEED), purpose)
    return torch.tensor([a, b], dtype=torch.int64)


class Identity(nn.Module):
    def forward(self, ids: torch.Tensor) -> Mapped:
        return ids, None


class HashRows(nn.Module):
    def __init__(self, spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str):
        super().__init__()
        self.rows = _int(spec, "rows", where, 1)
        self.register_buffer("ab", _coeffs(spec, where, 0, ROW))

    def forward(self, ids: torch.Tensor) -> Mapped:
        return torch.remainder(affine_hash(ids, self.ab[0], self.ab[1]), self.rows), None


class Quotient(nn.Module):
    def __init__(self, spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str):
        super().__init__()
        self.c = _int(spec, "c", where, 1)

    def forward(self, ids: torch.Tensor) -> Mapped:
        return torch.div(ids, self.c, rounding_mode="floor"), None


class Remainder(Quotient):
    def forward(self, ids: torch.Tensor) -> Mapped:
        return torch.remainder(ids, self.c), None


class RobeChunk(nn.Module):
    def __init__(self, spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str):
        super().__init__()
        chunk = _int(spec, "chunk", where)
        self.rows = _int(spec, "rows", where, 1)
        self.sign = bool(spec.get("sign", False))
        self.register_buffer("ab", _coeffs(spec, where, chunk, ROW))
        self.register_buffer("sign_ab", _coeffs(spec, where, chunk, SIGN))

    def forward(self, ids: torch.Tensor) -> Mapped:
        rows = torch.remainder(affine_hash(ids, self.ab[0], self.ab[1]), self.rows)
        if not self.sign:
            return rows, None
        h = affine_hash(ids, self.sign_ab[0], self.sign_ab[1])
        return rows, 1.0 - 2.0 * (h >> 60).to(torch.float32)


def _buffer(spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    name = spec.get("buffer")
    if name not in buffers:
        raise InputError(f"{where}: id transform {spec.get('kind')!r} names buffer {name!r}, which "
                         f"the artifact does not hold")
    buf = buffers[name]
    if buf.dim() != 1 or buf.dtype not in (torch.int32, torch.int64):
        raise InputError(f"{where}: buffer {name!r} must be a 1-d int32/int64 tensor, "
                         f"got {buf.dtype} of shape {tuple(buf.shape)}")
    return buf.to(torch.int64)


class Remap(nn.Module):
    def __init__(self, spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str):
        super().__init__()
        self.register_buffer("remap", _buffer(spec, buffers, where))

    def forward(self, ids: torch.Tensor) -> Mapped:
        return self.remap[ids], None


class HotHash(nn.Module):
    def __init__(self, spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str):
        super().__init__()
        self.register_buffer("hot", _buffer(spec, buffers, where))
        self.k = _int(spec, "hot", where, 1)
        if self.k != self.hot.numel():
            raise InputError(f"{where}: hot_hash says {self.k} hot ids, its buffer holds {self.hot.numel()}")
        self.buckets = _int(spec, "buckets", where, 1)
        self.register_buffer("ab", _coeffs(spec, where, 0, ROW))

    def forward(self, ids: torch.Tensor) -> Mapped:
        pos = torch.searchsorted(self.hot, ids)
        is_hot = (pos < self.k) & (self.hot[pos.clamp(max=self.k - 1)] == ids)
        cold = self.k + torch.remainder(affine_hash(ids, self.ab[0], self.ab[1]), self.buckets)
        return torch.where(is_hot, pos, cold), None


_POPCOUNT16 = torch.tensor([bin(i).count("1") for i in range(1 << 16)], dtype=torch.int32)


def popcount32(words: torch.Tensor) -> torch.Tensor:
    """Each value's set bits among its low 32 (a rank directory's member words), by the 16-bit table
    TierLookup reads too."""
    return _POPCOUNT16[words & 0xFFFF] + _POPCOUNT16[(words >> 16) & 0xFFFF]


class TierLookup(nn.Module):
    """Tier `tier` of a tiered table (lowprec.serve.tiers): the id's row in that tier, or -1 if the id
    (or a -1 pad) is not in it. Rows in id order: upper tier j reads its own rank directory; the
    cold tier (j = the number of directories) reads them all: row = x - sum of the ids below x in
    the upper tiers. Rows in rank order ("rank", "bounds"): r = rank[x], row r - bounds[j] where
    bounds[j] <= r < bounds[j + 1]; `from_ranks` takes r directly (ids already ranked upstream)."""

    dirs: List[torch.Tensor]
    ranked_layout: bool
    block: int

    def __init__(self, spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str):
        super().__init__()
        self.tier = _int(spec, "tier", where)
        self.register_buffer("popcount", _POPCOUNT16, persistent=False)
        self.ranked_layout = "rank" in spec
        self.block = spec.get("block", 16)  # 16: artifacts written before the key (lowprec.serve.tiers)
        if type(self.block) is not int or self.block not in (16, 32):
            raise InputError(f"{where}: id transform 'tier' has directory block {self.block!r}; "
                             f"this lowprec reads 16 or 32 ids a word")
        if self.ranked_layout:
            self._rank_layout(spec, buffers, where)
            return
        names = spec.get("buffers")
        if not isinstance(names, list) or not names:
            raise InputError(f"{where}: id transform 'tier' needs a non-empty list of directory buffers")
        dirs = [_buffer({"kind": "tier", "buffer": name}, buffers, where) for name in names]
        if len({d.numel() for d in dirs}) != 1:
            raise InputError(f"{where}: tier directories {names} differ in length")
        if self.tier > len(dirs):
            raise InputError(f"{where}: tier {self.tier} of a table with {len(dirs) + 1} tiers")
        self.upper = len(dirs)
        self.dirs = dirs if self.tier == self.upper else [dirs[self.tier]]
        self.register_buffer("rank", torch.zeros(0, dtype=torch.int32), persistent=False)
        self.register_buffer("bounds", torch.zeros(2, dtype=torch.int64), persistent=False)

    def _rank_layout(self, spec: dict[str, Any], buffers: dict[str, torch.Tensor], where: str) -> None:
        bounds = spec.get("bounds")
        if not (isinstance(bounds, list) and len(bounds) >= 2 and all(
                isinstance(b, int) and not isinstance(b, bool) for b in bounds)
                and bounds[0] == 0 and bounds == sorted(bounds) and self.tier < len(bounds) - 1):
            raise InputError(f"{where}: id transform 'tier' needs bounds [0, ..., rows] (ascending "
                             f"ints) covering tier {self.tier}, got {bounds!r}")
        name = spec.get("rank")
        rank = buffers.get(name) if isinstance(name, str) else None
        if rank is None or rank.dim() != 1 or rank.dtype not in (torch.int32, torch.int64) \
                or rank.numel() != bounds[-1]:
            raise InputError(f"{where}: tier rank map {name!r} must be a 1-d int32/int64 buffer of "
                             f"{bounds[-1]} ranks (the artifact holds {None if rank is None else tuple(rank.shape)})")
        self.upper = len(bounds) - 2
        self.dirs = []
        self.register_buffer("rank", rank, persistent=False)
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.int64), persistent=False)

    def from_ranks(self, ranks: torch.Tensor) -> torch.Tensor:
        """Ranks (-1 pads) -> this tier's rows, else -1 (rank-ordered tables only)."""
        lo, hi = self.bounds[self.tier], self.bounds[self.tier + 1]
        return torch.where((ranks >= lo) & (ranks < hi), ranks - lo, -1)

    def forward(self, ids: torch.Tensor) -> Mapped:
        valid = ids >= 0
        x = ids.clamp(min=0)
        if self.ranked_layout:
            r = self.rank[x].to(torch.int64)
            return torch.where(valid, self.from_ranks(r), -1), None
        shift = 5 if self.block == 32 else 4
        bit = x & (self.block - 1)
        below = (torch.ones_like(bit) << bit) - 1
        rank = torch.zeros_like(x)
        hit = torch.zeros_like(valid)
        for d in self.dirs:
            entry = d[x >> shift]
            word = entry & ((1 << self.block) - 1)
            low = word & below
            rank = rank + (entry >> self.block) + self.popcount[low & 0xFFFF] + self.popcount[low >> 16]
            hit = hit | (((word >> bit) & 1) == 1)
        if self.tier < self.upper:
            return torch.where(valid & hit, rank, -1), None
        return torch.where(valid & ~hit, x - rank, -1), None


KEEPS_PADS = ("identity", "tier")  # kinds that map -1 to -1 (the runtime's padded path)

TRANSFORMS = {
    "identity": lambda spec, buffers, where: Identity(),
    "hash": HashRows,
    "qr_q": Quotient,
    "qr_r": Remainder,
    "robe": RobeChunk,
    "remap": Remap,
    "hot_hash": HotHash,
    "tier": TierLookup,
}


def build_transform(spec: Any, buffers: dict[str, torch.Tensor], where: str = "id transform") -> nn.Module:
    """The module for one transform spec; InputError naming `where` on anything malformed."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in TRANSFORMS:
        raise InputError(f"{where}: unknown id transform {kind!r} (known: {sorted(TRANSFORMS)})")
    return TRANSFORMS[kind](spec, buffers, where)
