"""Training the float DLRM on chosen windows of a prepared dataset.

Tables train in FBGEMM's fused CPU training TBE with row-wise Adagrad by default
(`optimizer="rowwise-adagrad"`, lowprec.training.fused_tables), or, for comparison, as per-table
EmbeddingBags with sparse gradients and SparseAdam (`optimizer="sparse-adam"`); the MLPs use Adam.
Either way the saved model has the same per-table modules and state-dict keys.

A new model's output bias starts at the logit of the training windows' positive rate. With
`val_windows`, every epoch is scored there; training stops after `patience` epochs without a
lower validation NE and the best epoch's weights are kept. Epochs by default (`epochs=None`): one
without validation windows, up to MAX_VALIDATED_EPOCHS with them (early stopping decides): on the
latent data a second epoch over-fits the tables (reports/latent_synth.md, "Training defaults"). The provenance (`info`) holds each
epoch's training NE/AUC (over the epoch's own batches, as they were scored while training) and
validation NE/AUC, and the chosen epoch's. Training (or validation) windows with one label class
are refused before training; a step whose outputs are NaN or Inf, or final weights that are, stop
training with an InputError naming the learning rates (the CLI writes nothing). Everything random (init, chunk and row order) comes
from `seed`, so the same data, config and seed give the same weights on one host (across CPU
instruction sets they can differ in the last digits: FBGEMM picks its kernels, and so its summation
order, by ISA).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lowprec.data.batches import count_rows, iter_batches
from lowprec.data import rowsample
from lowprec.data.dataset import Dataset, DatasetMeta
from lowprec.data.windows import fingerprints, format_windows
from lowprec.errors import InputError
from lowprec.evaluation.scoring import evaluate
from lowprec.evaluation.metrics import BinaryStats
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.model.dlrm import DLRM
from lowprec.progress import Update
from lowprec.training.steps import OPTIMIZERS, make_step

DEFAULT_TABLE_LR = {"rowwise-adagrad": 5e-2, "sparse-adam": 1e-2}
MAX_VALIDATED_EPOCHS = 5


@dataclass(frozen=True)
class TrainConfig:
    windows: tuple[int, ...]
    epochs: int | None = None  # None: 1, or up to MAX_VALIDATED_EPOCHS with val_windows
    batch_size: int = 512
    lr: float = 1e-3
    sparse_lr: float | None = None  # the tables' learning rate; None: DEFAULT_TABLE_LR[optimizer]
    weight_decay: float = 0.0  # the MLPs' (Adam)
    embedding_l2: float = 0.0  # + l2 * mean_b Σ_t ||pooled_t||² in the loss (lowprec.training.steps)
    adagrad_init: float = 0.0  # tables' row-wise Adagrad accumulators start here (lowprec.training.fused_tables)
    embedding_prior: float = 0.0  # λ of the inverse-frequency row prior (lowprec.training.id_prior)
    seed: int = 0
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64, 16)
    top_mlp: tuple[int, ...] = (64, 32)
    embedding: str = "dense"  # backend SPEC for every table ...
    table_embedding: dict[str, str] = field(default_factory=dict)  # ... unless named here
    optimizer: str = "rowwise-adagrad"  # tables: FBGEMM fused TBE, or "sparse-adam"
    val_windows: tuple[int, ...] = ()  # score each epoch here; keep the best epoch
    patience: int = 1  # stop after this many epochs without a better validation NE
    init_bias: bool = True  # a new model's output bias starts at logit(training positive rate)

    def __post_init__(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise InputError("epochs and batch size must be >= 1")
        if not self.windows:
            raise InputError("no training windows selected")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        if not all(math.isfinite(x) and x > 0 for x in (self.lr, self.table_lr)):
            raise InputError(f"learning rates must be finite and > 0 (lr {self.lr}, sparse_lr {self.sparse_lr})")
        if self.patience < 1:
            raise InputError("patience must be >= 1")
        if not all(math.isfinite(x) and x >= 0 for x in (self.embedding_l2, self.weight_decay, self.adagrad_init,
                                                          self.embedding_prior)):
            raise InputError("embedding_l2, weight_decay, adagrad_init and embedding_prior must be finite and >= 0")
        if self.adagrad_init and self.optimizer != "rowwise-adagrad":
            raise InputError("adagrad_init applies to --optimizer rowwise-adagrad only")
        overlap = sorted(set(self.windows) & set(self.val_windows))
        if overlap:
            raise InputError(f"validation windows {overlap} are also training windows")

    @property
    def validation_order_warning(self) -> str | None:
        """Validation windows before the last training window (allowed: overlap is what is refused):
        the kept epoch is then chosen on data older than some the model learned from, so validation
        NE is not a time-split estimate of the next window's."""
        early = sorted(w for w in self.val_windows if w < max(self.windows, default=-1))
        if not early:
            return None
        return (f"validation window(s) {format_windows(early)} come before training window "
                f"{max(self.windows)}: the kept epoch is chosen on older data than the model learned from; "
                f"validate on windows after the training ones for a held-out-in-time estimate")

    @property
    def max_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return MAX_VALIDATED_EPOCHS if self.val_windows else 1

    @property
    def table_lr(self) -> float:
        return self.sparse_lr if self.sparse_lr is not None else DEFAULT_TABLE_LR[self.optimizer]


