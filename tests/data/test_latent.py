"""The latent-factor generator: Bayes metrics against brute force, the rate and Zipf law asked for,
each drift kind, determinism, and the CLI / eval wiring (`--kind latent`, `bayes_*` in eval --json).

Statistical checks run at fixed seeds (so they are deterministic) with tolerances of several
standard errors, and each is paired with the wrong answer it must reject."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from lowprec.cli import main
from lowprec.data.dataset import Dataset
from lowprec.data.latent import (DENSE_VAR, LARGE_TABLES, PAIRS, LatentConfig, LatentTruth, bayes_stats,
                                 expected_auc, generate_latent, prob_file, synth_config, window_bayes_auc)
from lowprec.data.sampling import ZipfSampler, hashed_normal
from lowprec.errors import InputError
from tests.helpers import make_tiny_dataset

ROWS = 16_000
SCALE = 0.01  # largest table ~101k ids


@pytest.fixture(scope="module")
def drifted(tmp_path_factory) -> dict[str, Dataset]:
    root = tmp_path_factory.mktemp("latent")
    out = {}
    for kind in ("none", "popularity", "new-ids", "dense-scale"):
        cfg = LatentConfig(3, ROWS, seed=11, scale=SCALE, drift=kind, drift_start=1, calibration_rows=20_000)
        generate_latent(cfg, root / kind)
        out[kind] = Dataset(root / kind)
    return out


def files(ds: Dataset) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ds.root.iterdir())}


# ----------------------------------------------------------------------------- Bayes metrics

def brute_auc(p: np.ndarray, y: np.ndarray) -> float:
    """P(p_pos > p_neg) + ½ P(tie) over all positive/negative pairs, one positive at a time."""
    pos, neg = p[y == 1].astype(np.float64), p[y == 0].astype(np.float64)
    wins = 0.0
    for s in pos:
        wins += float(np.sum(neg < s)) + 0.5 * float(np.sum(neg == s))
    return wins / (len(pos) * len(neg))


def brute_logloss_ne(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    total = 0.0
    for pi, yi in zip(p.astype(np.float64), y):
        total -= math.log(pi) if yi else math.log(1.0 - pi)
    logloss, rate = total / len(p), float(np.mean(y))
    return logloss, logloss / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def test_bayes_metrics_equal_brute_force(tmp_path):
    cfg = LatentConfig(2, 900, seed=4, scale=0.002, chunk_rows=256, calibration_rows=5000)  # 4 chunks a window
    meta = generate_latent(cfg, tmp_path / "d")
    ds = Dataset(tmp_path / "d")
    for w in (0, 1):
        p = np.load(prob_file(ds.root, w))
        y = np.asarray(ds.arrays(w)[2])
        assert p.dtype == np.float32 and p.shape == (900,) and 0 < p.min() and p.max() < 1
        rec = meta.provenance["window_stats"][w]
        logloss, ne = brute_logloss_ne(p, y)
        # the recorded AUC comes from metric histograms (ties within ~2.4e-4 relative): 1e-4 covers it
        assert rec["bayes_auc"] == pytest.approx(brute_auc(p, y), abs=1e-4)
        assert rec["bayes_logloss"] == pytest.approx(logloss, abs=2e-6)
        assert rec["bayes_ne"] == pytest.approx(ne, abs=2e-6)
        assert rec["positive_rate"] == pytest.approx(float(y.mean()), abs=1e-6)
    both = bayes_stats(ds, [0, 1])  # windows merge: metrics of the union, not an average
    p = np.concatenate([np.load(prob_file(ds.root, w)) for w in (0, 1)])
    y = np.concatenate([np.asarray(ds.arrays(w)[2]) for w in (0, 1)])
    assert both.auc == pytest.approx(brute_auc(p, y), abs=1e-4)
    assert both.ne == pytest.approx(brute_logloss_ne(p, y)[1], abs=1e-9)
    assert window_bayes_auc(ds.meta) == {w: meta.provenance["window_stats"][w]["bayes_auc"] for w in (0, 1)}


def test_expected_auc_is_the_pairwise_expectation():
    p = np.sort(np.random.default_rng(0).uniform(0.01, 0.99, 60))
    num = sum(p[i] * (1 - p[j]) for i in range(60) for j in range(60) if p[j] < p[i])
    den = sum(p[i] * (1 - p[j]) for i in range(60) for j in range(60) if i != j)
    assert expected_auc(p) == pytest.approx(num / den, rel=1e-12)


# ----------------------------------------------------------------------------- what was asked

def test_positive_rate_and_bayes_auc_as_configured(drifted, tmp_path):
    for s in drifted["none"].meta.provenance["window_stats"]:  # each window: 16k rows, rate s.e. 0.0035
        assert abs(s["positive_rate"] - 0.25) < 0.02 and abs(s["bayes_auc"] - 0.80) < 0.02
    assert 0.75 < s["bayes_ne"] < 0.85
    cfg = LatentConfig(1, ROWS, seed=11, scale=SCALE, zipf=1.3, positive_rate=0.1, auc=0.7, calibration_rows=20_000)
    s = generate_latent(cfg, tmp_path / "alt").provenance["window_stats"][0]
    assert abs(s["positive_rate"] - 0.10) < 0.015 and abs(s["bayes_auc"] - 0.70) < 0.02
    assert _zipf_slope(Dataset(tmp_path / "alt"), [0]) == pytest.approx(1.3, abs=0.08)


def _zipf_slope(ds: Dataset, windows: list[int], table: int = 2, top: int = 30) -> float:
    """-slope of log(count) vs log(rank) over the `top` most frequent ids of a big table."""
    ids = np.concatenate([np.asarray(ds.arrays(w)[1][:, table]) for w in windows])
    counts = np.sort(np.bincount(ids))[::-1][:top]
    return -float(np.polyfit(np.log(np.arange(1, top + 1)), np.log(counts), 1)[0])


def test_ids_follow_the_zipf_exponent(drifted):
    assert _zipf_slope(drifted["none"], [0, 1, 2]) == pytest.approx(1.1, abs=0.08)


@pytest.mark.parametrize("n", [40, 1_000_000])
def test_zipf_sampler_is_exact(n):
    a, draws, k = 1.1, 200_000, 40
    ranks = ZipfSampler(n, a).sample(np.random.default_rng(3), draws)
    assert ranks.min() >= 0 and ranks.max() < n
    observed = np.bincount(np.minimum(ranks, k), minlength=k + 1)  # ranks 0..k-1, then "k or more"

    def pvalue(exponent: float) -> float:
        pmf = np.arange(1, n + 1, dtype=np.float64) ** -exponent
        pmf /= pmf.sum()
        expected = draws * np.append(pmf[:k], pmf[k:].sum())
        keep = expected > 0
        return float(sps.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum())[1])

    assert pvalue(a) > 1e-3  # the law asked for fits
    assert pvalue(a - 0.05) < 1e-9 and pvalue(a + 0.05) < 1e-9  # a slightly wrong exponent does not


def test_hashed_normal_is_standard_normal_and_pure():
    keys = np.arange(200_000, dtype=np.uint64)
    z = hashed_normal(12345, keys)
    assert sps.kstest(z, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.02  # neighbouring ids are independent
    assert np.array_equal(z[::7], hashed_normal(12345, keys[::7]))
    assert not np.allclose(z[:100], hashed_normal(12346, keys[:100]))


# ----------------------------------------------------------------------------- drift

def top_ids(ds: Dataset, w: int, table: int, k: int = 10) -> set[int]:
    return set(np.argsort(-np.bincount(np.asarray(ds.arrays(w)[1][:, table])))[:k].tolist())


def test_pre_drift_windows_identical_across_kinds(drifted):
    base = files(drifted["none"])
    for kind, ds in drifted.items():
        f = files(ds)
        for w in (0,):
            for part in ("dense", "sparse", "labels", "prob"):
                assert f[f"day_{w}_{part}.npy"] == base[f"day_{w}_{part}.npy"], (kind, w, part)


def test_popularity_drift_moves_the_hot_ids(drifted):
    ds, none = drifted["popularity"], drifted["none"]
    for table in (2, 11, 20):
        assert len(top_ids(ds, 0, table) & top_ids(ds, 1, table)) <= 2
        assert len(top_ids(ds, 1, table) & top_ids(ds, 2, table)) >= 7
        assert len(top_ids(none, 0, table) & top_ids(none, 1, table)) >= 7  # without drift they stay
    assert _zipf_slope(ds, [1, 2]) == pytest.approx(1.1, abs=0.08)  # same law, other ids


def test_new_ids_drift_brings_ids_never_seen(drifted):
    ds = drifted["new-ids"]
    reserved = np.asarray(ds.meta.provenance["reserved_ids_from"])
    share = [float((np.asarray(ds.arrays(w)[1]) >= reserved[None, :]).mean()) for w in range(3)]
    assert share[0] == 0
    assert abs(share[1] - 0.2) < 0.02 and abs(share[2] - 0.4) < 0.02  # 20% more traffic a window
    for table in (2, 9, 25):
        def unseen(d: Dataset) -> np.ndarray:  # window 2's ids that window 0 never drew
            seen = np.unique(d.arrays(0)[1][:, table])
            return np.asarray(d.arrays(2)[1][:, table])[~np.isin(d.arrays(2)[1][:, table], seen)]

        fresh = unseen(ds)
        assert len(fresh) / ROWS > len(unseen(drifted["none"])) / ROWS + 0.3  # beyond the Zipf tail
        assert len(np.unique(fresh)) > 20 and np.mean(fresh >= reserved[table]) > 0.6


def test_dense_scale_drift_rescales_inputs_not_labels(drifted):
    ds, none = drifted["dense-scale"], drifted["none"]
    for w in (1, 2):
        np.testing.assert_allclose(ds.arrays(w)[0], 3.5 * np.asarray(none.arrays(w)[0]), rtol=1e-6)
        for part in (1, 2):
            assert np.array_equal(ds.arrays(w)[part], none.arrays(w)[part])
        assert np.array_equal(np.load(prob_file(ds.root, w)), np.load(prob_file(none.root, w)))


# ----------------------------------------------------------------------------- CLI, determinism, eval

def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_latent(LatentConfig(2, 1500, seed=seed, scale=0.002, drift="popularity", drift_start=1, dim=4,
                                     chunk_rows=512, calibration_rows=5000), tmp_path / name)
    a, b, c = (files(Dataset(tmp_path / n)) for n in "abc")
    assert a == b and "day_1_prob.npy" in a and "dataset.json" in a
    assert all(a[k] != c[k] for k in ("day_0_sparse.npy", "day_1_labels.npy", "day_1_prob.npy"))


def test_bad_kind_exits_2_and_writes_nothing(tmp_path):
    for kind, words in (("sparse", "choose one of"), ("latent:zipf=0.9", "zipf must be"),
                        ("latent:beta=2", "not one of"), ("latent:rate=x", "not a number"),
                        ("dense:zipf=1.1", "no options")):
        res = run_cli("data", "synth", "--out", str(tmp_path / "x"), "--kind", kind)
        assert res.exit_code == 2 and words in res.output, (kind, res.output)
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="auc"):
        synth_config("latent:auc=0.99", windows=1, rows_per_window=1, seed=0, scale=0.01, drift="none",
                     drift_start=None)


def test_eval_and_drift_report_distance_to_bayes(tmp_path):
    data = tmp_path / "d"
    res = run_cli("data", "synth", "--kind", "latent:dim=4", "--out", str(data), "--windows", "2",
                  "--rows-per-window", "3000", "--scale", "0.001", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["kind"] == "latent"
    assert "synth" in res.stderr  # the progress bar
    model = tmp_path / "m"
    res = run_cli("train", "--data", str(data), "--windows", "0", "--out", str(model), "--epochs", "1",
                  "--embedding-dim", "4", "--bottom-mlp", "8", "--top-mlp", "8")
    assert res.exit_code == 0, res.output
    res = run_cli("eval", "--model", str(model), "--data", str(data), "--windows", "1", "--json")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    truth = bayes_stats(Dataset(data), [1])
    assert out["bayes_auc"] == truth.auc and out["bayes_ne"] == truth.ne
    assert out["auc_gap_to_bayes"] == pytest.approx(truth.auc - out["auc"], abs=1e-12)
    assert 0 < out["auc_gap_to_bayes"] < 0.3  # a model trained on 3,000 rows is short of Bayes
    text = run_cli("eval", "--model", str(model), "--data", str(data), "--windows", "1").output
    assert "Bayes-optimal" in text
    res = run_cli("drift", "--reference", str(model), "--candidate", str(model), "--data", str(data),
                  "--windows", "1", "--db", str(tmp_path / "d.sqlite"), "--report", str(tmp_path / "r"))
    assert res.exit_code in (0, 1), res.output
    line = [x for x in (tmp_path / "r" / "report.md").read_text().splitlines() if "Bayes-optimal AUC" in x]
    bayes1 = window_bayes_auc(Dataset(data).meta)[1]
    assert len(line) == 1 and f"window 1 {bayes1:.4f} (gap {bayes1 - out['auc']:.4f})" in line[0]
    tiny = make_tiny_dataset(tmp_path / "tiny", windows=2, rows=500)  # no true probabilities: no fields
    assert bayes_stats(Dataset(tiny), [0]) is None


def test_ids_carry_most_of_the_signal(drifted):
    """The truth restricted to what a model can know (tools/latent_oracle.py): memorising ids matters."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from latent_oracle import oracle_aucs

    res = oracle_aucs(drifted["none"], [0, 1], 2, min_count=1)
    assert res["bayes"] == pytest.approx(window_bayes_auc(drifted["none"].meta)[2], abs=2e-4)
    assert res["dense_only"] < 0.66 and res["small_tables"] < 0.68  # ids of the large tables matter
    assert res["seen_ids"] > res["small_tables"] + 0.1 and res["seen_ids"] < res["bayes"]
    assert res["small_tables"] < res["seen_biases"] < res["seen_ids"]  # the factor products carry signal too


