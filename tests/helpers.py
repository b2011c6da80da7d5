"""Small builders shared by tests: a tiny prepared dataset with a learnable signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowprec.data.dataset import DatasetWriter, SparseFeature
from lowprec.fileio import atomic_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def make_tiny_dataset(out: Path, windows: int = 3, rows: int = 2000, seed: int = 0,
                      tables: tuple[int, ...] = (50, 20, 8), hotness: tuple[int, ...] | None = None,
                      n_dense: int = 4) -> Path:
    """Write a dataset whose labels depend on dense features and per-id weights."""
    rng = np.random.default_rng(seed)
    hotness = hotness or tuple(1 for _ in tables)
    feats = [SparseFeature(f"t{i}", n, h) for i, (n, h) in enumerate(zip(tables, hotness))]
    id_weight = [rng.normal(0, 1.0, n) for n in tables]
    dense_w = rng.normal(0, 1.0, n_dense)
    with atomic_dir(out) as tmp:
        writer = DatasetWriter(tmp, [f"d{i}" for i in range(n_dense)], feats, {"source": "tests"})
        for w in range(windows):
            ww = writer.window(label=f"w{w}", start=f"2020-01-{w + 1:02d}", end=f"2020-01-{w + 2:02d}")
            dense = rng.normal(0, 1, (rows, n_dense)).astype(np.float32)
            cols, logit = [], dense @ dense_w
            for f, wt in zip(feats, id_weight):
                ids = rng.integers(0, f.num_embeddings, (rows, f.hotness))
                if f.hotness > 1:
                    ids[:, 1:][rng.random((rows, f.hotness - 1)) < 0.5] = -1
                logit = logit + np.where(ids >= 0, wt[np.maximum(ids, 0)], 0).sum(1)
                cols.append(ids)
            labels = (rng.random(rows) < 1 / (1 + np.exp(-(logit - 0.5)))).astype(np.int32)
            ww.append(dense, np.concatenate(cols, 1), labels)
            writer.add_window(ww)
        writer.finish()
    return out


def random_float_model(ds, out: Path, embeddings=("dense", "dense", "dense"), dim: int = 8, seed: int = 0) -> Path:
    """Save a random float model for `ds` whose embeddings are large enough that every part moves
    the logits (export and serving tests compare forms of it)."""
    import torch

    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.model.config import DLRMConfig, TableConfig
    from lowprec.model.dlrm import DLRM

    meta = ds.meta
    tables = tuple(TableConfig(f.name, f.num_embeddings, f.hotness, e) for f, e in zip(meta.sparse, embeddings))
    torch.manual_seed(seed)
    model = DLRM(DLRMConfig(len(meta.dense_names), tables, dim, (16, dim), (16, 8), tuple(meta.dense_names)))
    with torch.no_grad():
        for p in model.embeddings.parameters():
            p.normal_(0, 0.5)
    save_float_model(model, out)
    return out


def run_cli(*args):
    """Invoke the lowprec CLI in this process (click's CliRunner); arguments are str()-ed."""
    from click.testing import CliRunner

    from lowprec.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def trained_tiny(root: Path, cfg, **data):
    """make_tiny_dataset(root / "data", **data) and a float model trained on it with TrainConfig
    `cfg`, saved at root / "model": (dataset, model)."""
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.data.dataset import Dataset
    from lowprec.train import train

    ds = Dataset(make_tiny_dataset(root / "data", **data))
    model, info = train(ds, cfg)
    save_float_model(model, root / "model", info)
    return ds, model


def trained_search_setup(root: Path, rows: int, tables: tuple[int, ...], epochs: int):
    """(root, dataset, trained float model saved at root/model, calibration on window 2 with row
    counts as float tensors): what the search tests measure sensitivity on."""
    import torch

    from lowprec.calibrate import CalibConfig, calibrate
    from lowprec.train import TrainConfig

    ds, model = trained_tiny(root, TrainConfig(windows=(0, 1), epochs=epochs), windows=4, rows=rows, tables=tables,
                             hotness=(1, 2, 1))
    calib = calibrate(model, ds, CalibConfig((2,)))
    calib["row_counts"] = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in calib["row_counts"].items()}
    return root, ds, model, calib


def resign_manifest(m: dict) -> dict:
    """A hand-edited artifact manifest given its new content hash, as a deliberate editor would: for
    tests of what the loader checks beyond that hash (lowprec.checkpoint.artifact.content_sha256)."""
    from lowprec.checkpoint.artifact import CONTENT, content_sha256

    if isinstance(m, dict) and CONTENT in m:
        m[CONTENT] = content_sha256(m)
    return m