def model_config_for(meta: DatasetMeta, cfg: TrainConfig) -> DLRMConfig:
    unknown = sorted(set(cfg.table_embedding) - set(meta.sparse_names))
    if unknown:
        raise InputError(f"--table-embedding names tables the dataset lacks: {unknown} "
                         f"(tables: {meta.sparse_names})")
    tables = tuple(
        TableConfig(f.name, f.num_embeddings, f.hotness, cfg.table_embedding.get(f.name, cfg.embedding),
                    f.encoding)
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
    from lowprec.data.encoding import check_encodings

    check_encodings([getattr(t, "encoding", None) for t in config.tables], meta, where)


def seen_in_training(info: dict[str, Any] | None, ds: Dataset, windows: list[int] | tuple[int, ...]) -> dict[int, str]:
    """Those of `windows` (of `ds`) that the model whose provenance is `info` (a float model's info,
    or an artifact's manifest, whose `source` carries it) trained on ("training") or was selected on
    ("validation"), by their data fingerprints: the same window in any copy of the dataset, the same
    rows at any window number (row fingerprints), and a window a tenth or more of whose rows it learned
    from (sampled row hashes, lowprec.data.rowsample: a log cut into windows anew). Models trained
    before a record was kept know less; imported models (and their artifacts) nothing: empty."""
    def obj(x: Any) -> dict[str, Any]:  # (a hand-edited record of another type: no record)
        return x if isinstance(x, dict) else {}

    def strings(x: Any) -> set[str]:
        return {v for v in x if isinstance(v, str)} if isinstance(x, list) else set()

    info = obj(info)
    record = {**obj(info.get("source")), **info}  # (an artifact's manifest carries it in `source`)
    train, val = set(), set()
    for key in ("window_fingerprints", "row_fingerprints"):  # (rows: the same rows at another window number)
        prints = obj(record.get(key))
        train, val = train | strings(prints.get("train")), val | strings(prints.get("val"))
    sample = record.get("row_sample")
    if not train and not val and not sample:
        return {}
    out, seen = {}, train | val
    for w in windows:
        whole, rows = fingerprints(ds, w)
        # the same rows on a day outside the training period (daily snapshots of the same entities) are
        # held out by time, unless its labels are a training window's too: a copy
        later = rowsample.outside_span(sample, ds, w)
        if whole in seen or (rows in seen and (not later or rowsample.copied_labels(sample, ds, w))):
            out[w] = "training" if {whole, rows} & train else "validation"
        elif (share := rowsample.learned_share(sample, ds, w)) is not None:  # (some of its rows)
            out[w] = share[0]
    return out


def positive_rate(ds: Dataset, windows: tuple[int, ...], what: str = "training windows",
                  why: str = "a model cannot learn from one class and AUC is undefined") -> float:
    """Fraction of positive labels over `windows` (read from the memory-mapped label arrays);
    InputError naming them (`what`: their flag or recipe key) when they hold one label class only."""
    pos = rows = 0
    for w in windows:
        labels = ds.arrays(w)[2]
        pos += int(np.count_nonzero(np.asarray(labels)))
        rows += len(labels)
    if rows and pos in (0, rows):
        kind, value = ("positive", 0) if pos == 0 else ("negative", 1)
        raise InputError(f"{what} {format_windows(list(windows))} of {ds.root} hold no {kind} label "
                         f"(all {rows:,} labels are {value}): {why}; check the label column (a CSV schema's "
                         f"`positive` rule) or add windows")
    return pos / rows if rows else 0.5


@torch.no_grad()
def init_output_bias(model: DLRM, rate: float) -> None:
    """Start the output logit at the prior: bias = log(rate / (1 - rate)) (rate clipped to 1e-6)."""
    rate = min(max(rate, 1e-6), 1 - 1e-6)
    model.top[-1].bias.fill_(math.log(rate / (1 - rate)))


class _EpochStats:
    """Training NE/AUC over an epoch's batches, merged in blocks (a histogram per batch is slow)."""

    def __init__(self, block: int = 1 << 16):
        self.stats, self.block, self._p, self._y, self._n = BinaryStats(), block, [], [], 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self._p.append(torch.sigmoid(logits).numpy())
        self._y.append(labels.numpy())
        self._n += len(labels)
        if self._n >= self.block:
            self.flush()

    def flush(self) -> BinaryStats:
        if self._p:
            self.stats.update(np.concatenate(self._p), np.concatenate(self._y))
            self._p, self._y, self._n = [], [], 0
        return self.stats


def _metrics(stats: BinaryStats) -> dict[str, float]:
    return {"ne": stats.ne, "auc": stats.auc, "logloss": stats.logloss}


def _diverged(cfg: TrainConfig, where: str, what: str) -> InputError:
    penalties = [f"--{k.replace('_', '-')} {v}" for k, v in (("embedding_l2", cfg.embedding_l2),
                                                           ("embedding_prior", cfg.embedding_prior)) if v]
    return InputError(f"training diverged {where}: {what} are NaN or Inf; lower --lr ({cfg.lr}) / --sparse-lr "
                      f"({cfg.table_lr}){' or ' + ', '.join(penalties) if penalties else ''}. Nothing was written.")


def _run_epoch(step, ds: Dataset, cfg: TrainConfig, epoch: int, progress) -> BinaryStats:
    stats = _EpochStats()
    for n, batch in enumerate(iter_batches(ds, list(cfg.windows), cfg.batch_size, shuffle=True,
                                           seed=cfg.seed * 1000 + epoch)):
        logits = step.step(batch.dense, batch.sparse, batch.labels)
        if not bool(torch.isfinite(logits).all()):  # DMP: the global batch's logits, the same on every rank
            raise _diverged(cfg, f"at epoch {epoch + 1} step {n + 1}", "the model's outputs (and so its loss)")
        stats.add(logits, batch.labels)
        if progress is not None:
            progress(len(batch))
    return stats.flush()


def check_finite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that hold NaN or Inf."""
    return [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def train(ds: Dataset, cfg: TrainConfig, progress: Update | None = None,
          init: DLRM | None = None) -> tuple[DLRM, dict[str, Any]]:
    """Train a DLRM (new, or continue `init`) on cfg.windows; returns the model and provenance."""
    torch.manual_seed(cfg.seed)
    model = init if init is not None else DLRM(model_config_for(ds.meta, cfg))
    check_compatible(model.config, ds.meta, str(ds.root))
    rate = positive_rate(ds, cfg.windows)
    if cfg.val_windows:
        positive_rate(ds, cfg.val_windows, "validation windows",
                      "NE and AUC are undefined on one class, so no epoch could be chosen on them")
    if init is None and cfg.init_bias:
        init_output_bias(model, rate)
    weights = None
    if cfg.embedding_prior:
        from lowprec.training.id_prior import InverseFrequency, id_counts

        weights = InverseFrequency(id_counts(ds, list(cfg.windows)), model.hotness)
    step = make_step(model, cfg.optimizer, cfg.lr, cfg.table_lr, cfg.weight_decay, cfg.embedding_l2,
                     cfg.adagrad_init, cfg.embedding_prior, weights)
    started, seen, history, best, since_best = time.time(), 0, [], None, 0
    for epoch in range(cfg.max_epochs):
        step.scorer.train()
        train_stats = _run_epoch(step, ds, cfg, epoch, progress)
        seen += int(train_stats.weight)
        record = {"epoch": epoch + 1, "train": _metrics(train_stats)}
        if cfg.val_windows:
            val = evaluate(step.scorer, ds, list(cfg.val_windows)).overall
            record["validation"] = _metrics(val)
            if best is None or val.ne < best["validation"]["ne"]:
                best, since_best = record, 0
                step.keep()
            else:
                since_best += 1
        history.append(record)
        if since_best >= cfg.patience:
            break
    model = step.finish(restore_best=bool(cfg.val_windows))
    bad = check_finite_weights(model)
    if bad:  # e.g. a last step whose update overflowed: never save such a model
        raise _diverged(cfg, f"in epoch {len(history)}", f"weights {bad[:3]}{' ...' if len(bad) > 3 else ''}")
    best = best if cfg.val_windows else history[-1]
    model.eval()
    learned = {"train": list(cfg.windows), "val": list(cfg.val_windows)}
    prints = {w: fingerprints(ds, w) for ws in learned.values() for w in ws}  # (each window's files read once)
    info = {
        "train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
        | {"sparse_lr": cfg.table_lr, "epochs": cfg.max_epochs},
        "data": str(ds.root),
        # what the model learned from, or was selected on: scoring commands tell these windows apart
        # from held-out ones in any copy of the data (`seen_in_training`)
        "window_fingerprints": {k: [prints[w][0] for w in ws] for k, ws in learned.items()},
        "row_fingerprints": {k: [prints[w][1] for w in ws] for k, ws in learned.items()},  # (wherever they sit)
        "row_sample": rowsample.record(ds, list(cfg.windows), list(cfg.val_windows)),  # (rows, in any window)
        "rows_seen": seen,
        "train_positive_rate": rate,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "metrics": {k: v for k, v in best.items() if k != "epoch"},
        "history": history,
        "table_optimizer_state_bytes": step.state_bytes(),
        "final_epoch_logloss": history[-1]["train"]["logloss"],
        "final_epoch_ne": history[-1]["train"]["ne"],  # >= 1: worse than the base rate (the CLI warns)
        "seconds": round(time.time() - started, 2),
    }
    return model, info


def total_steps_rows(ds: Dataset, cfg: TrainConfig) -> int:
    return count_rows(ds, list(cfg.windows)) * cfg.max_epochs
