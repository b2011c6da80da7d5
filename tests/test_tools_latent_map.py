"""tools/latent_map.py: the MAP fit of the latent generator's model family (a ceiling for trained models).

The damped per-id Newton block is checked against a slow reference (scipy's 1-D minimiser of every
id's own objective, one id at a time); a fit on a small latent dataset must lower its objective every
sweep and land between the dense-only and the Bayes AUC.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from latent_map import _block, _logloss, run  # noqa: E402

from lowprec.data.dataset import Dataset  # noqa: E402
from lowprec.data.latent import LatentConfig, generate_latent, window_bayes_auc  # noqa: E402


def test_bias_block_reaches_each_ids_own_minimum():
    rng = np.random.default_rng(3)
    rows, n, var = 3000, 40, 0.2
    ids = rng.zipf(1.5, rows) % n  # some ids frequent, some seen once, some never
    offset = rng.normal(0, 1, rows)  # the rest of the logit, held fixed
    y = (rng.random(rows) < 1 / (1 + np.exp(-(offset + rng.normal(0, 0.5, n)[ids])))).astype(float)
    x, z = np.zeros(n), offset.copy()
    for _ in range(30):
        _block(z, y, ids, x, var, None)
    np.testing.assert_allclose(z, offset + x[ids], atol=1e-9)  # the logit is kept in step
    for j in range(n):
        rows_j = ids == j
        ref = minimize_scalar(lambda b: _logloss(offset[rows_j] + b, y[rows_j]).sum() + b * b / (2 * var),
                              bounds=(-10, 10), method="bounded", options={"xatol": 1e-10}).x
        assert x[j] == pytest.approx(ref, abs=1e-5), j


def test_factor_block_never_raises_the_objective():
    rng = np.random.default_rng(4)
    rows, n, d, var = 2000, 30, 4, 0.3
    ids = rng.integers(0, n, rows)
    feat = rng.normal(0, 1, (rows, d))  # the partner ids' factors, held fixed
    y = (rng.random(rows) < 0.3).astype(float)
    x, z = 0.1 * rng.normal(0, 1, (n, d)), np.zeros(rows)
    z += np.einsum("rd,rd->r", x[ids], feat)
    objective = [_logloss(z, y).sum() + (x * x).sum() / (2 * var)]
    for _ in range(8):
        _block(z, y, ids, x, var, feat)
        np.testing.assert_allclose(z, np.einsum("rd,rd->r", x[ids], feat), atol=1e-9)
        objective.append(_logloss(z, y).sum() + (x * x).sum() / (2 * var))
    assert all(b <= a + 1e-9 for a, b in zip(objective, objective[1:]))
    assert objective[-1] < objective[0] - 1.0


def test_map_fit_on_latent_data_sits_between_dense_only_and_bayes(tmp_path):
    cfg = LatentConfig(3, 6000, seed=5, scale=0.01, calibration_rows=5000)
    generate_latent(cfg, tmp_path / "d")
    ds = Dataset(tmp_path / "d")
    res = run(ds, [0, 1], [2], prior_scale=1.0, factors=True, sweeps=4, seed=0)
    out = res["eval"]["2"]
    assert out["bayes_auc"] == pytest.approx(window_bayes_auc(ds.meta)[2])
    assert 0.6 < out["auc"] < out["bayes_auc"]
    assert res["train_auc"] > out["auc"]  # it learnt ids of the training rows
