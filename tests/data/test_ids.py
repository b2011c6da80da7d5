"""FeatureIds (ids in FBGEMM's table-major layout): the conversion, the loader, the runtime's input."""

import numpy as np
import pytest
import torch

from helpers import make_tiny_dataset
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import save_float_model
from lowprec.data.batches import iter_batches, reads_feature_ids
from lowprec.data.dataset import Dataset
from lowprec.data.ids import FeatureIds, IdOutOfRange, TableMajor
from lowprec.evaluation.scoring import evaluate
from lowprec.model.dlrm import DLRM
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.train import TrainConfig, model_config_for


def reference_layout(sparse: np.ndarray, hotness: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Slow and obvious: for each table, for each sample, its slots in order; a bag per (table, sample)."""
    indices, offsets, col = [], [0], 0
    for h in hotness:
        for b in range(sparse.shape[0]):
            for j in range(h):
                indices.append(int(sparse[b, col + j]))
            offsets.append(len(indices))
        col += h
    return indices, offsets


@pytest.mark.parametrize("hotness", [(1, 1, 1), (4, 4), (1, 3, 2)], ids=str)
def test_from_matrix_equals_reference(hotness):
    g = torch.Generator().manual_seed(0)
    sparse = torch.randint(0, 1000, (37, sum(hotness)), generator=g)
    sparse[torch.rand(sparse.shape, generator=g) < 0.3] = -1
    ids = FeatureIds.from_matrix(sparse, hotness)
    want_idx, want_off = reference_layout(sparse.numpy(), hotness)
    assert ids.indices.dtype == ids.offsets.dtype == torch.int32
    assert ids.indices.tolist() == want_idx
    assert ids.offsets.tolist() == want_off
    assert ids.batch == 37 and ids.hotness == hotness
    assert torch.equal(ids.to_matrix(), sparse)
    col = 0
    for t, h in enumerate(hotness):
        assert torch.equal(ids.table(t).long(), sparse[:, col:col + h])
        col += h


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_builds_the_same_feature_ids(tmp_path, shuffle):
    hotness = (1, 3, 2)
    ds = Dataset(make_tiny_dataset(tmp_path / "d", windows=2, rows=500, tables=(50, 20, 8), hotness=hotness))
    # chunk_rows not a multiple of the batch size: batches end at chunk borders too
    batches = list(iter_batches(ds, [0, 1], batch_size=96, shuffle=shuffle, seed=3, chunk_rows=200,
                                feature_ids=True))
    assert sum(len(b) for b in batches) == 1000
    for b in batches:
        want_idx, want_off = reference_layout(b.sparse.numpy(), hotness)
        assert b.ids.indices.tolist() == want_idx
        assert b.ids.offsets.tolist() == want_off
    assert all(b.ids is None for b in iter_batches(ds, [0], batch_size=96))


@pytest.mark.parametrize("hotness", [(1, 1, 1), (2, 2), (1, 3, 2)], ids=str)
def test_a_one_row_batch_is_the_layout_the_runtime_reads(hotness):
    """A window of 4096k + 1 rows ends in a one-row batch: with one hotness for every table its ids
    were a strided view (one id a table, `rows` apart), and the runtime refused them as another
    layout, so eval of an artifact failed on such windows (exit 2)."""
    sparse = np.arange(5 * sum(hotness), dtype=np.int64).reshape(5, sum(hotness))
    major = TableMajor(sparse, hotness)
    for rows in (slice(4, 5), slice(0, 1), np.array([2]), slice(1, 3)):
        ids = major.take(rows)
        ids.check()
        assert ids.indices.is_contiguous()
        assert ids.indices.tolist() == reference_layout(sparse[rows].reshape(-1, sum(hotness)), hotness)[0]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    ds = Dataset(make_tiny_dataset(root / "d", windows=2, rows=700, hotness=(1, 3, 2)))
    torch.manual_seed(0)
    model = DLRM(model_config_for(ds.meta, TrainConfig(windows=(0,))))
    save_float_model(model, root / "m")
    convert(root / "m", Plan.uniform(Precision.INT4), root / "a")
    return ds, model, load_artifact(root / "a")[0]


def test_runtime_reads_feature_ids_and_matrix_alike(artifact):
    ds, model, runtime = artifact
    assert reads_feature_ids(runtime) and not reads_feature_ids(model)
    batch = next(iter_batches(ds, [1], 256, feature_ids=True))
    assert batch.ids_for(runtime) is batch.ids and batch.ids_for(model) is batch.sparse
    with torch.inference_mode():
        fast = runtime(batch.dense, batch.ids)
        torch.testing.assert_close(fast, runtime(batch.dense, batch.sparse), rtol=0, atol=0)
        runtime.embeddings._simple = False  # the general (per-table transform) path
        try:
            torch.testing.assert_close(fast, runtime(batch.dense, batch.ids), rtol=1e-6, atol=1e-6)
        finally:
            runtime.embeddings._simple = True
    # evaluate hands the runtime the loader's FeatureIds: same numbers as on the matrix
    got = evaluate(runtime, ds, [1]).overall.summary()

    class MatrixOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = runtime

        def forward(self, dense, sparse):
            assert isinstance(sparse, torch.Tensor)
            return self.inner(dense, sparse)

    want = evaluate(MatrixOnly(), ds, [1]).overall.summary()
    assert got["auc"] == want["auc"] and got["logloss"] == pytest.approx(want["logloss"], rel=1e-12)


def test_runtime_rejects_ids_of_another_layout(artifact):
    ds, _, runtime = artifact
    batch = next(iter_batches(ds, [1], 16, feature_ids=True))
    wrong = FeatureIds.from_matrix(batch.sparse[:, :4], (1, 3))
    with pytest.raises(ValueError, match="hotness"):
        runtime(batch.dense, wrong)
    with pytest.raises(ValueError, match="shape"):
        runtime(batch.dense, batch.sparse[:, :5])


HOTNESS = (1, 3, 1)


# The numpy assignment into int32 cast unsafely: 2**32 + 5 became id 5, 2**32 - 1 a -1 pad, 1.5 id 1,
# while the same matrix handed to the runtime was refused (IdOutOfRange).
@pytest.mark.parametrize("value,table,why", [
    (2**32 + 5, "table 1", "does not fit int32"),       # used to wrap into id 5
    (2**32 - 1, "table 1", "does not fit int32"),       # used to become a -1 pad
    (-(2**31) - 1, "table 1", "does not fit int32"),
])
def test_from_matrix_refuses_ids_beyond_int32(value, table, why):
    ids = torch.randint(-1, 8, (6, 5), generator=torch.Generator().manual_seed(0))
    m = ids.numpy().copy()
    m[3, 2] = value
    with pytest.raises(IdOutOfRange, match=rf"{table}: id {value} \(batch row 3, id column 2\) {why}"):
        FeatureIds.from_matrix(m, HOTNESS)
    with pytest.raises(IdOutOfRange, match=rf"table 't1': id {value} "):
        FeatureIds.from_matrix(torch.from_numpy(m), HOTNESS, names=("t0", "t1", "t2"))


def test_from_matrix_refuses_non_integer_ids():
    ids = torch.randint(-1, 8, (6, 5), generator=torch.Generator().manual_seed(0))
    m = ids.numpy().astype(np.float64)
    m[2, 4] = 1.5
    with pytest.raises(IdOutOfRange, match=r"table 2: id 1.5 \(batch row 2, id column 4\) is float64"):
        FeatureIds.from_matrix(m, HOTNESS)
    with pytest.raises(IdOutOfRange, match=r"table 0: id 1.0 .*is float64, not an integer dtype"):
        FeatureIds.from_matrix(np.ones((2, 5)), HOTNESS)  # integral floats too: as the runtime refuses them
    with pytest.raises(IdOutOfRange, match="ids are bool"):
        FeatureIds.from_matrix(np.ones((2, 5), dtype=bool), HOTNESS)
    wide = FeatureIds.from_matrix(ids.numpy().astype(np.int64), HOTNESS)  # in range: as before
    assert torch.equal(wide.to_matrix(), ids)
