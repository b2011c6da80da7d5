"""The latent generator's random primitives (lowprec/data/latent.py): an exact truncated Zipf law over
ranks (rejection-inversion, Hörmann & Derflinger 1996, as in Apache Commons RNG) and standard
normals as a pure function of a key (splitmix64), so per-id parameters cost no memory."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri


class ZipfSampler:
    """Exact truncated Zipf on ranks [0, n): P(r) ∝ (r + 1) ** -a, by rejection-inversion."""

    def __init__(self, n: int, a: float):
        self.n, self.a = n, a
        self.h_x1 = float(self._big_h(np.float64(1.5))) - 1.0
        self.h_n = float(self._big_h(np.float64(n + 0.5)))
        self.s = 2.0 - float(self._big_h_inv(self._big_h(np.float64(2.5)) - self._h(np.float64(2.0))))

    def _h(self, x: np.ndarray) -> np.ndarray:
        return np.exp(-self.a * np.log(x))

    def _big_h(self, x: np.ndarray) -> np.ndarray:  # ∫ h = (x^(1-a) - 1) / (1 - a)
        log_x = np.log(x)
        return _expm1_over((1.0 - self.a) * log_x) * log_x

    def _big_h_inv(self, y: np.ndarray) -> np.ndarray:
        t = np.maximum(y * (1.0 - self.a), -1.0)
        return np.exp(_log1p_over(t) * y)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.int64)
        todo = np.arange(size)
        while todo.size:
            u = self.h_n + rng.random(todo.size) * (self.h_x1 - self.h_n)
            x = self._big_h_inv(u)
            k = np.clip(np.floor(x + 0.5), 1, self.n)
            ok = (k - x <= self.s) | (u >= self._big_h(k + 0.5) - self._h(k))
            out[todo[ok]] = k[ok].astype(np.int64) - 1
            todo = todo[~ok]
        return out


def _expm1_over(x: np.ndarray) -> np.ndarray:
    """expm1(x) / x, continuous at 0."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 + x / 2 * (1.0 + x / 3), np.expm1(safe) / safe)


def _log1p_over(x: np.ndarray) -> np.ndarray:
    """log1p(x) / x, continuous at 0."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 - x / 2 + x * x / 3, np.log1p(safe) / safe)


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def hashed_normal(salt: int, keys: np.ndarray) -> np.ndarray:
    """Standard normals as a pure function of (salt, key): splitmix64, top 53 bits, normal quantile."""
    with np.errstate(over="ignore"):
        x = np.uint64(salt) + np.asarray(keys, dtype=np.uint64) * _GOLD
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return ndtri(((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53)
