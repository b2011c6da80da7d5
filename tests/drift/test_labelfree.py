"""The label-free estimate against brute force: direct sums over rows, Monte Carlo labels drawn from
the reference's probabilities, rank agreement by counting pairs, and the swap-one-part attribution."""

import copy
import math

import numpy as np
import pytest
import torch

from lowprec.drift.attribution import Attribution, swapped
from lowprec.drift.labelfree import (ABS_EDGES, SUMS, LabelFreeAccumulator, LabelFreeConfig, estimate_from_sums,
                                     hist_quantile, rank_agreement, row_kl, row_sums, subsample_key)
from lowprec.evaluation.stats import row_logloss


def _pair(n, seed=0, shift=0.15):
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1.0, 1.2, n)
    p_ref = 1 / (1 + np.exp(-logit))
    p_cand = 1 / (1 + np.exp(-(logit + rng.normal(0, shift, n) + 0.05)))
    return p_ref, p_cand


def test_kl_and_estimate_match_direct_loops():
    p_ref, p_cand = _pair(300)
    kl = [r * math.log(r / c) + (1 - r) * math.log((1 - r) / (1 - c)) for r, c in zip(p_ref, p_cand)]
    h = [-(r * math.log(r) + (1 - r) * math.log(1 - r)) for r in p_ref]
    np.testing.assert_allclose(row_kl(p_ref, p_cand), kl, rtol=1e-9, atol=1e-15)
    est = estimate_from_sums(row_sums(p_ref, p_cand), 0.95)
    assert est["est_gap"] == pytest.approx(sum(kl) / sum(h), rel=1e-10)
    base = p_ref.mean()
    hb = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert est["est_ne_diff"] == pytest.approx(sum(kl) / len(kl) / hb, rel=1e-10)
    assert est["base_rate"] == pytest.approx(base)
    # the row-sampling variance is the CLT of the ratio, written out
    r = sum(kl) / sum(h)
    assert est["est_se_rows"] == pytest.approx(math.sqrt(sum((k - r * e) ** 2 for k, e in zip(kl, h))) / sum(h))
    assert est["est_lo"] < est["est_gap"] < est["est_hi"]


def test_identical_models_estimate_zero():
    p, _ = _pair(100)
    est = estimate_from_sums(row_sums(p, p), 0.95)
    assert est["est_gap"] == 0 and est["est_se"] == 0


def test_monte_carlo_labels_from_reference():
    """Labels drawn from p_ref: the labelled gap's mean is the estimate, its spread the label-noise
    standard error, and the 95% interval holds it ~95% of the time."""
    p_ref, p_cand = _pair(3000, seed=1)
    s = row_sums(p_ref, p_cand)
    est = estimate_from_sums(s, 0.95)
    rng = np.random.default_rng(7)
    draws = 2000
    y = (rng.random((draws, len(p_ref))) < p_ref).astype(np.float64)
    llr = np.array([row_logloss(p_ref, yy).sum() for yy in y])
    llc = np.array([row_logloss(p_cand, yy).sum() for yy in y])
    gaps = llc / llr - 1
    assert abs(gaps.mean() - est["est_gap"]) < 4 * gaps.std() / math.sqrt(draws)
    se_labels = math.sqrt(est["est_se"] ** 2 - est["est_se_rows"] ** 2)
    assert gaps.std() == pytest.approx(se_labels, rel=0.08)
    inside = np.mean((gaps >= est["est_lo"]) & (gaps <= est["est_hi"]))
    assert 0.93 <= inside <= 0.985


def test_accumulator_chunks_and_rank_split_merge_to_the_whole():
    p_ref, p_cand = _pair(5000, seed=2)
    cfg = LabelFreeConfig(rank_rows=800)
    whole = LabelFreeAccumulator(cfg, window=3, window_rows=5000)
    whole.update(p_ref, p_cand, 0)
    parts = [LabelFreeAccumulator(cfg, 3, 5000) for _ in range(2)]
    for a, b in ((0, 1234), (1234, 3000), (3000, 5000)):  # "rank" 0 gets two batches, rank 1 one
        parts[0 if b <= 3000 else 1].update(p_ref[a:b], p_cand[a:b], a)
    merged = LabelFreeAccumulator(cfg, 3, 5000)
    merged.sums = parts[0].sums + parts[1].sums
    merged.hist = parts[0].hist + parts[1].hist
    merged.abs_max = max(p.abs_max for p in parts)
    merged.pairs = parts[0].pairs + parts[1].pairs
    a, b = whole.result(), merged.result()
    for k, v in a.to_json().items():
        assert b.to_json()[k] == pytest.approx(v, rel=1e-12), k
    assert 600 < a.rank_rows < 1000  # ~rank_rows of the 5000 rows
    np.testing.assert_allclose(whole.sums[SUMS.index("rows")], 5000)


