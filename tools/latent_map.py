"""What a model that knows the latent generator's FORM could learn from the training rows (MAP fit).

tools/latent_oracle.py scores models that know the true parameters; this one learns them. For a dataset
written by `lowprec data synth --kind latent` it fits the generator's own model family,
    logit = b + dense·w + Σ_t a_t[id_t] + Σ_(u,i) in PAIRS <g_u[id_u], g_i[id_i]>,
by maximum a posteriori on the training windows with the generator's true priors (a_t ~ N(0, (c σ_t)²),
g ~ N(0, c / √D) per coordinate, so <g_u, g_i> has the truth's c/√D <f_u, f_i> distribution; b and w
flat), block coordinate Newton, and scores the eval windows (AUC; ids never seen keep their prior mean 0).
It answers "how much of the dense-only -> Bayes gap can the training rows support at all": a trained
DLRM that closes less than this fit misses something learnable; the gap beyond it is what the rows
do not hold about rarely seen ids. `--prior-scale k` multiplies every prior variance (k > 1: weaker
regularisation; `--factor-prior-scale` the factors' only); `--no-factors` fits the per-id biases only.
One JSON object per run on stdout.

    python tools/latent_map.py --data /tmp/gap/data --train-windows 0-3 --eval-windows 4,5,6
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from lowprec.data.dataset import Dataset
from lowprec.data.latent import BIAS_SD_LARGE, BIAS_SD_SMALL, LARGE_TABLES, PAIRS, window_bayes_auc
from lowprec.data.windows import parse_windows
from lowprec.evaluation.metrics import BinaryStats
from latent_oracle import one_hot_config


def load(ds: Dataset, windows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [ds.arrays(w) for w in windows]
    dense = np.concatenate([np.asarray(p[0], dtype=np.float64) for p in parts])
    sparse = np.concatenate([np.asarray(p[1], dtype=np.int32) for p in parts])
    labels = np.concatenate([np.asarray(p[2], dtype=np.float64) for p in parts])
    return dense, sparse, labels


class LatentMAP:
    """The generator's model family: parameters, Gaussian prior variances, the logit."""

    def __init__(self, sizes: list[int], n_dense: int, dim: int, scale: float, prior_scale: float,
                 factors: bool, seed: int = 0, factor_prior_scale: float = 1.0):
        rng = np.random.default_rng(seed)
        self.b, self.w = 0.0, np.zeros(n_dense)
        self.a = [np.zeros(n) for n in sizes]
        self.bias_var = [prior_scale * (scale * (BIAS_SD_LARGE if t in LARGE_TABLES else BIAS_SD_SMALL)) ** 2
                         for t in range(len(sizes))]
        self.pairs = PAIRS if factors else ()
        self.factor_var = factor_prior_scale * prior_scale * scale / np.sqrt(dim)
        # random start at half the prior's sd: a zero start is a saddle point of the product terms
        self.g = {t: 0.5 * np.sqrt(self.factor_var) * rng.standard_normal((sizes[t], dim))
                  for p in self.pairs for t in p}

    def logit(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        z = self.b + dense @ self.w
        for t, a in enumerate(self.a):
            z += a[sparse[:, t]]
        for u, i in self.pairs:
            z += np.einsum("rd,rd->r", self.g[u][sparse[:, u]], self.g[i][sparse[:, i]])
        return z

    def neg_log_prior(self) -> float:
        out = sum(float(a @ a) / (2 * v) for a, v in zip(self.a, self.bias_var))
        return out + sum(float((g * g).sum()) for g in self.g.values()) / (2 * self.factor_var)


def _expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def standardise(dense: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return (dense - mean) / sd


def _newton_ids(ids: np.ndarray, n: int, r: np.ndarray, h: np.ndarray, x: np.ndarray, var: float,
                feat: np.ndarray | None = None) -> np.ndarray:
    """Diagonal Newton step of every id's parameter(s) x (n,) or (n, D) under log-loss + prior.
    r = p - y, h = p(1-p) per row; feat: (rows, D) the multiplier of x in the logit (None: 1)."""
    if feat is None:
        grad = np.bincount(ids, r, n) + x / var
        hess = np.bincount(ids, h, n) + 1.0 / var
    else:
        grad = np.stack([np.bincount(ids, r * feat[:, k], n) for k in range(feat.shape[1])], 1) + x / var
        hess = np.stack([np.bincount(ids, h * feat[:, k] ** 2, n) for k in range(feat.shape[1])], 1) + 1.0 / var
    return np.clip(-grad / hess, -1.0, 1.0)


def _logloss(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z) - y * z


def _block(z: np.ndarray, y: np.ndarray, ids: np.ndarray, x: np.ndarray, var: float,
           feat: np.ndarray | None) -> None:
    """One damped diagonal Newton step of the per-id parameters x (in place) and the logit z: the
    objective is separable over ids within a block, so an id whose own objective would rise halves
    its step (up to 4 times, then keeps 0)."""
    n = len(x)
    p = _expit(z)
    d = _newton_ids(ids, n, p - y, p * (1 - p), x, var, feat)
    contrib = (lambda dd: dd[ids]) if feat is None else (lambda dd: np.einsum("rd,rd->r", dd[ids], feat))
    prior = (lambda v: v * v / (2 * var)) if feat is None else (lambda v: (v * v).sum(1) / (2 * var))
    before = np.bincount(ids, _logloss(z, y), n) + prior(x)
    for _ in range(5):
        after = np.bincount(ids, _logloss(z + contrib(d), y), n) + prior(x + d)
        worse = after > before + 1e-12
        if not worse.any():
            break
        d[worse] *= 0.5
    d[worse] = 0.0
    x += d
    z += contrib(d)


def fit(model: LatentMAP, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, sweeps: int) -> list[float]:
    """Block coordinate descent: per sweep a Newton step of (b, w), then of every table's per-id
    biases, then of every factor table (`_block`); the logit is kept up to date between blocks.
    Returns the objective (mean log-loss + prior / N) after each sweep; stops when it gains < 1e-6."""
    n, z, trace = len(labels), model.logit(dense, sparse), []
    x1 = np.concatenate([np.ones((n, 1)), dense], 1)
    for sweep in range(sweeps):
        p = _expit(z)
        h = p * (1 - p)
        step = np.linalg.solve((x1 * h[:, None]).T @ x1 + 1e-6 * np.eye(x1.shape[1]), x1.T @ (p - labels))
        model.b -= step[0]
        model.w -= step[1:]
        z -= x1 @ step
        for t, a in enumerate(model.a):
            _block(z, labels, sparse[:, t], a, model.bias_var[t], None)
        for u, i in model.pairs:
            _block(z, labels, sparse[:, u], model.g[u], model.factor_var, model.g[i][sparse[:, i]])
            _block(z, labels, sparse[:, i], model.g[i], model.factor_var, model.g[u][sparse[:, u]])
        obj = float(_logloss(z, labels).mean()) + model.neg_log_prior() / n
        trace.append(obj)
        print(f"  sweep {sweep + 1} objective {obj:.6f}", file=sys.stderr, flush=True)
        if len(trace) > 1 and trace[-2] - obj < 1e-6:
            break
    return trace


def run(ds: Dataset, train: list[int], evals: list[int], prior_scale: float, factors: bool,
        sweeps: int, seed: int, factor_prior_scale: float = 1.0) -> dict:
    cfg = one_hot_config(ds)
    scale = float(ds.meta.provenance["ground_truth"]["logit_scale"])
    dense, sparse, labels = load(ds, train)
    mean, sd = dense.mean(0), np.maximum(dense.std(0), 1e-6)
    model = LatentMAP(list(ds.meta.num_embeddings), dense.shape[1], cfg.dim, scale, prior_scale, factors, seed,
                      factor_prior_scale)
    t0 = time.time()
    trace = fit(model, standardise(dense, mean, sd), sparse, labels, sweeps)
    out = {"prior_scale": prior_scale, "factor_prior_scale": factor_prior_scale, "factors": factors,
           "sweeps": len(trace), "seed": seed,
           "train_rows": len(labels), "objective": round(trace[-1], 6), "seconds": round(time.time() - t0, 1),
           "train_auc": round(BinaryStats().update(_expit(model.logit(standardise(dense, mean, sd), sparse)),
                                                   labels).auc, 4), "eval": {}}
    bayes = window_bayes_auc(ds.meta)
    for w in evals:
        d, s, y = load(ds, [w])
        p = _expit(model.logit(standardise(d, mean, sd), s))
        st = BinaryStats().update(p, y)
        out["eval"][str(w)] = {"auc": round(st.auc, 4), "ne": round(st.ne, 4),
                               "calibration": round(float(p.sum() / y.sum()), 4), "bayes_auc": bayes.get(w)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--train-windows", required=True)
    ap.add_argument("--eval-windows", required=True)
    ap.add_argument("--prior-scale", type=float, default=1.0)
    ap.add_argument("--factor-prior-scale", type=float, default=1.0, help="multiplies the factors' prior variance")
    ap.add_argument("--no-factors", action="store_true")
    ap.add_argument("--sweeps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ds = Dataset(args.data)
    idx = ds.meta.window_indices
    res = run(ds, parse_windows(args.train_windows, idx), parse_windows(args.eval_windows, idx),
              args.prior_scale, not args.no_factors, args.sweeps, args.seed, args.factor_prior_scale)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
