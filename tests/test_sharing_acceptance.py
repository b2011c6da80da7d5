"""Hash-sharing acceptance on real MovieLens, the cheap slice of tools/hash_sharing_sweep.py.

Train 1996-2014 (windows 0-18), evaluate 2016-2018 (windows 20-22), seed 0, default settings:
`robe:ratio=16,align=1` (the ROBE form that serves exactly on the TBE) keeps AUC within 0.005 of the
dense model, its int8 artifact within 0.006 with `inspect` compression >= 40x, and the int8
artifact's predictions stay within quantization error of the float model's. The full sweep (every
backend and ratio, synthetic data, exact ROBE, hot sharing) lives in the tool and
reports/hash_sharing.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import save_float_model
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.data.movielens import prepare_movielens
from lowprec.evaluation.scoring import predict
from lowprec.fileio import atomic_dir
from lowprec.evaluation.metrics import BinaryStats
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.train import TrainConfig, train

ML = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "movielens-latest-small"
pytestmark = pytest.mark.skipif(not (ML / "ratings.csv.gz").is_file(),
                                reason=f"MovieLens ml-latest-small not found at {ML.resolve()}")
TRAIN, EVAL = tuple(range(19)), [20, 21, 22]


def _scores(model, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    p, y = [], []
    for batch in iter_batches(ds, EVAL, 4096):
        p.append(predict(model, batch.dense, batch.sparse))
        y.append(batch.labels.numpy())
    return np.concatenate(p), np.concatenate(y)


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    return BinaryStats().update(p, y).auc


@pytest.mark.slow
def test_robe16_aligned_keeps_auc_and_int8_compresses_40x(tmp_path):
    with atomic_dir(tmp_path / "ml") as tmp:
        prepare_movielens(ML, tmp, period="year")
    ds = Dataset(tmp_path / "ml")
    dense, _ = train(ds, TrainConfig(windows=TRAIN, seed=0))
    robe, info = train(ds, TrainConfig(windows=TRAIN, seed=0, embedding="robe:ratio=16,align=1"))
    save_float_model(robe, tmp_path / "robe", info)
    manifest = convert(tmp_path / "robe", Plan.uniform(Precision.INT8), tmp_path / "robe-int8")
    runtime, _ = load_artifact(tmp_path / "robe-int8")

    p_dense, y = _scores(dense, ds)
    p_float, _ = _scores(robe, ds)
    p_int8, _ = _scores(runtime, ds)
    auc_dense, auc_float, auc_int8 = _auc(p_dense, y), _auc(p_float, y), _auc(p_int8, y)

    assert auc_dense - auc_float <= 0.005, (auc_dense, auc_float)
    assert auc_dense - auc_int8 <= 0.006, (auc_dense, auc_int8)
    assert manifest["compression"] >= 40, manifest["compression"]
    assert all(t["exact"] for t in manifest["tables"])  # aligned ROBE serves exactly
    assert np.abs(p_int8 - p_float).max() < 0.01
    assert abs(auc_int8 - auc_float) < 0.001
