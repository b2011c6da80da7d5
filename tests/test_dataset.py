"""The prepared-dataset format: streaming writer, memmapped reader, batching, id checks."""

import json

import numpy as np
import pytest

from helpers import make_tiny_dataset
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature
from lowprec.errors import InputError


def test_writer_streams_chunks_into_valid_npy(tmp_path):
    w = DatasetWriter(tmp_path, ["a", "b"], [SparseFeature("s", 10, 2)], {"k": 1})
    ww = w.window(label="first")
    rng = np.random.default_rng(0)
    parts = []
    for n in (3, 0, 5):
        d = rng.random((n, 2)).astype(np.float32)
        s = rng.integers(-1, 10, (n, 2))
        y = rng.integers(0, 2, n)
        ww.append(d, s, y)
        parts.append((d, s, y))
    w.add_window(ww)
    meta = w.finish()
    assert meta.windows[0].rows == 8
    dense = np.load(tmp_path / "day_0_dense.npy")
    np.testing.assert_array_equal(dense, np.concatenate([p[0] for p in parts]))
    labels = np.load(tmp_path / "day_0_labels.npy")
    assert labels.shape == (8, 1) and labels.dtype == np.int32
    assert json.loads((tmp_path / "dataset.json").read_text())["multi_hot"]["hotness"] == [2]


def test_batches_cover_every_row_once_and_shuffle_is_seeded(tmp_path):
    ds = Dataset(make_tiny_dataset(tmp_path / "d", windows=2, rows=1000))
    plain = list(iter_batches(ds, [0, 1], batch_size=300, chunk_rows=256))
    assert sum(len(b) for b in plain) == 2000
    a = torch_cat_labels(iter_batches(ds, [0, 1], 300, shuffle=True, seed=5, chunk_rows=256))
    b = torch_cat_labels(iter_batches(ds, [0, 1], 300, shuffle=True, seed=5, chunk_rows=256))
    c = torch_cat_labels(iter_batches(ds, [0, 1], 300, shuffle=True, seed=6, chunk_rows=256))
    assert (a == b).all() and not (a == c).all()
    assert sorted(a.tolist()) == sorted(torch_cat_labels(plain).tolist())


def torch_cat_labels(batches):
    import torch
    return torch.cat([b.dense[:, 0] for b in batches])


def test_out_of_range_id_is_named(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", windows=1, rows=100)
    sparse = np.load(root / "day_0_sparse.npy")
    sparse[42, 1] = 20  # table t1 has 20 rows
    np.save(root / "day_0_sparse.npy", sparse)
    with pytest.raises(InputError, match=r"window 0 row 42: id 20 of sparse feature 't1'"):
        list(iter_batches(Dataset(root), [0]))


def test_shape_mismatch_and_bad_json_are_named(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", windows=1, rows=100)
    np.save(root / "day_0_dense.npy", np.zeros((99, 4), np.float32))
    with pytest.raises(InputError, match="day_0_dense.npy: shape"):
        Dataset(root).arrays(0)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="dataset.json: not valid JSON"):
        Dataset(root)
    # a key twice in one object: the last silently won (every JSON input is read by fileio.read_json)
    (root / "dataset.json").write_text('{"format": "a", "x": {"k": 1, "k": 2}}')
    with pytest.raises(InputError, match=r"dataset.json: not valid JSON \(key 'k' appears twice in one object\)"):
        Dataset(root)


def test_pickled_npy_is_refused(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", windows=1, rows=10)
    np.save(root / "day_0_labels.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="unreadable"):
        Dataset(root).arrays(0)


def test_writer_records_windows_without_rows_or_with_one_label_class(tmp_path):
    """The writer records; the CLI says the warnings once the dataset is written (lowprec.cli.data)."""
    import warnings

    from lowprec.errors import InputWarning

    w = DatasetWriter(tmp_path, ["a"], [SparseFeature("s", 10)], {"k": 1}, after=(0, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # nothing said before the dataset is written
        for label, y in (("empty", []), ("zeros", [0, 0, 0]), ("ones", [1, 1]), ("mixed", [0, 1])):
            ww = w.window(label=label)
            n = len(y)
            ww.append(np.zeros((n, 1), np.float32), np.zeros((n, 1), np.int64), np.array(y, dtype=np.int32))
            w.add_window(ww)
        meta = w.finish()
    said = meta.provenance["warnings"]
    assert len(said) == 3
    assert said[0].startswith("window 0 ('empty') holds no rows")
    assert said[1].startswith("window 1 ('zeros') holds only negatives (3 rows, no positive label)")
    assert said[2].startswith("window 2 ('ones') holds only positives (2 rows, no negative label)")
    assert json.loads((tmp_path / "dataset.json").read_text())["provenance"]["warnings"] == said