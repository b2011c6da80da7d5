"""Pure statistics of the drift job against brute-force and textbook references."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec.evaluation import stats
from lowprec.evaluation.metrics import BinaryStats, score_bins


def brute_delong(sr, sc, y):
    """DeLong's variance of AUC_c - AUC_r with O(n^2) kernel matrices (ties count 1/2)."""
    pos, neg = y == 1, y == 0
    out = []
    for s in (sr, sc):
        k = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        out.append((k.mean(), k.mean(axis=1), k.mean(axis=0)))
    (a1, v10_1, v01_1), (a2, v10_2, v01_2) = out
    s10 = np.cov(np.vstack([v10_1, v10_2]))
    s01 = np.cov(np.vstack([v01_1, v01_2]))
    m, n = pos.sum(), neg.sum()
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return a1, a2, var


def streamed_delong(sr, sc, y, batch=7):
    ref, cand = BinaryStats(), BinaryStats()
    for i in range(0, len(y), batch):
        ref.update(sr[i:i + batch], y[i:i + batch])
        cand.update(sc[i:i + batch], y[i:i + batch])
    acc = stats.DeLongAccumulator((ref.hist_pos, ref.hist_neg), (cand.hist_pos, cand.hist_neg), ref.auc, cand.auc)
    for i in range(0, len(y), batch):
        acc.update(score_bins(sr[i:i + batch]), score_bins(sc[i:i + batch]), y[i:i + batch])
    return acc.result()


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 90), st.integers(0, 10_000))
def test_delong_variance_matches_brute_force(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 0, 1
    digits = 1 if seed % 3 == 0 else 3  # one decimal: many exact ties
    sr = np.round(rng.random(n), digits)
    sc = np.round(np.clip(sr + rng.normal(0, 0.2, n), 0, 1), digits)
    a1, a2, var = brute_delong(sr, sc, y)
    r = streamed_delong(sr, sc, y)
    assert r.auc_ref == pytest.approx(a1, abs=1e-12) and r.auc_cand == pytest.approx(a2, abs=1e-12)
    assert r.var == pytest.approx(var, rel=1e-9, abs=1e-15)


def test_delong_textbook_example():
    """3 positives, 3 negatives; every number below was worked out by hand from the definitions."""
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])  # AUC 8/9
    b = np.array([0.6, 0.9, 0.5, 0.5, 0.2, 0.8])  # AUC 13/18 (one tie at 0.5)
    # V10_a = (1, 1, 2/3), V10_b = (2/3, 1, 1/2): var 1/27, 7/108, cov 1/27
    # V01_a = (2/3, 1, 1), V01_b = (5/6, 1, 1/3): var 1/27, 13/108, cov -1/54
    # Var = (1/27 + 7/108 - 2/27)/3 + (1/27 + 13/108 + 2/54)/3 = 1/108 + 7/108 = 2/27
    r = streamed_delong(a, b, y, batch=2)
    assert r.auc_ref == pytest.approx(8 / 9) and r.auc_cand == pytest.approx(13 / 18)
    assert r.diff == pytest.approx(-1 / 6)
    assert r.var == pytest.approx(2 / 27)
    z = (-1 / 6) / math.sqrt(2 / 27)
    assert r.z == pytest.approx(z) and z == pytest.approx(-0.6123724, abs=1e-6)
    assert r.p_two_sided == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert r.p_two_sided == pytest.approx(0.540291, abs=1e-5)
    assert r.p_drop == pytest.approx(0.5 * math.erfc(-z / math.sqrt(2)))  # Phi(z): small for a real drop
    assert r.p_drop == pytest.approx(0.270146, abs=1e-5)


def test_delong_identical_models_and_degenerate_classes():
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.7, 0.4, 0.4, 0.9, 0.2])
    r = streamed_delong(s, s, y)
    assert r.diff == 0 and r.var == pytest.approx(0, abs=1e-15) and r.p_two_sided == 1.0
    r = streamed_delong(s[:3], s[:3], np.array([0, 1, 0]))
    assert math.isnan(r.var)


def test_poisson1_table_is_poisson():
    pmf = np.bincount(stats._POISSON1, minlength=10)[:10] / 65536
    exact = [math.exp(-1) / math.factorial(k) for k in range(10)]
    assert np.allclose(pmf, exact, atol=2 ** -16)
    w = stats.poisson1(np.random.default_rng(0), (400, 1000))
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02


def test_bootstrap_is_seeded_and_per_window():
    rng = np.random.default_rng(1)
    y, a, b = rng.integers(0, 2, 500), rng.random(500), rng.random(500)

    def sums(seed, stream):
        bs = stats.PoissonBootstrap(50, seed, stream)
        bs.update(y, a, b, a, b)
        return bs.sums

    assert np.array_equal(sums(0, 3), sums(0, 3))
    assert not np.array_equal(sums(0, 3), sums(0, 4))
    assert not np.array_equal(sums(1, 3), sums(0, 3))


