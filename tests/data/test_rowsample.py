"""Sampled row hashes (lowprec.data.rowsample): the hash against a plain-integer reference, the
sample against a row-by-row selection, and which re-cut windows the held-out check recognises."""
from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lowprec.data import rowsample
from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature
from lowprec.fileio import atomic_dir
from lowprec.train import seen_in_training

M64 = (1 << 64) - 1


def mix_reference(h: int) -> int:
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & M64
    return h ^ (h >> 31)


def hash_reference(dense_row, sparse_row) -> int:
    """One row's hash, in Python integers: every value's bits, column by column, dense first."""
    values = [struct.unpack("<I", struct.pack("<f", float(x)))[0] for x in np.float32(dense_row)]
    values += [int(v) & M64 for v in sparse_row]
    h = 0x9E3779B97F4A7C15
    for j, v in enumerate(values[:len(dense_row)]):
        h = mix_reference(h ^ v ^ ((j + 1) << 56))
    for j, v in enumerate(values[len(dense_row):]):
        h = mix_reference(h ^ v ^ ((j + 1) << 56))
    return h


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 4), st.integers(1, 5), st.integers(0, 2 ** 31))
def test_row_hashes_equal_the_integer_reference(rows, n_dense, n_sparse, seed):
    rng = np.random.default_rng(seed)
    dense = rng.normal(0, 1e3, (rows, n_dense)).astype(np.float32)
    if n_dense:
        dense[0, 0] = np.nan if seed % 3 == 0 else (-0.0 if seed % 3 == 1 else np.inf)
    sparse = rng.integers(-1, 2 ** 62, (rows, n_sparse))
    got = rowsample.row_hashes(dense, sparse)
    assert [int(h) for h in got] == [hash_reference(d, s) for d, s in zip(dense, sparse)]


def test_a_row_has_one_hash_wherever_it_sits_and_labels_do_not_count():
    rng = np.random.default_rng(0)
    dense, sparse = rng.normal(size=(50, 3)).astype(np.float32), rng.integers(0, 100, (50, 4))
    h = rowsample.row_hashes(dense, sparse)
    order = rng.permutation(50)
    assert np.array_equal(rowsample.row_hashes(dense[order], sparse[order]), h[order])
    assert len(np.unique(h)) == 50
    swapped = sparse.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]  # the same values in other columns: another row
    assert not np.any(rowsample.row_hashes(dense, swapped) == h)


def write(root, windows: list[tuple[np.ndarray, np.ndarray]], tables=(1000, 1000), days: bool = False,
          labels: list[int] | None = None):
    """A dataset of these windows; `days`: window i is the UTC day 2024-01-(i+1), with its times;
    `labels`: window i's labels are the seeded random labels number labels[i] (default i)."""
    feats = [SparseFeature(f"t{i}", n, 1) for i, n in enumerate(tables)]
    with atomic_dir(root) as tmp:
        writer = DatasetWriter(tmp, [f"d{i}" for i in range(windows[0][0].shape[1])], feats, {"source": "tests"})
        for i, (dense, sparse) in enumerate(windows):
            when = {"start": f"2024-01-{i + 1:02d}T00:00:00Z", "end": f"2024-01-{i + 2:02d}T00:00:00Z"} if days else {}
            ww = writer.window(label=f"w{i}", **when)
            seed = i if labels is None else labels[i]
            ww.append(dense, sparse, np.random.default_rng(seed).integers(0, 2, len(dense)).astype(np.int32))
            writer.add_window(ww)
        writer.finish()
    return Dataset(root)


def rows(rng, n, tables=(1000, 1000)):
    return (rng.normal(size=(n, 2)).astype(np.float32),
            np.stack([rng.integers(0, t, n) for t in tables], 1))


def part(window, idx):
    return window[0][idx], window[1][idx]


def join(*windows):
    return np.concatenate([w[0] for w in windows]), np.concatenate([w[1] for w in windows])


