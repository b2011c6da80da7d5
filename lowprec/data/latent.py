"""Latent-factor synthetic CTR data where memorising ids matters (`lowprec data synth --kind latent`).

Shape as the dense generator (lowprec/data/synth.py): 13 dense features `int_0..int_12` (log1p of
Poisson counts) and 26 sparse features `cat_0..cat_25` sized by the Criteo Kaggle cardinalities times
`scale`. Per table, ids follow an exact truncated Zipf law over ranks, P(rank r) ∝ (r + 1) ** -zipf
(lowprec/data/sampling.py: rejection-inversion, Hörmann & Derflinger 1996), mapped to ids through a
random permutation per table so the hot ids are not the low ids.

Hidden truth: logit = b + c * (dense·β + Σ_t bias_t[id_t] + Σ_(u,i) <f_u[id_u], f_i[id_i]> / √D) with
  bias_t[id] ~ N(0, σ_t²), σ_t = BIAS_SD_LARGE on the LARGE tables (Kaggle cardinality >= 50k), else
  BIAS_SD_SMALL; D-dim factors f ~ N(0, I) on the large tables, multiplied in user-like x item-like
  PAIRS; dense·β standardised to variance DENSE_VAR. So 87% of the logit's variance (in expectation
  over ids) sits on ids, 51% on the large tables' biases alone: memorising ids matters.
Multi-hot (`hot=H`): each large table's bag holds H ids drawn independently from its Zipf law (repeats
  allowed, every slot filled, as MLPerf DLRMv2's synthetic multi-hot); the bag's bias and factor are
  the sums of its ids' parameters over √H (same variance as one id), i.e. sum pooling, so a DLRM can
  represent the truth. The small tables stay one-hot. H = 1 writes the one-hot data byte for byte.
Per-id parameters are a pure function of (seed, table, id, k) (sampling.hashed_normal: splitmix64 ->
normal quantile), so they cost no memory; only the rank -> id permutations do (4 bytes an id). The scale c
and base b are solved once, on a calibration sample of the undrifted traffic, so that the expected
positive rate is `positive_rate` and the expected Bayes AUC (the true probabilities' AUC) is `auc`.

Drift from window `drift_start` (default windows // 2) on, as in synth.py: popularity (ranks map
through a fresh permutation: other ids are hot), new-ids (a growing share, 20% a window up to 80%,
of each table's traffic goes to its reserved last 20% of ids, never drawn before), dense-scale
(dense features written x3.5, labels follow the unscaled values), ctr (base logit + 0.75).
popularity and new-ids also move the positive rate and the Bayes AUC by a few points (seed 0 at
scale 0.01: rate 0.25 -> 0.20 after a popularity drift): the newly hot ids bring their own biases.

Output: the usual windows plus `day_{i}_prob.npy` (float32, each row's true click probability) and,
per window in provenance.window_stats, the positive rate and the Bayes AUC, NE and log-loss of those
probabilities against the drawn labels (lowprec.evaluation.metrics.BinaryStats). `bayes_stats` merges them
for any set of windows, so eval and drift can show a model's distance to Bayes.
Determinism: chunk c of window w draws from SeedSequence(seed, spawn_key=(1, w, c)); the same
config gives the same bytes, windows are written in chunks, so memory does not grow with the window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lowprec.data.dataset import DatasetMeta, DatasetWriter, SparseFeature, _NpyAppender
from lowprec.data.npyfiles import read_npy
from lowprec.data.sampling import ZipfSampler, hashed_normal
from lowprec.data.synth import (CTR_LOGIT_SHIFT, DENSE_NAMES, DENSE_SCALE_FACTOR, FIRST_DAY, KAGGLE_CARDINALITIES,
                                N_DENSE, NEW_ID_MAX, NEW_ID_STEP, RESERVED_SHARE, SPARSE_NAMES, SynthConfig,
                                generate)
from lowprec.errors import InputError
from lowprec.evaluation.metrics import BinaryStats
from lowprec.progress import Stages

LARGE_TABLES = tuple(t for t, n in enumerate(KAGGLE_CARDINALITIES) if n >= 50_000)  # 2,3,9,11,15,20,23,25
PAIRS = ((2, 3), (11, 15), (20, 23), (9, 25))  # user-like x item-like tables whose factors multiply
BIAS_SD_LARGE, BIAS_SD_SMALL, DENSE_VAR = 1.0, 0.3, 2.0
CALIBRATION_ROWS = 50_000
KINDS = ("dense", "latent")
_SPEC_KEYS = {"zipf": ("zipf", float), "rate": ("positive_rate", float), "auc": ("auc", float),
              "dim": ("dim", int), "hot": ("hotness", int)}
MAX_HOTNESS = 256


@dataclass(frozen=True)
class LatentConfig(SynthConfig):
    """SynthConfig plus the truth's knobs: Zipf exponent, positive rate, Bayes AUC, factor dim D, and the
    large tables' ids per bag."""

    zipf: float = 1.1
    positive_rate: float = 0.25
    auc: float = 0.80
    dim: int = 8
    hotness: int = 1  # ids a bag on the large tables (the small tables stay one-hot)
    chunk_rows: int = 1 << 16
    calibration_rows: int = CALIBRATION_ROWS  # undrifted rows that c and b are solved on

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [(1.0 < self.zipf <= 3.0, f"zipf must be in (1, 3], got {self.zipf}"),
                  (0.01 <= self.positive_rate <= 0.99, f"rate must be in [0.01, 0.99], got {self.positive_rate}"),
                  (0.55 <= self.auc <= 0.97, f"auc must be in [0.55, 0.97], got {self.auc}"),
                  (1 <= self.dim <= 64, f"dim must be in [1, 64], got {self.dim}"),
                  (1 <= self.hotness <= MAX_HOTNESS, f"hot must be in [1, {MAX_HOTNESS}], got {self.hotness}"),
                  (self.chunk_rows >= 1, f"chunk_rows must be >= 1, got {self.chunk_rows}"),
                  (self.calibration_rows >= 1000, f"calibration_rows must be >= 1000, got {self.calibration_rows}")]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"--kind latent: {msg}")


