"""Deterministic universal hashing of (table, id, chunk) for hash-sharing embeddings.

Family ("cw61", Carter & Wegman 1979): for every (table, chunk, purpose) an independent member

    h(x) = (a * x + b) mod p,   p = 2^61 - 1 (a Mersenne prime),   a in [1, p), b in [0, p)

is drawn, so hashes of different chunks (ROBE-Z blocks) or purposes (row vs sign) are independent,
and any two distinct ids collide in one of them with probability ~1/m after `mod m`.

- The coefficients come from splitmix64 (Steele et al. 2014) over the words (seed, table, chunk,
  purpose), computed on Python integers, so they are exact and identical on every machine.
- `a * x mod p` is computed on int64 tensors without overflow: both factors are split into 31-bit
  limbs, every partial product stays below 2^62, and 2^61 = 1 (mod p) folds the high parts back.
  No step relies on wrapping signed arithmetic, so results are the same on every CPU and build.
- An id is hashed as its uint64 bit pattern reduced mod p (ids are >= 0 in practice, < 2^61).
- A table is named by a stable id (`table_id(name)`: the first 8 bytes of sha256(name) mod p), so
  hashes do not depend on the order of tables in a model.

Pure functions: tensors in, tensors out; no modules, no I/O.
"""


import hashlib
from collections.abc import Sequence

import torch

FAMILY = "cw61"  # recorded in deploy transforms; change it if the family ever changes
P61 = (1 << 61) - 1
DEFAULT_SEED = 20220906
MASK64 = (1 << 64) - 1

ROW = 0  # purpose: which row / offset
SIGN = 1  # purpose: +-1 sign


def splitmix64(x: int) -> int:
    """One splitmix64 step on a Python int (exact 64-bit arithmetic)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _derive(*words: int) -> int:
    state = 0
    for w in words:
        state = splitmix64(state ^ (int(w) & MASK64))
    return state


def table_id(name: str) -> int:
    """A stable integer id for a table name, in [0, p)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little") % P61


def coefficients(table: int, chunk: int, seed: int = DEFAULT_SEED, purpose: int = ROW) -> tuple[int, int]:
    """(a, b) of the family member for (table, chunk, purpose); a in [1, p), b in [0, p)."""
    a = 1 + _derive(seed, table, chunk, purpose, 0) % (P61 - 1)
    b = _derive(seed, table, chunk, purpose, 1) % P61
    return a, b


def reference_hash(x: int, table: int, chunk: int = 0, seed: int = DEFAULT_SEED, purpose: int = ROW) -> int:
    """The same hash on Python integers (slow; the specification the tensor version must match)."""
    a, b = coefficients(table, chunk, seed, purpose)
    return (a * ((int(x) & MASK64) % P61) + b) % P61


# The tensor functions below are TorchScript-compatible (the serving transforms script them), which
# cannot close over module globals: the constants are spelled as locals (p = P61 = 2^61 - 1,
# m31 = 2^31 - 1, m30 = 2^30 - 1).

def _fold(x: torch.Tensor) -> torch.Tensor:
    """x in [0, 2^63) -> x mod p (one fold plus a conditional subtraction)."""
    p = 2305843009213693951
    x = (x & p) + (x >> 61)
    return torch.where(x >= p, x - p, x)


def reduce_ids(ids: torch.Tensor) -> torch.Tensor:
    """int64 ids (read as uint64 bit patterns) -> value mod p, in [0, p)."""
    p = 2305843009213693951
    ids = ids.to(torch.int64)
    return _fold((ids & p) + ((ids >> 61) & 7))


def mulmod(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(a * x) mod p for int64 a, x in [0, p) (broadcasting), with no intermediate above 2^63."""
    p, m31, m30 = 2305843009213693951, 2147483647, 1073741823
    a0, a1 = a & m31, a >> 31
    x0, x1 = x & m31, x >> 31
    hi = a1 * x1  # < 2^60, weight 2^62 = 2 (mod p)
    mid = a0 * x1 + a1 * x0  # < 2^62, weight 2^31
    lo = a0 * x0  # < 2^62
    # mid * 2^31 = (mid >> 30) * 2^61 + (mid & (2^30-1)) * 2^31 = (mid >> 30) + (mid & ...) * 2^31
    s = 2 * hi + (mid >> 30) + ((mid & m30) << 31) + (lo & p) + (lo >> 61)
    return _fold(s)


def _params(table: int, chunks: Sequence[int], seed: int, purpose: int) -> tuple[torch.Tensor, torch.Tensor]:
    ab = [coefficients(table, c, seed, purpose) for c in chunks]
    return (torch.tensor([a for a, _ in ab], dtype=torch.int64),
            torch.tensor([b for _, b in ab], dtype=torch.int64))


def affine_hash(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a * x + b) mod p for every id x, with int64 coefficient tensors a, b broadcast against ids.
    TorchScript-compatible: the serving transforms (lowprec.serve.transforms) call it."""
    p = 2305843009213693951
    h = mulmod(a, reduce_ids(ids)) + b
    return torch.where(h >= p, h - p, h)


def hash_ids(ids: torch.Tensor, table: int, chunk: int | Sequence[int] = 0, seed: int = DEFAULT_SEED,
             purpose: int = ROW) -> torch.Tensor:
    """h(table, x, chunk) in [0, p) for every id x.

    An int `chunk` gives a tensor shaped like `ids`; a sequence of chunks gives ids.shape + (C,).
    """
    single = isinstance(chunk, int)
    a, b = _params(table, [chunk] if single else list(chunk), seed, purpose)
    h = affine_hash(ids.unsqueeze(-1), a, b)
    return h.squeeze(-1) if single else h


def hash_rows(ids: torch.Tensor, table: int, rows: int, chunk: int | Sequence[int] = 0,
              seed: int = DEFAULT_SEED) -> torch.Tensor:
    """h(table, x, chunk) mod rows: a row index in [0, rows)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    return torch.remainder(hash_ids(ids, table, chunk, seed, ROW), rows)


def sign_hash(ids: torch.Tensor, table: int, chunk: int | Sequence[int] = 0,
              seed: int = DEFAULT_SEED) -> torch.Tensor:
    """s(table, x, chunk) in {-1.0, +1.0} from an independent member (top bit of a value mod p)."""
    h = hash_ids(ids, table, chunk, seed, SIGN)
    return 1.0 - 2.0 * (h >> 60).to(torch.float32)