def test_window_sample_is_the_rows_whose_hash_the_modulus_divides(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    ds = write(tmp_path / "d", [rows(rng, 3000)])
    dense, sparse, _ = ds.arrays(0)
    everything = [hash_reference(d, s) for d, s in zip(dense, sparse)]
    for modulus in (1, 4, 64):
        monkeypatch.setattr(rowsample, "CHUNK_ROWS", 700)  # chunks do not change the sample
        got = [int(h) for h in rowsample.window_sample(ds, 0, modulus)]
        assert got == [h for h in everything if h % modulus == 0]
    assert rowsample.modulus_for(4096) == 1 and rowsample.modulus_for(4097) == 2
    assert rowsample.modulus_for(10 ** 9) == 262144


def test_recut_windows_holding_training_rows_are_recognised(tmp_path):
    """QA 7: an evaluation window holding every training row plus one more passed as held-out
    (window fingerprints match whole windows only). Windows cut anew are recognised by their rows:
    at a tenth of their rows or more, not at 5%; rows the model did not see are held-out."""
    rng = np.random.default_rng(2)
    train, fresh = rows(rng, 20000), rows(rng, 20000)
    ds = write(tmp_path / "d", [
        train,                                                       # 0: the training window
        join(train, part(fresh, slice(0, 1))),                       # 1: every training row and one more
        join(part(train, slice(0, 10000)), part(fresh, slice(0, 10000))),  # 2: half of them
        join(part(train, slice(0, 1000)), part(fresh, slice(0, 19000))),   # 3: 5%
        fresh,                                                       # 4: held out
    ])
    info = {"row_sample": rowsample.record(ds, [0], [])}
    assert info["row_sample"]["modulus"] == 8 and info["row_sample"]["repeat_share"] == 0
    assert seen_in_training(info, ds, [1, 2, 3, 4]) == {1: "training", 2: "training"}
    share = rowsample.learned_share(info["row_sample"], ds, 2)
    assert share[0] == "training" and share[1] == pytest.approx(0.5, abs=0.05)
    val = {"row_sample": rowsample.record(ds, [4], [0])}  # validation rows are said as such
    assert seen_in_training(val, ds, [1, 2]) == {1: "validation", 2: "training"}
    manifest = {"source": info}  # an artifact carries the record in its manifest's source
    assert seen_in_training(manifest, ds, [1, 4]) == {1: "training"}


def test_data_whose_rows_repeat_is_not_judged_by_rows(tmp_path):
    """Few features of few values repeat rows everywhere: every window would look learned from."""
    rng = np.random.default_rng(3)

    def few(n):
        return np.zeros((n, 2), np.float32), rng.integers(0, 3, (n, 2))

    ds = write(tmp_path / "d", [few(5000), few(5000)], tables=(3, 3))
    record = rowsample.record(ds, [0], [])
    assert record["repeat_share"] > 0.9
    assert rowsample.learned_share(record, ds, 1) is None and seen_in_training({"row_sample": record}, ds, [1]) == {}


def test_a_hand_edited_record_is_no_record(tmp_path):
    rng = np.random.default_rng(4)
    train = rows(rng, 500)
    ds = write(tmp_path / "d", [train, join(train, rows(rng, 1))])
    good = rowsample.record(ds, [0], [])
    assert rowsample.learned_share(good, ds, 1)[0] == "training"
    for bad in ({**good, "modulus": 3}, {**good, "modulus": "1"}, {**good, "repeat_share": None},
                {**good, "modulus": 2 ** 65}, {**good, "modulus": 2 ** 63},  # (QA 9a item 6: exit 4 before)
                {**good, "train": "not base64!"}, {**good, "train": base64.b64encode(b"1234567").decode()},
                {**good, "train": 5}, [good], "x", None):
        assert rowsample.learned_share(bad, ds, 1) is None
    few = write(tmp_path / "few", [train, part(train, slice(0, rowsample.MIN_SAMPLED - 1))])
    assert rowsample.learned_share(rowsample.record(few, [0], []), few, 1) is None  # too few rows to judge


def test_one_row_repeated_in_a_held_out_window_counts_once(tmp_path):
    """QA 9a item 1: 60 copies of one training row (1.5% of a held-out window) read as 10.6% training
    rows, because every copy lands in the window's sample; rows are counted once now."""
    rng = np.random.default_rng(5)
    train, fresh = rows(rng, 4000), rows(rng, 4000)
    info = {"row_sample": None}
    ds = write(tmp_path / "probe", [train])
    info["row_sample"] = rowsample.record(ds, [0], [])
    sampled = [i for i, h in enumerate(rowsample.row_hashes(*train)) if h % info["row_sample"]["modulus"] == 0]
    copies = part(train, [sampled[0]] * 60)
    ds = write(tmp_path / "d", [train, join(fresh, copies)])
    assert seen_in_training(info, ds, [1]) == {}
    assert rowsample.learned_share({**info["row_sample"]}, ds, 1) is None


def test_days_after_the_training_period_are_held_out_whatever_their_rows_repeat(tmp_path):
    """QA 9a item 2: daily snapshots (one row per entity a day, only labels change) matched the
    training day's rows 100% and every later day was refused as training data. A calendar window
    outside the training windows' period is held out by time; inside it, rows still decide."""
    rng = np.random.default_rng(6)
    snapshot = rows(rng, 3000)
    ds = write(tmp_path / "d", [snapshot, snapshot, snapshot], days=True)
    record = rowsample.record(ds, [1], [])
    assert record["span"] == ["2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00"]
    assert seen_in_training({"row_sample": record}, ds, [0, 2]) == {}  # the day before and the day after
    # with the row fingerprints a model records (identical daily files): still held out by time, as
    # their labels are the day's own; a copy of the training day (its labels too) is refused
    from lowprec.data.windows import rows_fingerprint

    model = {"row_sample": record, "row_fingerprints": {"train": [rows_fingerprint(ds, 1)], "val": []}}
    assert seen_in_training(model, ds, [0, 2]) == {}
    copy = write(tmp_path / "c", [snapshot, snapshot, snapshot], days=True, labels=[0, 1, 1])
    assert seen_in_training(model, copy, [0, 2]) == {2: "training"}
    from lowprec.data.dataset import window_files

    window_files(copy.root, 2)["labels"].unlink()  # (drift: a day whose labels come later is judged without them)
    assert seen_in_training(model, copy, [2]) == {}
    untimed = write(tmp_path / "u", [snapshot, snapshot])  # (without times: only the rows to go by)
    assert seen_in_training({"row_sample": rowsample.record(untimed, [0], [])}, untimed, [1]) == {1: "training"}
