"""Hash-sharing embedding backends (training side): hashing trick, QR, ROBE-Z.

SPEC grammar (TableConfig.embedding, parsed by `embedding.parse_spec`; R = parameter reduction vs a
dense n x D table, a float >= 1):

    hash:ratio=R[,seed=S]                          hashing trick: row h(e, x) mod ceil(n/R)
    qr:ratio=R                                     quotient-remainder, Q[x // c] + R[x % c]
    robe:ratio=R[,z=Z][,sign=0|1][,align=0|1][,seed=S]   ROBE-Z over one array shared by all robe tables

h is `lowprec.quant.hashing` (Carter-Wegman mod 2^61-1), e the stable id of the table's name.

- hash: one EmbeddingBag(ceil(n/R), D). Serves as one feature with a `hash` transform. Exact.
- qr (Shi et al., KDD 2020): Q has ceil(n/c) rows and R c rows; `qr_collisions` picks the c whose
  total ceil(n/c)+c is the largest not above max(2, n/R) (the smallest total, ~2 sqrt(n), when n/R
  is below that). The combination is additive, so it commutes with sum pooling over multi-hot bags:
  pooled = Q-bag + R-bag, two TBE groups summed. The paper's multiplicative (element-wise product)
  variant does not distribute over a pooled sum, so a TBE could not serve it; it is not offered.
- robe (Desai et al., MLSys 2022): one array M of |M| = Z * round(sum_t n_t D / R_t / Z) (>= Z)
  elements is shared by every robe table of the model. Element i of value x in table e is
      M[(o(e, x, i // Z) + i mod Z) mod |M|] * s(e, x, i // Z)      (s = 1 unless sign=1)
  *exact* (default, align=0): o = h mod |M|, any element offset, as in the paper;
  *aligned* (align=1):        o = Z * (h mod |M|/Z), so every block is one row of M viewed as
  (|M|/Z, Z). Z defaults to min(32, D), must divide D, and must be a multiple of 4 to deploy.
  Aligned ROBE serves on the TBE exactly: one physical table `robe.shared` (|M|/Z, Z) and per
  logical table one group of D/Z features with a `robe` transform; the sign is a per-sample weight.
  An exact (unaligned) block straddles two TBE rows, so it has no exact TBE form. Its deploy form
  (exact=False) is the aligned array closest in least squares to the trained embeddings of all
  robe tables (each row = mean of the signed blocks hashed to it); `realign` turns a model into an
  align=1 model initialised that way, to fine-tune with `lowprec.train.train(init=...)`, and
  `RobeExact` serves the exact form in plain torch. Train with align=1 to deploy without loss.

Storage of M: DLRM calls `link_shared` after building its tables. It creates one `RobeArray`
(an EmbeddingBag(|M|, 1, sparse=True), so SparseAdam trains M with sparse gradients), registers it
in the first robe table only (state-dict key `embeddings.<first>.shared.bag.weight`) and gives the
other robe tables an unregistered reference: the state dict and safetensors hold M once.
`lowprec.model.backends.load_table_module` rebuilds one table (with M) from a checkpoint.

Training: these modules' forwards are the reference (and the `--optimizer sparse-adam` path);
`lowprec train` by default trains hash, QR and aligned-ROBE tables as tables of one FBGEMM training
TBE with the id transform applied first, and exact ROBE tables together in one batched lookup
(`lowprec.training.fused_tables`, `robe_batched`), then writes the weights back into these modules.

How each backend serves (its FBGEMM form and id transforms) and post-training sharing ("hot") live
in `lowprec.serve.sharing` and `lowprec.serve.transforms`; `realign` in `lowprec.model.realign`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lowprec.errors import InputError
from lowprec.model.config import TableConfig
from lowprec.model.embedding import pad_mask
from lowprec.quant.hashing import DEFAULT_SEED, hash_ids, hash_rows, sign_hash, table_id

ROBE_KEY = "robe.shared"  # physical TBE table of the shared ROBE array
ROBE_STATE = "shared.bag.weight"  # key of M inside the owning table's state dict


def _init(weight: torch.Tensor, dim: int) -> None:
    bound = 0.1 / math.sqrt(dim)  # as DenseBag
    nn.init.uniform_(weight, -bound, bound)


def _options(table: TableConfig, kind: str, options: dict[str, str],
             allowed: dict[str, Callable]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"table {table.name!r}: `{kind}` takes options {sorted(allowed)}, got {unknown}")
    if "ratio" not in options:
        raise InputError(f"table {table.name!r}: `{kind}` needs ratio=R (parameter reduction)")
    out = {}
    for key, value in options.items():
        try:
            if "_" in value or not value.isascii():  # int() and float() read `1_6` as 16, `١٦` as 16
                raise ValueError(value)
            out[key] = allowed[key](value)
        except ValueError:
            raise InputError(f"table {table.name!r}: `{kind}` option {key}={value!r} is not valid") from None
    if not (out["ratio"] >= 1 and math.isfinite(out["ratio"])):
        raise InputError(f"table {table.name!r}: ratio must be a finite number >= 1, got {options['ratio']}")
    return out


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(value)
    return value == "1"


# --- hashing trick -----------------------------------------------------------------------------

class HashBag(nn.Module):
    """Hashing trick: id x of table e uses row h(e, x) mod m of one (m, D) table."""

    def __init__(self, name: str, num_embeddings: int, dim: int, ratio: float, seed: int = DEFAULT_SEED):
        super().__init__()
        self.table, self.seed = table_id(name), seed
        self.rows = math.ceil(num_embeddings / ratio)
        self.bag = nn.EmbeddingBag(self.rows, dim, mode="sum", sparse=True)
        _init(self.bag.weight, dim)

    def row_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return hash_rows(ids, self.table, self.rows, 0, self.seed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        safe, w = pad_mask(ids)
        return self.bag(self.row_ids(safe), per_sample_weights=w)



# --- quotient-remainder -------------------------------------------------------------------------

def qr_collisions(n: int, ratio: float) -> int:
    """c for QR: largest total ceil(n/c) + c <= max(2, n/ratio), else the smallest total."""
    cap = max(2.0, n / ratio)
    s = math.isqrt(n) + 1
    q = np.arange(1, s + 1, dtype=np.int64)
    # c <= sqrt(n), and for every Q size q the c in [ceil(n/q), ceil(n/(q-1))) closest to cap - q
    hi = np.where(q > 1, -(-n // np.maximum(q - 1, 1)) - 1, max(n, 1))
    big = np.clip(int(math.floor(cap)) - q, -(-n // q), hi)
    cands = np.unique(np.concatenate([q, big]))
    cands = cands[cands >= 1]
    totals = -(-n // cands) + cands
    fits = totals <= cap
    if fits.any():
        return int(cands[fits][np.argmax(totals[fits])])
    return int(cands[np.argmin(totals)])


class QRBag(nn.Module):
    """Embedding of x = Q[x // c] + R[x % c]; pooled = Q-bag + R-bag."""

    def __init__(self, num_embeddings: int, dim: int, ratio: float):
        super().__init__()
        self.c = qr_collisions(num_embeddings, ratio)
        self.q = nn.EmbeddingBag(-(-num_embeddings // self.c), dim, mode="sum", sparse=True)
        self.r = nn.EmbeddingBag(self.c, dim, mode="sum", sparse=True)
        for bag in (self.q, self.r):
            _init(bag.weight, dim)
            bag.weight.data /= math.sqrt(2.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        safe, w = pad_mask(ids)
        return self.q(safe // self.c, per_sample_weights=w) + self.r(safe % self.c, per_sample_weights=w)



# --- ROBE-Z -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RobeMember:
    """What the shared array needs to know about one robe table."""

    name: str
    table: int
    rows: int
    dim: int
    ratio: float
    sign: bool
    align: bool


def robe_size(target_elements: float, z: int) -> int:
    """|M|: the multiple of Z nearest the target number of elements (at least Z)."""
    return max(z, z * math.floor(target_elements / z + 0.5))


class RobeArray(nn.Module):
    """The one array M of a model's robe tables, as an EmbeddingBag(|M|, 1) for sparse gradients."""

    def __init__(self, members: list[RobeMember], z: int, seed: int, init: bool = True):
        super().__init__()
        self.members, self.z, self.seed = tuple(members), z, seed
        self.size = robe_size(sum(m.rows * m.dim / m.ratio for m in members), z)
        self.bag = nn.EmbeddingBag(self.size, 1, mode="sum", sparse=True)
        if init:
            _init(self.bag.weight, members[0].dim)

    @property
    def weight(self) -> torch.Tensor:
        return self.bag.weight

    def aligned_array(self) -> torch.Tensor:
        """(|M|/Z, Z) rows for the TBE: M itself if every table is aligned, else its projection."""
        m = self.weight.detach().reshape(-1, self.z)
        if all(x.align for x in self.members):
            return m
        return _cached_projection(self)


def robe_offsets(ids: torch.Tensor, m: RobeMember, z: int, size: int, seed: int) -> torch.Tensor:
    """ids (...) -> block start in M for each chunk, (..., D/Z)."""
    h = hash_ids(ids, m.table, range(m.dim // z), seed)
    return z * torch.remainder(h, size // z) if m.align else torch.remainder(h, size)


def robe_bags(ids: torch.Tensor, m: RobeMember, z: int, size: int, seed: int):
    """Padded ids (B, h) -> (indices into M, weights), each (B*D, h): one sum-bag per output element."""
    safe, valid = pad_mask(ids)
    b, hot = safe.shape
    off = robe_offsets(safe, m, z, size, seed)  # (B, h, C)
    idx = torch.remainder(off.unsqueeze(-1) + torch.arange(z), size).reshape(b, hot, m.dim)
    w = valid.unsqueeze(-1)
    if m.sign:
        w = w * sign_hash(safe, m.table, range(m.dim // z), seed)  # (B, h, C)
    w = w.repeat_interleave(z, dim=-1) if m.sign else w.expand(b, hot, m.dim)
    return idx.transpose(1, 2).reshape(b * m.dim, hot), w.transpose(1, 2).reshape(b * m.dim, hot)


class RobeBag(nn.Module):
    """One robe table: hashes ids into the model's shared `RobeArray` (see the module docstring)."""

    def __init__(self, name: str, num_embeddings: int, dim: int, ratio: float, z: int,
                 sign: bool, align: bool, seed: int):
        super().__init__()
        self.member = RobeMember(name, table_id(name), num_embeddings, dim, ratio, sign, align)
        self.z, self.seed = z, seed
        object.__setattr__(self, "_array", None)  # unregistered reference (registered once, in `shared`)

    def attach(self, array: RobeArray, own: bool) -> None:
        object.__setattr__(self, "_array", array)
        if own:
            self.shared = array

    @property
    def array(self) -> RobeArray:
        if self._array is None:
            raise InputError(
                f"table {self.member.name!r}: ROBE table is not linked to its shared array; build it "
                f"inside a DLRM or with lowprec.model.sharing.load_table_module")
        return self._array

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        a = self.array
        idx, w = robe_bags(ids, self.member, self.z, a.size, self.seed)
        return a.bag(idx, per_sample_weights=w).view(ids.shape[0], self.member.dim)

    def exact_runtime(self) -> "RobeExact":
        return RobeExact(self.array.weight.detach().reshape(-1).clone(), self.member, self.z, self.seed)



class RobeExact(nn.Module):
    """Frozen exact ROBE lookup in plain torch, for tables whose unaligned form a TBE cannot serve."""

    def __init__(self, array: torch.Tensor, member: RobeMember, z: int, seed: int):
        super().__init__()
        self.register_buffer("array", array.reshape(-1, 1))
        self.member, self.z, self.seed = member, z, seed

    def exact_pooled(self, ids: torch.Tensor) -> torch.Tensor:
        idx, w = robe_bags(ids, self.member, self.z, self.array.shape[0], self.seed)
        out = nn.functional.embedding_bag(idx, self.array, per_sample_weights=w, mode="sum")
        return out.view(ids.shape[0], self.member.dim)

    forward = exact_pooled


def robe_array(bags: list[RobeBag], init: bool = True) -> RobeArray:
    zs, seeds = {b.z for b in bags}, {b.seed for b in bags}
    if len(zs) > 1 or len(seeds) > 1:
        raise InputError(f"robe tables {[b.member.name for b in bags]} share one array and must use "
                         f"the same z and seed (got z {sorted(zs)}, seed {sorted(seeds)})")
    return RobeArray([b.member for b in bags], zs.pop(), seeds.pop(), init)


def link_shared(modules: nn.ModuleList) -> None:
    """Create the model's shared ROBE array: registered in the first robe table, referenced by all."""
    bags = [m for m in modules if isinstance(m, RobeBag)]
    if bags:
        array = robe_array(bags)
        for i, bag in enumerate(bags):
            bag.attach(array, own=i == 0)


_PROJECTION: dict[str, torch.Tensor] = {}  # one entry: conversion asks once per robe table


def _cached_projection(array: RobeArray) -> torch.Tensor:
    w = array.weight.detach().contiguous()
    key = hashlib.sha256(repr((array.members, array.z, array.seed)).encode()
                         + w.numpy().tobytes()).hexdigest()
    if key not in _PROJECTION:
        _PROJECTION.clear()
        _PROJECTION[key] = aligned_projection(array)
    return _PROJECTION[key]


@torch.no_grad()
def aligned_projection(array: RobeArray, batch: int = 1 << 14) -> torch.Tensor:
    """The aligned (|M|/Z, Z) array nearest (least squares over every id of every robe table) to
    the embeddings the current array gives: each row is the mean of the signed blocks mapped to it."""
    z, rows = array.z, array.size // array.z
    acc = torch.zeros(rows, z, dtype=torch.float64)
    cnt = torch.zeros(rows, dtype=torch.float64)
    weight = array.weight.detach()
    for m in array.members:
        aligned = RobeMember(m.name, m.table, m.rows, m.dim, m.ratio, m.sign, True)
        for start in range(0, m.rows, batch):
            ids = torch.arange(start, min(start + batch, m.rows)).unsqueeze(1)
            idx, w = robe_bags(ids, m, z, array.size, array.seed)
            emb = nn.functional.embedding_bag(idx, weight, per_sample_weights=w, mode="sum")
            emb = emb.view(len(ids), m.dim // z, z).double()
            target = robe_offsets(ids[:, 0], aligned, z, array.size, array.seed) // z  # (n, C)
            if m.sign:
                emb = emb * sign_hash(ids[:, 0], m.table, range(m.dim // z), array.seed).unsqueeze(-1)
            acc.index_add_(0, target.reshape(-1), emb.reshape(-1, z))
            cnt.index_add_(0, target.reshape(-1), torch.ones(target.numel(), dtype=torch.float64))
    out = weight.reshape(rows, z).clone()
    hit = cnt > 0
    out[hit] = (acc[hit] / cnt[hit, None]).to(out.dtype)
    return out


def build_hash(table: TableConfig, dim: int, options: dict[str, str]) -> nn.Module:
    o = _options(table, "hash", options, {"ratio": float, "seed": int})
    return HashBag(table.name, table.num_embeddings, dim, o["ratio"], o.get("seed", DEFAULT_SEED))


def build_qr(table: TableConfig, dim: int, options: dict[str, str]) -> nn.Module:
    return QRBag(table.num_embeddings, dim, _options(table, "qr", options, {"ratio": float})["ratio"])


def build_robe(table: TableConfig, dim: int, options: dict[str, str]) -> nn.Module:
    o = _options(table, "robe", options,
                 {"ratio": float, "z": int, "sign": _flag, "align": _flag, "seed": int})
    z = o.get("z", min(32, dim))
    if z < 1 or dim % z:
        raise InputError(f"table {table.name!r}: ROBE z={z} must divide the embedding dim {dim}")
    if o.get("align", False) and z % 4:
        raise InputError(f"table {table.name!r}: aligned ROBE needs z a multiple of 4 (FBGEMM rows), got {z}")
    return RobeBag(table.name, table.num_embeddings, dim, o["ratio"], z, o.get("sign", False),
                   o.get("align", False), o.get("seed", DEFAULT_SEED))


def unaligned_robe(config: Any) -> list[str]:
    """The tables of a DLRM config trained as ROBE without align=1: every artifact of the model serves
    a least-squares aligned projection of them (lowprec.serve.sharing.Robe), fp32 included, so no
    precision plan matches the float model there; the search and convert say so."""
    from lowprec.model.embedding import parse_spec

    out = []
    for t in config.tables:
        kind, options = parse_spec(t.embedding)
        if kind == "robe" and options.get("align", "0") != "1":
            out.append(t.name)
    return out


def unaligned_robe_warning(config: Any) -> str | None:
    """What convert and the search say about `unaligned_robe` tables (None when there are none)."""
    tables = unaligned_robe(config)
    if not tables:
        return None
    return (f"{len(tables)} table(s) ({', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}) were trained as "
            f"unaligned ROBE (no align=1): they are served as the least-squares aligned projection of the model's "
            f"ROBE array, an approximation at every precision, fp32 included, so no precision plan matches the "
            f"float model there (`lowprec eval` of an artifact against the float model measures the loss). Train "
            f"with robe:...,align=1, or fine-tune lowprec.model.realign.realign(model), to deploy them exactly")
