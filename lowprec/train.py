"""Training the float DLRM on chosen windows of a prepared dataset.

Dense parameters use Adam; embedding tables get sparse gradients and SparseAdam, so a step touches
only the rows in the batch (the tables can have millions of rows). Everything random (init, chunk
and row order) comes from `seed`, so the same data, config and seed give the same weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from lowprec.data.batches import count_rows, iter_batches
from lowprec.data.dataset import Dataset, DatasetMeta
from lowprec.errors import InputError
from lowprec.evaluation.metrics import _entropy
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.model.dlrm import DLRM


@dataclass(frozen=True)
class TrainConfig:
    windows: tuple[int, ...]
    epochs: int = 2
    batch_size: int = 512
    lr: float = 1e-3
    sparse_lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64, 16)
    top_mlp: tuple[int, ...] = (64, 32)
    embedding: str = "dense"  # backend SPEC for every table ...
    table_embedding: dict[str, str] = field(default_factory=dict)  # ... unless named here

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch size must be >= 1")
        if self.lr <= 0 or self.sparse_lr <= 0:
            raise InputError("learning rates must be > 0")
        if not self.windows:
            raise InputError("no training windows selected")


def model_config_for(meta: DatasetMeta, cfg: TrainConfig) -> DLRMConfig:
    unknown = sorted(set(cfg.table_embedding) - set(meta.sparse_names))
    if unknown:
        raise InputError(f"--table-embedding names tables the dataset lacks: {unknown} "
                         f"(tables: {meta.sparse_names})")
    tables = tuple(
        TableConfig(f.name, f.num_embeddings, f.hotness, cfg.table_embedding.get(f.name, cfg.embedding))
        for f in meta.sparse
    )
    bottom = tuple(cfg.bottom_mlp[:-1]) + (cfg.embedding_dim,) if cfg.bottom_mlp else (cfg.embedding_dim,)
    return DLRMConfig(len(meta.dense_names), tables, cfg.embedding_dim, bottom, tuple(cfg.top_mlp),
                      tuple(meta.dense_names))


def check_compatible(config: DLRMConfig, meta: DatasetMeta, where: str) -> None:
    """The model's tables and dense width must match the dataset's, table by table."""
    if config.dense_in != len(meta.dense_names):
        raise InputError(f"{where}: model takes {config.dense_in} dense features, dataset has "
                         f"{len(meta.dense_names)}")
    if len(config.tables) != len(meta.sparse):
        raise InputError(f"{where}: model has {len(config.tables)} tables, dataset has "
                         f"{len(meta.sparse)} sparse features")
    for t, f in zip(config.tables, meta.sparse):
        if (t.name, t.num_embeddings, t.hotness) != (f.name, f.num_embeddings, f.hotness):
            raise InputError(
                f"{where}: table {t.name!r} ({t.num_embeddings} rows, hotness {t.hotness}) does not "
                f"match dataset feature {f.name!r} ({f.num_embeddings} rows, hotness {f.hotness})")


def _optimizers(model: DLRM, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    sparse = [p for m in model.embeddings for p in m.parameters() if _is_sparse(m, p)]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=cfg.sparse_lr))
    return opts


def _is_sparse(module: nn.Module, p: torch.nn.Parameter) -> bool:
    return any(getattr(m, "sparse", False) and m.weight is p for m in module.modules()
               if isinstance(m, nn.EmbeddingBag))


def train(ds: Dataset, cfg: TrainConfig, progress: Callable[[int], Any] | None = None,
          init: DLRM | None = None) -> tuple[DLRM, dict[str, Any]]:
    """Train a DLRM (new, or continue `init`) on cfg.windows; returns the model and provenance."""
    torch.manual_seed(cfg.seed)
    model = init if init is not None else DLRM(model_config_for(ds.meta, cfg))
    check_compatible(model.config, ds.meta, str(ds.root))
    opts = _optimizers(model, cfg)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    started, seen, last_loss, last_ne = time.time(), 0, float("nan"), float("nan")
    for epoch in range(cfg.epochs):
        running, n, pos = 0.0, 0, 0.0
        for batch in iter_batches(ds, list(cfg.windows), cfg.batch_size, shuffle=True,
                                  seed=cfg.seed * 1000 + epoch):
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch.dense, batch.sparse), batch.labels)
            loss.backward()
            for o in opts:
                o.step()
            running += float(loss.detach()) * len(batch)
            pos += float(batch.labels.sum())
            n += len(batch)
            if progress is not None:
                progress(len(batch))
        last_loss = running / max(n, 1)
        last_ne = last_loss / _entropy(pos / n) if n else float("nan")
        seen += n
    model.eval()
    info = {
        "train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "data": str(ds.root),
        "rows_seen": seen,
        "final_epoch_logloss": last_loss,
        "final_epoch_ne": last_ne,  # >= 1: worse than the base rate (the CLI warns)
        "seconds": round(time.time() - started, 2),
    }
    return model, info


def total_steps_rows(ds: Dataset, cfg: TrainConfig) -> int:
    return count_rows(ds, list(cfg.windows)) * cfg.epochs