def test_subsample_is_a_function_of_the_row_index():
    u = subsample_key(0, 4, np.arange(100000))
    assert np.array_equal(u[500:600], subsample_key(0, 4, np.arange(500, 600)))
    assert 0.49 < (u < 0.5).mean() < 0.51
    assert not np.array_equal(u[:100], subsample_key(0, 5, np.arange(100)))


def test_abs_diff_quantiles_within_a_bin_of_numpy():
    p_ref, p_cand = _pair(20000, seed=3)
    d = np.abs(p_cand - p_ref)
    acc = LabelFreeAccumulator(LabelFreeConfig(), 0, len(d))
    acc.update(p_ref, p_cand, 0)
    step = ABS_EDGES[-1] / ABS_EDGES[-2]
    for q in (0.5, 0.9, 0.99):
        exact = np.quantile(d, q)
        assert exact <= hist_quantile(acc.hist, q) <= exact * step * 1.0001
    assert acc.result().abs_max == pytest.approx(d.max())


def test_kendall_against_counting_pairs():
    rng = np.random.default_rng(4)
    x = rng.random(60)
    y = x + rng.normal(0, 0.2, 60)
    conc = disc = 0
    for i in range(60):
        for j in range(i + 1, 60):
            s = (x[i] - x[j]) * (y[i] - y[j])
            conc, disc = conc + (s > 0), disc + (s < 0)
    tau, rho = rank_agreement(np.column_stack([x, y]))
    assert tau == pytest.approx((conc - disc) / (60 * 59 / 2))
    assert -1 <= rho <= 1 and rank_agreement(np.zeros((2, 2))) == (None, None)


@pytest.fixture()
def float_pair(tmp_path):
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.data.dataset import Dataset
    from tests.helpers import make_tiny_dataset, random_float_model

    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=1, rows=600))
    ref, _ = load_float_model(random_float_model(ds, tmp_path / "model"))
    ref.eval()
    return ds, ref


def _attribute(ds, ref, cand, rows=400):
    from lowprec.data.batches import iter_batches
    from lowprec.evaluation.scoring import predict

    attr = Attribution(ref, cand, LabelFreeConfig(attribution_rows=rows), 0, ds.meta.window(0).rows)
    with attr:
        for b in iter_batches(ds, [0], 256):
            predict(ref, b.dense, b.sparse)
            predict(cand, b.dense, b.sparse)
            attr.update(b.dense, b.row0)
    return {r["part"]: r for r in attr.result()}


def test_attribution_names_the_table_that_moved(float_pair):
    ds, ref = float_pair
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        cand.embeddings[1].weight.add_(0.3 * torch.randn_like(cand.embeddings[1].weight))
    parts = _attribute(ds, ref, cand)
    assert 300 < parts["candidate"]["rows"] < 520
    assert parts["table:t1"]["kl"] > 1e-6
    assert parts["table:t0"]["kl"] == pytest.approx(0, abs=1e-12)
    assert parts["table:t2"]["kl"] == pytest.approx(0, abs=1e-12)
    assert parts["tables:all"]["kl"] == pytest.approx(parts["candidate"]["kl"], rel=1e-6)
    assert parts["layers:all"]["kl"] == pytest.approx(0, abs=1e-12)
    assert parts["tables:all"]["share"] == pytest.approx(1.0, rel=1e-6)


def test_attribution_names_the_layer_and_restores_the_reference(float_pair):
    ds, ref = float_pair
    cand = copy.deepcopy(ref)
    before = ref.top[0]
    with torch.no_grad():
        cand.top[0].weight.mul_(1.2)
    parts = _attribute(ds, ref, cand)
    assert ref.top[0] is before
    assert parts["layer:top.0"]["kl"] > 1e-7
    assert parts["layer:bottom.0"]["kl"] == pytest.approx(0, abs=1e-12)
    assert all(parts[f"table:t{i}"]["kl"] == pytest.approx(0, abs=1e-12) for i in range(3))
    with pytest.raises(RuntimeError), swapped(ref, {"top.0": cand.top[0]}):
        assert ref.top[0] is cand.top[0]
        raise RuntimeError
    assert ref.top[0] is before
