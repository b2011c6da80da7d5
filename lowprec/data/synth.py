"""Synthetic Criteo-shaped data with a learnable hidden ground truth and controlled drift.

Shape: 13 dense features `int_0..int_12` (log1p of Poisson counts, as model-ready as preprocessed
Criteo) and 26 sparse features `cat_0..cat_25` whose table sizes are the Criteo Kaggle cardinalities
times `scale` (floor 2). Ids are Zipf-distributed over ranks, and the ranks are mapped to ids through a
random permutation per table, so the hot ids are not the low ids. The last `RESERVED_SHARE` of every
table is reserved: no window uses it unless the `new-ids` drift is on, so windows before the drift are
byte-identical whatever the drift kind.

Labels come from a hidden logistic model: base logit (solved for a click rate of `BASE_RATE`) + a
per-id latent weight per table + a linear term in the dense features + three sparse x sparse and one
dense x sparse pairwise interaction. Its own AUC (the "oracle AUC", recorded per window in provenance)
is about 0.78, so a DLRM can learn most of it.

Drift from window `drift_start` (default windows // 2) on:
  popularity  - the Zipf ranks are re-permuted: the hot set of ids moves;
  new-ids     - a growing share (20% per window, at most 80%) of ids comes from the reserved part;
  dense-scale - the dense features are written DENSE_SCALE_FACTOR times larger (labels still follow
                the unscaled values: a unit change upstream, not a change in user behaviour);
  ctr         - the base logit moves by CTR_LOGIT_SHIFT (click rate ~0.25 -> ~0.38).
popularity and new-ids also move the click rate a little (by a seed-dependent few points): the newly
frequent ids bring their own latent weights. dense-scale and ctr leave everything else unchanged.

Determinism: the ground truth is drawn from SeedSequence(seed, spawn_key=(0, ...)); chunk c of window w
from SeedSequence(seed, spawn_key=(1, w, c)), so windows are independent and the same arguments give
the same bytes. Windows are written in chunks of CHUNK_ROWS, so memory does not grow with the window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data.dataset import DatasetMeta, DatasetWriter, SparseFeature
from lowprec.errors import InputError
from lowprec.progress import Stages

KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
N_DENSE = 13
DENSE_NAMES = [f"int_{i}" for i in range(N_DENSE)]
SPARSE_NAMES = [f"cat_{i}" for i in range(len(KAGGLE_CARDINALITIES))]
DRIFTS = ("none", "popularity", "new-ids", "dense-scale", "ctr")
RESERVED_SHARE = 0.2
BASE_RATE = 0.25
DENSE_SCALE_FACTOR = 3.5
CTR_LOGIT_SHIFT = 0.75
NEW_ID_STEP, NEW_ID_MAX = 0.2, 0.8
SPARSE_PAIRS = ((0, 4), (6, 14), (9, 17))  # tables whose latent factors multiply
DENSE_SPARSE_PAIR = (1, 12)  # dense feature x table factor
CHUNK_ROWS = 1 << 16
FIRST_DAY = dt.date(2024, 1, 1)
_AUC_BINS = 2048


@dataclass(frozen=True)
class SynthConfig:
    windows: int = 8
    rows_per_window: int = 100_000
    seed: int = 0
    scale: float = 0.001
    drift: str = "none"
    drift_start: int | None = None  # None: windows // 2

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise InputError(f"--windows must be >= 1, got {self.windows}")
        if self.rows_per_window < 1:
            raise InputError(f"--rows-per-window must be >= 1, got {self.rows_per_window}")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")
        if not 0 < self.scale <= 4:
            raise InputError(f"--scale must be in (0, 4], got {self.scale}")
        if self.drift not in DRIFTS:
            raise InputError(f"--drift {self.drift!r}: choose one of {', '.join(DRIFTS)}")
        if self.drift_start is not None and not 0 <= self.drift_start < self.windows:
            raise InputError(f"--drift-start must be in [0, {self.windows - 1}], got {self.drift_start}")

    @property
    def start(self) -> int:
        return self.windows // 2 if self.drift_start is None else self.drift_start

    def drifted(self, window: int) -> bool:
        return self.drift != "none" and window >= self.start

    def cardinalities(self) -> list[int]:
        return [max(2, int(round(c * self.scale))) for c in KAGGLE_CARDINALITIES]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "drift_start": self.start}


def zipf_ranks(u: np.ndarray, n: int, a: float) -> np.ndarray:
    """Ranks in [0, n) with P(rank r) ~ (r + 1) ** -a, by inverting the continuous power-law CDF."""
    x = (((n + 1.0) ** (1.0 - a) - 1.0) * u + 1.0) ** (1.0 / (1.0 - a))
    return np.minimum(x.astype(np.int64) - 1, n - 1)


class _Table:
    """One table's hidden truth: Zipf exponent, rank -> id permutations, latent weights."""

    def __init__(self, cfg: SynthConfig, t: int, n: int, scale: float):
        self.n = n
        self.n_res = max(1, int(n * RESERVED_SHARE))
        self.n_base = n - self.n_res
        rng = _rng(cfg.seed, 0, t)
        self.a = float(rng.uniform(1.05, 1.3))
        self.perm = rng.permutation(self.n_base).astype(np.int32)
        self.perm_res = (self.n_base + rng.permutation(self.n_res)).astype(np.int32)
        self.weight = (scale * rng.standard_normal(n)).astype(np.float32)
        self.perm_pop = _rng(cfg.seed, 0, t, 1).permutation(self.n_base).astype(np.int32) \
            if cfg.drift == "popularity" else None
        self.factor = _rng(cfg.seed, 0, t, 2).standard_normal(n).astype(np.float32)

    def sample(self, rng: np.random.Generator, rows: int, popularity: bool, new_share: float) -> np.ndarray:
        perm = self.perm_pop if popularity else self.perm
        ids = perm[zipf_ranks(rng.random(rows), self.n_base, self.a)]
        if new_share > 0:
            fresh = rng.random(rows) < new_share
            ids = np.where(fresh, self.perm_res[zipf_ranks(rng.random(rows), self.n_res, self.a)], ids)
        return ids


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class GroundTruth:
    """The hidden model that draws rows and their click probabilities."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        rng = _rng(cfg.seed, 0, 10_000)
        scales = 0.22 * rng.uniform(0.5, 1.5, len(KAGGLE_CARDINALITIES))
        self.tables = [_Table(cfg, t, n, s) for t, (n, s) in enumerate(zip(cfg.cardinalities(), scales))]
        self.mu = rng.uniform(-0.5, 1.5, N_DENSE)
        self.sigma = rng.uniform(0.4, 1.0, N_DENSE)
        self.beta = rng.normal(0.0, 0.3, N_DENSE)
        self.gamma = 0.35
        self.center = np.zeros(N_DENSE)
        self.center = self.draw(_rng(cfg.seed, 2), 20_000, window=-1)[0].mean(axis=0)
        z = self.draw(_rng(cfg.seed, 2), 20_000, window=-1)[2]
        self.base_logit = _solve_base(z, BASE_RATE)

    def draw(self, rng: np.random.Generator, rows: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true dense, ids, logit without the base term) for `rows` rows of `window`."""
        cfg = self.cfg
        drifted = window >= 0 and cfg.drifted(window)
        popularity = drifted and cfg.drift == "popularity"
        share = min(NEW_ID_MAX, NEW_ID_STEP * (window - cfg.start + 1)) if drifted and cfg.drift == "new-ids" else 0.0
        ids = np.empty((rows, len(self.tables)), dtype=np.int32)
        z = np.zeros(rows)
        for t, tab in enumerate(self.tables):
            ids[:, t] = tab.sample(rng, rows, popularity, share)
            z += tab.weight[ids[:, t]]
        lam = np.exp(self.mu + self.sigma * rng.standard_normal((rows, N_DENSE)))
        dense = np.log1p(rng.poisson(lam)).astype(np.float64)
        z += (dense - self.center) @ self.beta
        for a, b in SPARSE_PAIRS:
            z += self.gamma * self.tables[a].factor[ids[:, a]] * self.tables[b].factor[ids[:, b]]
        j, t = DENSE_SPARSE_PAIR
        z += self.gamma * (dense[:, j] - self.center[j]) * self.tables[t].factor[ids[:, t]]
        return dense, ids, z

    def chunk(self, window: int, c: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(written dense, ids, labels, click probabilities) of chunk `c` of `window`."""
        rng = _rng(self.cfg.seed, 1, window, c)
        dense, ids, z = self.draw(rng, rows, window)
        logit = self.base_logit + z
        if self.cfg.drifted(window) and self.cfg.drift == "ctr":
            logit += CTR_LOGIT_SHIFT
        p = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(rows) < p).astype(np.int32)
        if self.cfg.drifted(window) and self.cfg.drift == "dense-scale":
            dense = dense * DENSE_SCALE_FACTOR
        return dense.astype(np.float32), ids, labels, p


def _solve_base(z: np.ndarray, rate: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(mid + z)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _auc_from_hist(pos: np.ndarray, neg: np.ndarray) -> float | None:
    p_tot, n_tot = pos.sum(), neg.sum()
    if p_tot == 0 or n_tot == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (p_tot * n_tot))


def generate(cfg: SynthConfig, root: str | Path,
             progress: Stages | None = None) -> DatasetMeta:
    """Write the synthetic dataset described by `cfg` into `root` (normally an `atomic_dir` temp dir)."""
    truth = GroundTruth(cfg)
    sizes = [t.n for t in truth.tables]
    writer = DatasetWriter(root, DENSE_NAMES, [SparseFeature(n, s) for n, s in zip(SPARSE_NAMES, sizes)])
    stats = []
    update = progress("synth", cfg.windows * cfg.rows_per_window, "rows") if progress else None
    for w in range(cfg.windows):
        day = FIRST_DAY + dt.timedelta(days=w)
        ww = writer.window(label=day.isoformat(), start=f"{day.isoformat()}T00:00:00Z",
                           end=f"{(day + dt.timedelta(days=1)).isoformat()}T00:00:00Z")
        pos, neg = np.zeros(_AUC_BINS), np.zeros(_AUC_BINS)
        for c, r0 in enumerate(range(0, cfg.rows_per_window, CHUNK_ROWS)):
            rows = min(CHUNK_ROWS, cfg.rows_per_window - r0)
            dense, ids, labels, p = truth.chunk(w, c, rows)
            ww.append(dense, ids, labels)
            bins = np.minimum((p * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
            pos += np.bincount(bins[labels == 1], minlength=_AUC_BINS)
            neg += np.bincount(bins[labels == 0], minlength=_AUC_BINS)
            if update is not None:
                update(rows)
        writer.add_window(ww)
        stats.append({"label_rate": round(float(pos.sum() / cfg.rows_per_window), 6),
                      "oracle_auc": _round(_auc_from_hist(pos, neg))})
    writer.provenance.update({
        "source": "synthetic",
        "generator": "lowprec data synth",
        "config": cfg.to_json(),
        "cardinalities": sizes,
        "reserved_ids_from": [t.n_base for t in truth.tables],
        "ground_truth": {"base_rate": BASE_RATE, "base_logit": round(truth.base_logit, 6),
                         "dense_scale_factor": DENSE_SCALE_FACTOR, "ctr_logit_shift": CTR_LOGIT_SHIFT},
        "window_stats": stats,
    })
    return writer.finish()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