# ----------------------------------------------------------------------------- multi-hot (hot=H)

def reference_probabilities(cfg: LatentConfig, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """Each row's true probability, one row and one id at a time from the hashed per-id normals."""
    truth = LatentTruth(cfg)  # only its solved constants (β, dense standardisation, scale, base, salts)
    d = cfg.dim
    out = np.empty(len(sparse))
    for r in range(len(sparse)):
        z = math.sqrt(DENSE_VAR) * (float(dense[r].astype(np.float64) @ truth.beta) - truth.dense_shift) / truth.dense_sd
        col, pooled = 0, {}
        for t, tab in enumerate(truth.tables):
            h = cfg.hotness if t in LARGE_TABLES else 1
            bag_bias, bag_f = 0.0, np.zeros(d)
            for j in range(h):
                i = int(sparse[r, col + j])
                params = hashed_normal(tab.salt, np.uint64(i * (d + 1)) + np.arange(d + 1, dtype=np.uint64))
                bag_bias += tab.bias_sd * params[0]
                bag_f += params[1:]
            col += h
            z += bag_bias / math.sqrt(h)
            pooled[t] = bag_f / math.sqrt(h)
        z += sum(float(pooled[u] @ pooled[i]) for u, i in PAIRS) / math.sqrt(d)
        out[r] = 1 / (1 + math.exp(-(truth.base + truth.scale * z)))
    return out


def test_multi_hot_bags_and_their_probabilities_equal_a_per_id_reference(tmp_path):
    cfg = LatentConfig(1, 300, seed=5, scale=0.002, dim=4, hotness=3, chunk_rows=128, calibration_rows=5000)
    generate_latent(cfg, tmp_path / "d")
    ds = Dataset(tmp_path / "d")
    hot = [3 if t in LARGE_TABLES else 1 for t in range(26)]
    assert ds.meta.hotness == hot and ds.meta.provenance["ground_truth"]["hotness"] == hot
    dense, sparse, _ = (np.asarray(a) for a in ds.arrays(0))
    assert sparse.shape == (300, 26 + 2 * len(LARGE_TABLES))
    assert sparse.min() >= 0 and all((sparse[:, s] < n).all()  # every slot filled, in range
                                     for s, n in zip(np.cumsum([0, *hot[:-1]]), ds.meta.num_embeddings))
    p = np.load(prob_file(ds.root, 0))
    np.testing.assert_allclose(p, reference_probabilities(cfg, dense, sparse), rtol=2e-6, atol=1e-7)
    # the bag's ids are distinct draws, not one id repeated
    big = sparse[:, int(np.cumsum([0, *hot])[2]):int(np.cumsum([0, *hot])[3])]
    assert np.mean(big[:, 0] != big[:, 1]) > 0.5


def test_one_hot_is_hot_1_and_multi_hot_keeps_the_rate_and_auc(tmp_path):
    spec, _ = synth_config("latent:hot=1", windows=1, rows_per_window=1, seed=0, scale=0.01, drift="none",
                           drift_start=None)
    assert spec == LatentConfig(1, 1, seed=0, scale=0.01)
    cfg = LatentConfig(1, ROWS, seed=11, scale=SCALE, hotness=8, calibration_rows=20_000)
    s = generate_latent(cfg, tmp_path / "h").provenance["window_stats"][0]
    assert abs(s["positive_rate"] - 0.25) < 0.02 and abs(s["bayes_auc"] - 0.80) < 0.02
    ds = Dataset(tmp_path / "h")
    slots = np.asarray(ds.arrays(0)[1])[:, 2:10]  # table 2's eight slots: the same Zipf law in each
    for j in (0, 7):
        counts = np.sort(np.bincount(slots[:, j]))[::-1][:30]
        assert -np.polyfit(np.log(np.arange(1, 31)), np.log(counts), 1)[0] == pytest.approx(1.1, abs=0.1)
    for bad in ("latent:hot=0", "latent:hot=257", "latent:hot=2.5"):
        res = run_cli("data", "synth", "--out", str(tmp_path / "x"), "--kind", bad)
        assert res.exit_code == 2 and "hot" in res.output, (bad, res.output)
    assert not (tmp_path / "x").exists()