def test_poisson_bootstrap_interval_covers_the_true_gap():
    """Coverage of the 95% percentile interval in a simulation with a known ratio of means."""
    rng = np.random.default_rng(123)
    g0, sigma, n, trials = 0.01, 0.1, 2000, 150
    true_gap = (1 + g0) * math.exp(sigma ** 2 / 2) - 1  # E[ll_c] / E[ll_r] - 1
    covered, se_ratio = 0, []
    for t in range(trials):
        ll_r = rng.gamma(2.0, 0.3, n)
        ll_c = ll_r * (1 + g0) * np.exp(sigma * rng.standard_normal(n))
        y = (rng.random(n) < 0.3).astype(float)
        bs = stats.PoissonBootstrap(200, seed=7, stream=t)
        mom = stats.RatioMoments()
        for i in range(0, n, 512):  # streamed in batches
            sl = slice(i, i + 512)
            bs.update(y[sl], ll_r[sl], ll_c[sl], ll_r[sl], ll_c[sl])
            mom.update(ll_r[sl], ll_c[sl])
        est = ll_c.sum() / ll_r.sum() - 1
        iv = stats.percentile_interval(est, bs.ratio("ll_cand", "ll_ref"), 0.95)
        covered += iv.lo <= true_gap <= iv.hi
        se_ratio.append(iv.se / mom.ratio_se())
    assert 0.88 <= covered / trials <= 0.99
    assert 0.9 < float(np.mean(se_ratio)) < 1.1  # bootstrap se agrees with the delta method


def test_percentile_interval_is_undefined_on_too_few_rows():
    """One row: every Poisson replicate is the same ratio, an interval of width 0 that alarmed."""
    reps = np.full(200, -0.024)
    iv = stats.percentile_interval(-0.024, reps, 0.95, rows=1)
    assert iv.estimate == -0.024 and all(math.isnan(x) for x in (iv.lo, iv.hi, iv.se))
    assert math.isnan(stats.percentile_interval(0.0, reps, 0.95, rows=stats.MIN_INTERVAL_ROWS - 1).lo)
    assert stats.percentile_interval(0.0, reps, 0.95, rows=stats.MIN_INTERVAL_ROWS).lo == -0.024


def test_psi():
    rng = np.random.default_rng(0)
    p = rng.beta(2, 5, 20_000)
    h = lambda x: BinaryStats().update(x, np.zeros_like(x)).hist_neg  # noqa: E731
    assert stats.psi(h(p), h(p)) == pytest.approx(0.0, abs=1e-12)
    small = stats.psi(h(p), h(np.clip(p * 1.02, 0, 1)))
    large = stats.psi(h(p), h(np.clip(p * 1.5, 0, 1)))
    assert 0 < small < 0.01 < 0.1 < large
    # textbook form on decile shares: Σ (c - r) ln(c / r)
    q = np.quantile(p, np.linspace(0, 1, 11))
    shifted = np.clip(p * 1.5, 0, 1)
    c = np.histogram(shifted, bins=np.concatenate([[-1], q[1:-1], [2]]))[0] / len(p)
    expected = float(((c - 0.1) * np.log(c / 0.1)).sum())
    assert large == pytest.approx(expected, rel=0.02)
    # fewer than 10 scores a decile: undefined (a one-row window scored 27.6 and warned)
    assert np.isnan(stats.psi(h(p[:1]), h(p[:1] * 1.5))) and np.isnan(stats.psi(h(p), h(p[:99])))
    assert np.isfinite(stats.psi(h(p[:100]), h(p[:100] * 1.5)))


def test_weighted_row_error():
    err = np.array([0.0, 1.0, 4.0])
    norm = np.array([1.0, 1.0, 1.0])
    out = stats.weighted_row_error(err, norm, np.array([0.0, 3.0, 1.0]), dim=2)
    assert out["lookups"] == 4 and out["mse"] == pytest.approx(7 / 8)
    assert out["rel"] == pytest.approx(7 / 4) and out["sqnr_db"] == pytest.approx(-10 * math.log10(7 / 4))
    assert stats.weighted_row_error(err, norm, np.zeros(3), 2)["mse"] is None
    assert stats.weighted_row_error(np.zeros(3), norm, np.ones(3), 2)["sqnr_db"] is None  # exact table


def test_row_logloss_matches_binary_stats():
    rng = np.random.default_rng(0)
    p, y = rng.random(300).astype(np.float32), rng.integers(0, 2, 300)
    p[:3] = [0.0, 1.0, 0.5]
    s = BinaryStats().update(p, y)
    assert stats.row_logloss(p, y).sum() == pytest.approx(s.logloss_sum, rel=1e-12)
