"""Metrics against brute-force references on small inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec.evaluation.metrics import BinaryStats, auc_exact, score_bins


def brute_auc(p, y):
    pos, neg = p[y == 1], p[y == 0]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def brute_ne(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    r = y.mean()
    return ll / -(r * np.log(r) + (1 - r) * np.log(1 - r))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(0, 10_000))
def test_auc_and_ne_match_brute_force(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    # The histogram AUC is exact when distinct scores differ by more than a bin (~1.2e-4 relative):
    # three decimals guarantee that; one decimal adds many exact ties.
    p = np.round(rng.random(n), 1 if seed % 3 == 0 else 3)
    s = BinaryStats().update(p, y)
    assert s.auc == pytest.approx(brute_auc(p, y), abs=1e-12)
    assert auc_exact(p, y) == pytest.approx(brute_auc(p, y), abs=1e-12)
    assert s.ne == pytest.approx(brute_ne(p, y), rel=1e-9)
    assert s.calibration == pytest.approx(p.sum() / y.sum(), rel=1e-12)


def test_statistics_merge_by_addition():
    rng = np.random.default_rng(1)
    p, y = rng.random(5000), rng.integers(0, 2, 5000)
    whole = BinaryStats().update(p, y)
    parts = BinaryStats().update(p[:1234], y[:1234]) + BinaryStats().update(p[1234:], y[1234:])
    for key, value in whole.summary().items():
        assert parts.summary()[key] == pytest.approx(value, rel=1e-12)


def test_histogram_auc_close_to_exact_on_large_sample():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200_000)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, y.size) + y)))
    assert BinaryStats().update(p, y).auc == pytest.approx(auc_exact(p, y), abs=2e-6)


def test_bins_are_monotone():
    p = np.sort(np.random.default_rng(3).random(10_000))
    assert (np.diff(score_bins(p)) >= 0).all()
    assert score_bins(np.array([0.0]))[0] == 0


def test_constant_model_has_ne_one_and_auc_half():
    y = np.array([0, 1, 1, 0, 0, 0, 1, 0])
    p = np.full(y.shape, y.mean())
    s = BinaryStats().update(p, y)
    assert s.ne == pytest.approx(1.0)
    assert s.auc == pytest.approx(0.5)
    assert s.calibration == pytest.approx(1.0)


def test_empty_stats_are_nan():
    s = BinaryStats()
    assert np.isnan(s.ne) and np.isnan(s.auc)


@pytest.mark.parametrize("label", [0, 1])
def test_one_label_class_has_no_ne(label):
    # NE divides by the entropy of the click rate, which is 0 here: undefined, like AUC, not a huge number.
    p = np.random.default_rng(4).random(50)
    s = BinaryStats().update(p, np.full(50, label), np.random.default_rng(5).random(50) + 0.5)
    assert np.isnan(s.ne) and np.isnan(s.auc)
    assert np.isfinite(s.logloss)
    both = s + BinaryStats().update(np.array([0.3]), np.array([1 - label]))  # one row of the other class
    assert np.isfinite(both.ne) and np.isfinite(both.auc)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_predictions_are_refused_not_binned(bad):
    """They used to crash the histogram update (`operands could not be broadcast together`)."""
    from lowprec.errors import InputError

    with pytest.raises(InputError, match=r"1 of 3 predictions are NaN or Inf"):
        BinaryStats().update(np.array([0.2, bad, 0.7]), np.array([0, 1, 1]))
