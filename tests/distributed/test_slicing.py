"""Rank slices and row-keyed bootstrap weights, without processes: the pieces that make a
data-parallel run reproduce one process."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec.data.batches import batch_sizes, count_batches, iter_batches
from lowprec.data.dataset import Dataset
from lowprec.distributed import fold_rows, span
from lowprec.evaluation.stats import PoissonBootstrap
from tests.helpers import make_tiny_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("slices") / "d", windows=3, rows=1000)
    return Dataset(root)


@given(n=st.integers(0, 50), world=st.integers(1, 7))
def test_spans_partition_the_batches(n, world):
    parts = [span(n, r, world) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


@pytest.mark.parametrize("batch,chunk", [(64, 256), (100, 256), (300, 1000), (7, 50)])
def test_rank_slices_concatenate_to_the_one_process_batches(ds, batch, chunk):
    windows = [0, 2, 1]
    whole = list(iter_batches(ds, windows, batch, chunk_rows=chunk))
    assert [len(b) for b in whole] == batch_sizes(ds, windows, batch, chunk_rows=chunk)
    assert sum(count_batches(ds, windows, batch, chunk)) == len(whole)
    for world in (2, 3):
        pieces = [b for r in range(world)
                  for b in iter_batches(ds, windows, batch, chunk_rows=chunk, span=span(len(whole), r, world))]
        assert len(pieces) == len(whole)
        for p, q in zip(pieces, whole):
            assert (p.window, p.row0) == (q.window, q.row0)
            assert np.array_equal(p.sparse.numpy(), q.sparse.numpy())
            assert np.array_equal(p.dense.numpy(), q.dense.numpy())


def test_max_rows_takes_whole_batches(ds):
    assert batch_sizes(ds, [0, 1], 300, max_rows=700) == [300, 300, 300]
    assert batch_sizes(ds, [0, 1], 300, max_rows=None) == [300, 300, 300, 100] * 2


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 9000), max_size=4), k=st.integers(1, 8))
def test_bootstrap_weights_depend_only_on_the_row(cuts, k):
    n = 9001
    one = PoissonBootstrap(k, seed=3, stream=5).weights(0, n)
    edges = [0, *sorted(set(cuts)), n]
    split = np.concatenate([PoissonBootstrap(k, seed=3, stream=5).weights(a, b - a)
                            for a, b in zip(edges, edges[1:])], axis=1)
    assert np.array_equal(one, split)
    assert not np.array_equal(one, PoissonBootstrap(k, seed=3, stream=6).weights(0, n))


def test_bootstrap_sums_of_a_split_match_one_pass():
    rng = np.random.default_rng(0)
    n = 5000
    y, a, b = rng.integers(0, 2, n).astype(float), rng.random(n), rng.random(n)
    whole = PoissonBootstrap(20, seed=1, stream=2)
    for i in range(0, n, 512):  # sequential batches: row0 defaults to the next row
        whole.update(y[i:i + 512], a[i:i + 512], b[i:i + 512], a[i:i + 512], b[i:i + 512])
    parts = []
    for lo, hi in ((0, 1536), (1536, n)):  # two ranks, cut on a batch boundary
        p = PoissonBootstrap(20, seed=1, stream=2)
        for i in range(lo, hi, 512):
            j = min(i + 512, hi)
            p.update(y[i:j], a[i:j], b[i:j], a[i:j], b[i:j], row0=i)
        parts.append(p.sums)
    assert np.allclose(parts[0] + parts[1], whole.sums, rtol=1e-13, atol=0)


def test_fold_rows_replays_sequential_sums():
    rows = np.random.default_rng(0).random((50, 3)) * 1e6
    acc = np.zeros(3)
    for r in rows:
        acc += r
    assert np.array_equal(fold_rows(rows, 3), acc)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=3), st.integers(1, 4), st.integers(1, 6),
       st.integers(0, 2**31))
def test_ordered_sum_gives_the_same_bits_for_any_rank_count(windows, ranks, block, seed):
    """Per-batch float vectors dealt to `ranks` ranks (each window split by `dist.span`), folded in
    the blocked order: bit for bit the slow reference (fold each block's batches, then the blocks)."""
    from lowprec import distributed as dist
    from lowprec.evaluation.merge import OrderedSum

    rng = np.random.default_rng(seed)
    n = sum(windows)
    deltas = rng.standard_normal((n, 3)) * 10.0 ** rng.integers(-8, 8, size=(n, 1))
    firsts = np.concatenate([[0], np.cumsum(windows)[:-1]])
    pieces = []
    for r in range(ranks):
        spans = [(f + a, f + b) for f, w in zip(firsts, windows) for a, b in [dist.span(w, r, ranks)]]
        s = OrderedSum(3, spans, block)
        for a, b in spans:
            for i in range(a, b):
                s.add(i, deltas[i])
        pieces.append(s.pieces())
    got = OrderedSum.fold(np.concatenate(pieces), 3)
    want = np.zeros(3)
    for k in range(0, n, block):
        acc = np.zeros(3)
        for i in range(k, min(k + block, n)):
            acc += deltas[i]
        want += acc
    assert got.tobytes() == want.tobytes()


def test_gather_rows_takes_a_rank_with_no_rows():
    """A rank with no batch of a window passes (0, d) rows: reshape(0, -1) used to fail
    (`eval --nproc 2` on a window of one batch)."""
    from lowprec.distributed import gather_rows

    assert gather_rows(np.zeros((0, 4))).shape == (0, 4)
    assert fold_rows(gather_rows(np.zeros((0, 4))), 4).tolist() == [0.0] * 4
