"""Synthetic data: determinism, shape, learnable truth, and that each drift kind does what it claims."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowprec.cli import main
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.data.synth import KAGGLE_CARDINALITIES, SynthConfig, generate

ROWS = 6000


def synth(tmp_path: Path, name: str, *args: str) -> Dataset:
    out = tmp_path / name
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    return Dataset(out)


def files(ds: Dataset) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ds.root.iterdir())}


@pytest.fixture(scope="module")
def drifted(tmp_path_factory) -> dict[str, Dataset]:
    root = tmp_path_factory.mktemp("drift")
    out = {}
    for kind in ("none", "popularity", "new-ids", "dense-scale", "ctr"):
        generate(SynthConfig(4, ROWS, seed=7, drift=kind, drift_start=2), root / kind)
        out[kind] = Dataset(root / kind)
    return out


def test_same_args_same_bytes_other_seed_differs(tmp_path):
    args = ["--windows", "2", "--rows-per-window", "1500", "--drift", "ctr"]
    a = synth(tmp_path, "a", *args, "--seed", "3")
    b = synth(tmp_path, "b", *args, "--seed", "3")
    c = synth(tmp_path, "c", *args, "--seed", "4")
    assert files(a) == files(b)
    assert files(a)["day_0_sparse.npy"] != files(c)["day_0_sparse.npy"]
    assert files(a)["day_1_labels.npy"] != files(c)["day_1_labels.npy"]


def test_windows_do_not_depend_on_window_count(tmp_path):
    a = synth(tmp_path, "a", "--windows", "2", "--rows-per-window", "1000")
    b = synth(tmp_path, "b", "--windows", "3", "--rows-per-window", "1000")
    fa, fb = files(a), files(b)
    assert all(fa[k] == fb[k] for k in fa if k.startswith("day_"))


def test_shape_meta_and_batches(tmp_path):
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "s"), "--windows", "2",
                                    "--rows-per-window", "3000", "--scale", "0.002", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["windows"] == 2 and summary["rows"] == 6000 and summary["bad_rows"] == 0
    assert "synth" in res.stderr  # the progress bar
    ds = Dataset(tmp_path / "s")
    m = ds.meta
    assert m.dense_names == tuple(f"int_{i}" for i in range(13))
    assert m.sparse_names == [f"cat_{i}" for i in range(26)]
    assert m.num_embeddings == [max(2, round(c * 0.002)) for c in KAGGLE_CARDINALITIES]
    assert [w.label for w in m.windows] == ["2024-01-01", "2024-01-02"]
    assert m.windows[1].start == "2024-01-02T00:00:00Z" and m.windows[1].end == "2024-01-03T00:00:00Z"
    assert m.provenance["config"]["scale"] == 0.002 and m.provenance["config"]["seed"] == 0
    n = sum(len(b) for b in iter_batches(ds, [0, 1], batch_size=1024, shuffle=True))
    assert n == 6000
    dense, sparse, labels = ds.arrays(0)
    assert dense.min() >= 0 and 0.3 < dense.mean() < 3  # log1p counts, roughly unit scale
    # hot ids are permuted: the most frequent ids of a big table are not its lowest ids
    counts = np.bincount(sparse[:, 2], minlength=m.num_embeddings[2])
    assert np.argsort(-counts)[:20].mean() > m.num_embeddings[2] / 10


def test_truth_is_learnable_and_base_rate(drifted):
    for stats in drifted["none"].meta.provenance["window_stats"]:
        assert 0.2 < stats["label_rate"] < 0.3
        assert 0.72 < stats["oracle_auc"] < 0.85


def test_pre_drift_windows_identical_across_kinds(drifted):
    base = files(drifted["none"])
    for kind, ds in drifted.items():
        f = files(ds)
        for w in (0, 1):
            for part in ("dense", "sparse", "labels"):
                assert f[f"day_{w}_{part}.npy"] == base[f"day_{w}_{part}.npy"], (kind, w, part)


def test_dense_scale_drift(drifted):
    ds = drifted["dense-scale"]
    means = [float(np.mean(ds.arrays(w)[0])) for w in range(4)]
    stds = [float(np.std(ds.arrays(w)[0])) for w in range(4)]
    assert abs(means[1] / means[0] - 1) < 0.05
    assert means[2] / means[1] > 3 and stds[2] / stds[1] > 3 and means[3] / means[1] > 3


def test_new_ids_drift(drifted):
    ds = drifted["new-ids"]
    reserved = np.asarray(ds.meta.provenance["reserved_ids_from"])
    share = []
    for w in range(4):
        sparse = ds.arrays(w)[1]
        share.append(float((sparse >= reserved[None, :]).mean()))
    assert share[0] == 0 and share[1] == 0
    assert 0.1 < share[2] < share[3]
    before = set(np.unique(np.concatenate([ds.arrays(w)[1][:, 9] for w in (0, 1)])))
    after = set(np.unique(ds.arrays(3)[1][:, 9]))
    fresh = after - before
    assert len(fresh) > 10 and min(fresh) >= reserved[9]


def top_ids(ds: Dataset, w: int, table: int, k: int = 10) -> set[int]:
    return set(np.argsort(-np.bincount(ds.arrays(w)[1][:, table]))[:k].tolist())


def test_popularity_drift(drifted):
    ds = drifted["popularity"]
    for table in (2, 9, 11):
        assert len(top_ids(ds, 0, table) & top_ids(ds, 1, table)) >= 7
        assert len(top_ids(ds, 1, table) & top_ids(ds, 2, table)) <= 2
        assert len(top_ids(ds, 2, table) & top_ids(ds, 3, table)) >= 7


def test_ctr_drift(drifted):
    rates = [float(np.mean(drifted["ctr"].arrays(w)[2])) for w in range(4)]
    assert abs(rates[1] - rates[0]) < 0.03
    assert rates[2] - rates[1] > 0.08 and rates[3] - rates[1] > 0.08
    unchanged = [float(np.mean(drifted["dense-scale"].arrays(w)[2])) for w in range(4)]
    assert abs(unchanged[2] - unchanged[1]) < 0.03


def test_bad_arguments_exit_2(tmp_path):
    run = CliRunner().invoke
    res = run(main, ["data", "synth", "--out", str(tmp_path / "x"), "--windows", "3", "--drift-start", "3",
                     "--drift", "ctr"])
    assert res.exit_code == 2 and "--drift-start" in res.output
    assert run(main, ["data", "synth", "--out", str(tmp_path / "x"), "--drift", "sideways"]).exit_code == 2
    assert run(main, ["data", "synth", "--out", str(tmp_path / "x"), "--scale", "0"]).exit_code == 2
    assert not (tmp_path / "x").exists()


def test_windows_span_several_chunks(tmp_path):
    rows = 70_000  # more than one generation chunk (CHUNK_ROWS = 65,536)
    a = generate(SynthConfig(1, rows, seed=5), tmp_path / "a")
    generate(SynthConfig(1, rows, seed=5), tmp_path / "b")
    assert a.windows[0].rows == rows
    fa, fb = files(Dataset(tmp_path / "a")), files(Dataset(tmp_path / "b"))
    assert fa == fb
    dense, sparse, labels = Dataset(tmp_path / "a").arrays(0)
    assert dense.shape == (rows, 13) and sparse.shape == (rows, 26) and labels.shape == (rows,)