def synth_config(kind: str, **common: Any) -> tuple[SynthConfig, Callable[..., DatasetMeta]]:
    """`--kind` SPEC (`dense`, `latent` or `latent:zipf=1.1,rate=0.25,auc=0.8,dim=8,hot=1`) -> (config, generator)."""
    name, _, rest = kind.strip().partition(":")
    if name not in KINDS:
        raise InputError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = (s.strip() for s in part.partition("="))
        if name == "dense":
            raise InputError(f"--kind {kind!r}: the dense kind takes no options")
        if not eq or key not in _SPEC_KEYS:
            raise InputError(f"--kind {kind!r}: option {part!r} is not one of {', '.join(k + '=' for k in _SPEC_KEYS)}")
        field, cast = _SPEC_KEYS[key]
        try:
            options[field] = cast(value)
        except ValueError:
            raise InputError(f"--kind {kind!r}: {key}={value!r} is not a number") from None
    if name == "dense":
        return SynthConfig(**common), generate
    return LatentConfig(**common, **options), generate_latent


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class _Table:
    """One table: its Zipf law, rank -> id permutations and per-id parameters (hashed, not stored)."""

    def __init__(self, cfg: LatentConfig, t: int, n: int):
        self.n, self.dim = n, cfg.dim
        self.n_res = max(1, int(n * RESERVED_SHARE))
        self.n_base = max(1, n - self.n_res)
        rng = _rng(cfg.seed, 0, t)
        self.salt = int(np.random.SeedSequence(cfg.seed, spawn_key=(0, t, 3)).generate_state(1, np.uint64)[0])
        self.bias_sd = BIAS_SD_LARGE if t in LARGE_TABLES else BIAS_SD_SMALL
        self.zipf, self.zipf_res = ZipfSampler(self.n_base, cfg.zipf), ZipfSampler(self.n_res, cfg.zipf)
        self.perm = rng.permutation(self.n_base).astype(np.int32)
        self.perm_res = (self.n_base + rng.permutation(self.n_res)).astype(np.int32)
        self.perm_pop = _rng(cfg.seed, 0, t, 1).permutation(self.n_base).astype(np.int32) \
            if cfg.drift == "popularity" else None

    def sample(self, rng: np.random.Generator, rows: int, popularity: bool, new_share: float) -> np.ndarray:
        perm = self.perm_pop if popularity else self.perm
        ids = perm[self.zipf.sample(rng, rows)]
        if new_share > 0:
            fresh = rng.random(rows) < new_share
            ids = np.where(fresh, self.perm_res[self.zipf_res.sample(rng, rows)], ids)
        return ids

    def params(self, ids: np.ndarray, factors: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(bias ids.shape, factors ids.shape + (D,) or None) of `ids`, hashed once per distinct id."""
        uniq, inverse = np.unique(ids.ravel(), return_inverse=True)
        keys = uniq.astype(np.uint64)[:, None] * np.uint64(self.dim + 1)
        if factors:
            keys = keys + np.arange(0, self.dim + 1, dtype=np.uint64)
        z = hashed_normal(self.salt, keys)[inverse.ravel()].reshape(*ids.shape, -1)
        return self.bias_sd * z[..., 0], (z[..., 1:] if factors else None)


def _expit(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # 1/(1+e^-x) without overflow warnings


def _solve_base(x: np.ndarray, rate: float, b: float | None = None) -> float:
    """b with mean(expit(b + x)) = rate (Newton from `b` or logit(rate); the mean is increasing in b)."""
    b = float(np.log(rate / (1 - rate))) if b is None else b
    for _ in range(100):
        p = _expit(b + x)
        f, g = p.mean() - rate, max(float((p * (1 - p)).mean()), 1e-12)
        b -= float(np.clip(f / g, -5.0, 5.0))
        if abs(f) < 1e-10:
            break
    return b


def expected_auc(p_sorted: np.ndarray) -> float:
    """Expected AUC of labels drawn as Bernoulli(p) when rows are ranked by p (ascending input)."""
    q = 1.0 - p_sorted
    neg_below = np.cumsum(q) - q
    return float((p_sorted * neg_below).sum() / (p_sorted.sum() * q.sum() - (p_sorted * q).sum()))


def calibrate(z: np.ndarray, rate: float, auc: float) -> tuple[float, float]:
    """(scale c, base b): on the sample z, mean(expit(b + c z)) = rate and the expected AUC = auc."""
    zs, last = np.sort(z), [None]

    def auc_at(c: float) -> float:
        last[0] = _solve_base(c * zs, rate, last[0])  # warm start: neighbouring c, neighbouring b
        return expected_auc(_expit(last[0] + c * zs))

    lo, hi = 0.0, 1.0
    while auc_at(hi) < auc and hi < 1e4:
        lo, hi = hi, hi * 2
    for _ in range(32):  # AUC to ~1e-9: far below the sample's own error
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if auc_at(mid) < auc else (lo, mid)
    c = (lo + hi) / 2
    return c, _solve_base(c * zs, rate, last[0])


class LatentTruth:
    """The hidden model: draws rows, their true click probabilities and labels."""

    def __init__(self, cfg: LatentConfig):
        self.cfg = cfg
        rng = _rng(cfg.seed, 0, 10_000)
        self.mu = rng.uniform(-0.5, 1.5, N_DENSE)
        self.sigma = rng.uniform(0.4, 1.0, N_DENSE)
        self.beta = rng.normal(0.0, 1.0, N_DENSE)
        self.tables = [_Table(cfg, t, n) for t, n in enumerate(cfg.cardinalities())]
        self.hotness = [cfg.hotness if t in LARGE_TABLES else 1 for t in range(len(self.tables))]
        self.starts = np.cumsum([0, *self.hotness]).tolist()  # table t owns columns starts[t]:starts[t + 1]
        dense, ids = self.draw(_rng(cfg.seed, 2), cfg.calibration_rows, window=-1)
        raw = dense @ self.beta
        self.dense_shift, self.dense_sd = float(raw.mean()), float(raw.std()) or 1.0
        self.scale, self.base = calibrate(self.raw_logit(dense, ids), cfg.positive_rate, cfg.auc)

    def new_share(self, window: int) -> float:
        cfg = self.cfg
        if window < 0 or cfg.drift != "new-ids" or not cfg.drifted(window):
            return 0.0
        return min(NEW_ID_MAX, NEW_ID_STEP * (window - cfg.start + 1))

    def draw(self, rng: np.random.Generator, rows: int, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(true dense features, ids (rows, slots)) of `rows` rows of `window` (-1: undrifted, for calibration)."""
        popularity = window >= 0 and self.cfg.drift == "popularity" and self.cfg.drifted(window)
        share = self.new_share(window)
        ids = np.empty((rows, self.starts[-1]), dtype=np.int32)
        for t, (tab, h) in enumerate(zip(self.tables, self.hotness)):
            ids[:, self.starts[t]:self.starts[t + 1]] = tab.sample(rng, rows * h, popularity, share).reshape(rows, h)
        lam = np.exp(self.mu + self.sigma * rng.standard_normal((rows, N_DENSE)))
        return np.log1p(rng.poisson(lam)).astype(np.float64), ids

    def raw_logit(self, dense: np.ndarray, ids: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """dense·β (standardised) + per-bag biases + factor interactions, before scale and base; a bag's
        bias and factor are its ids' sums over √hotness. `known` (rows, slots) bool: ids whose
        parameters count; the others get their prior mean, 0."""
        z = np.sqrt(DENSE_VAR) * (dense @ self.beta - self.dense_shift) / self.dense_sd
        factors = {}
        for t, (tab, h) in enumerate(zip(self.tables, self.hotness)):
            cols = slice(self.starts[t], self.starts[t + 1])
            bias, f = tab.params(ids[:, cols], t in LARGE_TABLES)
            if known is not None:
                bias = bias * known[:, cols]
                f = None if f is None else f * known[:, cols, None]
            z += bias.sum(axis=1) / np.sqrt(h)
            factors[t] = None if f is None else f.sum(axis=1) / np.sqrt(h)
        for u, i in PAIRS:
            z += np.einsum("rd,rd->r", factors[u], factors[i]) / np.sqrt(self.cfg.dim)
        return z

    def chunk(self, window: int, c: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(written dense, ids, labels, float32 click probabilities) of chunk `c` of `window`."""
        cfg = self.cfg
        rng = _rng(cfg.seed, 1, window, c)
        dense, ids = self.draw(rng, rows, window)
        logit = self.base + self.scale * self.raw_logit(dense, ids)
        if cfg.drift == "ctr" and cfg.drifted(window):
            logit += CTR_LOGIT_SHIFT
        p = _expit(logit).astype(np.float32)
        labels = (rng.random(rows) < p).astype(np.int32)
        if cfg.drift == "dense-scale" and cfg.drifted(window):
            dense = dense * DENSE_SCALE_FACTOR
        return dense.astype(np.float32), ids, labels, p


def prob_file(root: str | Path, window: int) -> Path:
    return Path(root) / f"day_{window}_prob.npy"


def generate_latent(cfg: LatentConfig, root: str | Path,
                    progress: Stages | None = None) -> DatasetMeta:
    """Write the latent-factor dataset described by `cfg` into `root` (normally an `atomic_dir` temp dir)."""
    truth = LatentTruth(cfg)
    sizes = [t.n for t in truth.tables]
    writer = DatasetWriter(root, DENSE_NAMES, [SparseFeature(n, s, h)
                                               for n, s, h in zip(SPARSE_NAMES, sizes, truth.hotness)])
    update = progress("synth", cfg.windows * cfg.rows_per_window, "rows") if progress else None
    stats = []
    for w in range(cfg.windows):
        day = FIRST_DAY + dt.timedelta(days=w)
        ww = writer.window(label=day.isoformat(), start=f"{day.isoformat()}T00:00:00Z",
                           end=f"{(day + dt.timedelta(days=1)).isoformat()}T00:00:00Z")
        probs, bayes = _NpyAppender(prob_file(root, w), np.float32, None), BinaryStats()
        for c, r0 in enumerate(range(0, cfg.rows_per_window, cfg.chunk_rows)):
            dense, ids, labels, p = truth.chunk(w, c, min(cfg.chunk_rows, cfg.rows_per_window - r0))
            ww.append(dense, ids, labels)
            probs.append(p)
            bayes.update(p, labels)
            if update is not None:
                update(len(labels))
        probs.close()
        writer.add_window(ww)
        stats.append(_window_stats(bayes))
    writer.provenance.update(_provenance(cfg, truth, stats))
    return writer.finish()


def _window_stats(s: BinaryStats) -> dict[str, float | None]:
    def r(x: float) -> float | None:
        return None if not np.isfinite(x) else round(float(x), 6)

    return {"positive_rate": r(s.ctr), "bayes_auc": r(s.auc), "bayes_ne": r(s.ne), "bayes_logloss": r(s.logloss)}


def _provenance(cfg: LatentConfig, truth: LatentTruth, stats: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": "synthetic",
        "generator": "lowprec data synth --kind latent",
        "kind": "latent",
        "config": cfg.to_json(),
        "cardinalities": [t.n for t in truth.tables],
        "reserved_ids_from": [t.n_base for t in truth.tables],
        "probabilities": "day_{i}_prob.npy",
        "ground_truth": {"positive_rate": cfg.positive_rate, "target_auc": cfg.auc, "zipf": cfg.zipf,
                         "dim": cfg.dim, "hotness": truth.hotness, "base_logit": round(truth.base, 6), "logit_scale": round(truth.scale, 6),
                         "large_tables": list(LARGE_TABLES), "pairs": [list(p) for p in PAIRS],
                         "bias_sd": {"large": BIAS_SD_LARGE, "small": BIAS_SD_SMALL}, "dense_var": DENSE_VAR,
                         "dense_scale_factor": DENSE_SCALE_FACTOR, "ctr_logit_shift": CTR_LOGIT_SHIFT},
        "window_stats": stats,
    }


def bayes_stats(ds: Any, windows: list[int], chunk_rows: int = 1 << 20) -> BinaryStats | None:
    """Metrics of the true probabilities over `windows` (mergeable), or None if a window has none."""
    total = BinaryStats()
    for w in windows:
        path = prob_file(ds.root, w)
        if not path.is_file():
            return None
        p = read_npy(path)
        labels = ds.arrays(w)[2]
        if p.shape != labels.shape or p.dtype.kind != "f":
            raise InputError(f"{path}: {p.dtype} {p.shape}, expected float ({len(labels)},) true probabilities")
        for r0 in range(0, len(labels), chunk_rows):
            total.update(np.asarray(p[r0:r0 + chunk_rows]), np.asarray(labels[r0:r0 + chunk_rows]))
    return total


def bayes_fields(ds: Any, windows: list[int], auc: float) -> dict[str, float]:
    """`bayes_auc`, `bayes_ne`, `auc_gap_to_bayes` (Bayes AUC - `auc`) for eval's JSON; {} without truth."""
    s = bayes_stats(ds, windows)
    if s is None:
        return {}
    return {"bayes_auc": s.auc, "bayes_ne": s.ne, "auc_gap_to_bayes": s.auc - auc}


def window_bayes_auc(meta: DatasetMeta) -> dict[int, float]:
    """Per-window Bayes AUC recorded in dataset.json provenance (empty for data without a known truth)."""
    stats = meta.provenance.get("window_stats") or []
    return {i: s["bayes_auc"] for i, s in enumerate(stats)
            if isinstance(s, dict) and isinstance(s.get("bayes_auc"), (int, float))}
