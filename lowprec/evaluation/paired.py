"""The streamed paired evaluation of one window: reference and candidate scored on the same rows.

One pass over the window's batches scores both models and accumulates, in memory that does not
grow with the window: each model's `BinaryStats` (NE, log-loss, AUC, calibration; fixed-size score
histograms), the K Poisson-bootstrap replicate sums of the paired NE and calibration gaps, the
delta-method moments, the activation clipping counts of every statically calibrated int8 layer of
the candidate (forward pre-hooks), and this window's id frequencies per table.

DeLong's test needs each row's placement among the other class, which is only known once the
window's histograms are complete. The pass therefore spills (score_ref, score_cand, label) as
9-byte records to a temporary file beside the database, and a second pass reads it back batch by
batch (`np.fromfile`, no memory map, so resident memory stays at one batch) and looks each score's
placement up in tables derived from the histograms. The file is deleted when the window is done;
a leftover from a killed run is removed by the next run.

Data-parallel (torchrun): each rank scores its batch-aligned share of every window, bootstrap
weights are keyed by the row's index in the window (`stats.PoissonBootstrap`); integer parts
merge by all-reduce and float sums (per batch) in one canonical order (`lowprec.evaluation.merge`),
so N ranks give the one-process numbers bit for bit. DeLong's second pass reads the spill batch by
batch for the same reason.

The per-table quantization error is computed once per run (`TableError`): per row, the squared
distance between the float table and the artifact's dequantized TBE rows; each window weights it
by its own id frequencies (`stats.weighted_row_error`). Tables served dense (one physical table,
identity ids) and tiered tables (each id's row read from its own tier, at that tier's precision:
`tiered_rows_error`) are compared; other serving forms (sharing) report null with a note.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from lowprec import distributed as dist
from lowprec.data.batches import count_batches, iter_batches, reads_feature_ids
from lowprec.data.dataset import PAD_ID, Dataset
from lowprec.evaluation import merge, stats
from lowprec.evaluation.scoring import predict
from lowprec.evaluation.metrics import BinaryStats, score_bins
from lowprec.progress import Update
from lowprec.tmpnames import tmp_prefix
from lowprec.serve.tables import table_codec
from lowprec.precision import Precision

SPILL_DTYPE = np.dtype([("ref", "<f4"), ("cand", "<f4"), ("y", "u1")])
ROW_CHUNK = 1 << 18  # table rows dequantized at a time


@dataclass(frozen=True)
class PairedConfig:
    batch_size: int = 4096
    replicates: int = 200
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


class ClipMonitor:
    """Counts input elements outside each static int8 layer's representable range (pre-hooks)."""

    def __init__(self, model: torch.nn.Module):
        self.ranges = {name: m.input_bounds for name, m in model.linear_layers().items()
                       if getattr(m, "input_bounds", None) is not None}
        self.modules = {n: m for n, m in model.linear_layers().items() if n in self.ranges}
        self.counts: dict[str, list[float]] = {}
        self._hooks: list[Any] = []
        self._seeing = True

    def __enter__(self) -> "ClipMonitor":
        self.counts = {n: [0, 0, np.inf, -np.inf] for n in self.ranges}  # clipped, total, min, max
        self._hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: self._see(n, args[0]))
                       for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes that are not the window's scoring (an observer re-running the candidate's
        layers on a subsample, lowprec.drift.attribution) are not counted: they counted its rows again."""
        self._seeing = False
        try:
            yield
        finally:
            self._seeing = True

    def _see(self, name: str, x: torch.Tensor) -> None:
        if not self._seeing:
            return
        lo, hi = self.ranges[name]
        c = self.counts[name]
        c[0] += int(((x < lo) | (x > hi)).sum())
        c[1] += x.numel()
        if x.numel():
            c[2], c[3] = min(c[2], float(x.min())), max(c[3], float(x.max()))

    def rates(self) -> dict[str, dict[str, Any]]:
        return {n: {"clip_rate": c[0] / c[1] if c[1] else None, "clipped": c[0], "elements": c[1],
                    "range": list(self.ranges[n]),
                    "observed": [c[2], c[3]] if c[1] else None} for n, c in self.counts.items()}


def dequantize_rows(raw: torch.Tensor, precision: Precision, dim: int) -> torch.Tensor:
    """FBGEMM inference-TBE rows (uint8) of a physical table -> float rows (rows, dim)."""
    return table_codec(precision).decode(raw, dim).float()


@dataclass
class TableError:
    """Per-row squared quantization error of every dense-served table (None where not comparable)."""

    rows: dict[str, tuple[np.ndarray, np.ndarray] | None]  # name -> (row error, row norm²)
    dim: int
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_models(cls, reference: torch.nn.Module, candidate: torch.nn.Module) -> "TableError":
        config = candidate.config
        names = config.table_names
        emb = getattr(candidate, "embeddings", candidate)
        if not hasattr(emb, "table_weights") or not hasattr(reference, "embeddings"):
            return cls({n: None for n in names}, config.embedding_dim,
                       {n: "models do not expose float and TBE tables" for n in names})
        weights = emb.table_weights()
        index = {t.key: i for i, t in enumerate(emb.physical)}
        out, notes = {}, {}
        for t, name in enumerate(names):
            try:
                out[name] = _table_rows_error(reference, emb, weights, index, t, config.embedding_dim)
            except (_NotComparable, ImportError) as exc:
                out[name], notes[name] = None, str(exc)
        return cls(out, config.embedding_dim, notes)

    def zero_counts(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(len(v[0]), dtype=np.float64) for n, v in self.rows.items() if v is not None}

    def weighted(self, counts: dict[str, np.ndarray]) -> dict[str, dict[str, Any] | None]:
        return {n: (None if v is None else stats.weighted_row_error(v[0], v[1], counts[n], self.dim))
                for n, v in self.rows.items()}


class _NotComparable(Exception):
    pass


def _dense_weight(reference, t: int) -> torch.Tensor:
    """Table t's float rows, read by row slices (a table in row shards is not joined in memory)."""
    module = reference.embeddings[t]
    if reference.config.tables[t].embedding != "dense" or not hasattr(module, "weight"):
        raise _NotComparable("the reference table is not a dense table")
    table = getattr(module, "table", None)  # (lowprec.model.parted.PartedBag: a LogicalTable)
    return table if table is not None else module.weight.detach()


def _table_rows_error(reference, emb, weights, index, t: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    serving = emb.serving[t]
    feats = [f for g in serving.groups for f in g]
    if feats and all(emb.features[f].transform.get("kind") == "tier" for f in feats):
        tiers = [(emb.id_maps[f], emb.physical[index[emb.features[f].table]],
                  weights[index[emb.features[f].table]]) for f in feats]
        return tiered_rows_error(_dense_weight(reference, t), tiers, dim)
    if len(serving.groups) != 1 or len(serving.groups[0]) != 1:
        raise _NotComparable("served by several features (a sharing form)")
    feature = emb.features[serving.groups[0][0]]
    if feature.transform.get("kind") != "identity":
        raise _NotComparable(f"served through a {feature.transform.get('kind')!r} id transform")
    w = _dense_weight(reference, t)
    phys = emb.physical[index[feature.table]]
    if phys.rows != w.shape[0]:
        raise _NotComparable(f"physical table has {phys.rows} rows, the float table {w.shape[0]}")
    raw = weights[index[feature.table]]
    err, norm = np.empty(phys.rows), np.empty(phys.rows)
    for a in range(0, phys.rows, ROW_CHUNK):  # bounded temporaries on huge tables
        wa = w[a: a + ROW_CHUNK].double()
        q = dequantize_rows(raw[a: a + ROW_CHUNK], phys.precision, phys.dim)[:, :dim].double()
        err[a: a + ROW_CHUNK] = ((wa - q) ** 2).sum(1).numpy()
        norm[a: a + ROW_CHUNK] = (wa ** 2).sum(1).numpy()
    return err, norm


@torch.no_grad()
def tiered_rows_error(w: torch.Tensor, tiers: list[tuple[Any, Any, torch.Tensor]],
                      dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per id of a tiered table (lowprec.serve.tiers): ‖w_id - q_id‖² with q_id the id's row in its own
    tier (found by that tier's id map, dequantized at that tier's precision), and ‖w_id‖².
    `tiers`: (id map, PhysicalTable, raw TBE rows) per tier; every id must be in exactly one tier."""
    n = w.shape[0]
    err, norm = np.empty(n), np.empty(n)
    for a in range(0, n, ROW_CHUNK):
        ids = torch.arange(a, min(n, a + ROW_CHUNK), dtype=torch.int64)
        wa = w[a: a + ROW_CHUNK].double()
        q, seen = torch.zeros_like(wa), torch.zeros(len(ids), dtype=torch.int64)
        for id_map, phys, raw in tiers:
            rows = id_map(ids)[0]
            hit = rows >= 0
            if bool(hit.any()):
                q[hit] = dequantize_rows(raw[rows[hit]], phys.precision, phys.dim)[:, :dim].double()
            seen += hit.long()
        if bool((seen != 1).any()):
            bad = int(torch.nonzero(seen != 1)[0, 0])
            raise _NotComparable(f"id {a + bad} is in {int(seen[bad])} tiers, not exactly one")
        err[a: a + ROW_CHUNK] = ((wa - q) ** 2).sum(1).numpy()
        norm[a: a + ROW_CHUNK] = (wa ** 2).sum(1).numpy()
    return err, norm


@dataclass(frozen=True)
class WindowMeasure:
    window: int
    rows: int
    reference: dict[str, float]
    candidate: dict[str, float]
    ne_gap: stats.Interval
    ne_gap_se_delta: float
    cal_gap: stats.Interval
    delong: stats.DeLongResult
    psi: float
    clipping: dict[str, dict[str, Any]]
    table_error: dict[str, dict[str, Any] | None]
    seconds: float


class _Accumulators:
    """Integer parts (histograms, id counts) add up here; each batch's float sums go to `sums`
    (merge.OrderedSum: summed in one order whatever the ranks, merged by `merge.merge_paired`)."""

    def __init__(self, cfg: PairedConfig, window: int, table_err: TableError | None,
                 spans: list[tuple[int, int]]):
        self.ref, self.cand = BinaryStats(), BinaryStats()
        self.boot = stats.PoissonBootstrap(cfg.replicates, cfg.seed, stream=window)
        self.moments = stats.RatioMoments()
        self.counts = table_err.zero_counts() if table_err is not None else {}
        self.sums = merge.OrderedSum(merge.paired_width(cfg.replicates, len(stats.COLS)), spans)

    def update(self, i: int, pr: np.ndarray, pc: np.ndarray, y: np.ndarray, sparse: torch.Tensor,
               names: list[str], hotness: list[int], row0: int) -> None:
        """Global batch i (rows row0.. of the pooled windows)."""
        vec = []
        for s, p in ((self.ref, pr), (self.cand, pc)):
            # the histograms accumulate in place; the float sums restart at 0.0, so after the update
            # they hold this batch's sums alone (merged later by `sums`, which overwrites them)
            s.weight = s.positives = s.pred_sum = s.logloss_sum = 0.0
            s.update(p, y)
            vec.append([s.weight, s.positives, s.pred_sum, s.logloss_sum])
        llr, llc = stats.row_logloss(pr, y), stats.row_logloss(pc, y)
        vec.append(self.boot.batch_sums(y, llr, llc, pr, pc, row0).ravel())
        m = stats.RatioMoments()
        m.update(llr, llc)
        vec.append(m.s)
        self.sums.add(i, np.concatenate(vec))
        if self.counts:
            for name, ids in zip(names, torch.split(sparse, hotness, dim=1)):
                if name in self.counts:
                    valid = ids[ids != PAD_ID].numpy()
                    self.counts[name] += np.bincount(valid, minlength=len(self.counts[name]))


def _delong_pass(spill: Path, acc: _Accumulators, batches: list[tuple[int, int]],
                 spans: list[tuple[int, int]]) -> stats.DeLongResult:
    """Read the spilled scores back batch by batch ((global index, rows) as spilled), so the
    placement moments sum per batch in the canonical order (merge.OrderedSum)."""
    d = stats.DeLongAccumulator((acc.ref.hist_pos, acc.ref.hist_neg), (acc.cand.hist_pos, acc.cand.hist_neg),
                                acc.ref.auc, acc.cand.auc)
    sums = merge.OrderedSum(6, spans)
    with open(spill, "rb") as fh:
        for i, n in batches:
            rec = np.fromfile(fh, dtype=SPILL_DTYPE, count=n)
            d.s10, d.s01 = np.zeros(3), np.zeros(3)
            d.update(score_bins(rec["ref"]), score_bins(rec["cand"]), rec["y"])
            sums.add(i, np.concatenate([d.s10, d.s01]))
    merge.merge_delong(d, sums)
    return d.result()


def evaluate_window(reference: torch.nn.Module, candidate: torch.nn.Module, ds: Dataset,
                    window: int | list[int], cfg: PairedConfig, spill_prefix: Path,
                    table_err: TableError | None = None,
                    progress: Update | None = None, observers: Sequence[Any] = ()) -> WindowMeasure:
    """Score both models on `window` in one streamed pass (+ one pass over the spilled scores).

    `window` may be a list: the windows are then pooled into one paired measurement (search
    validation does this over its evaluation windows). The spill file is a temporary sibling of the
    name `{spill_prefix}w{first window}` (lowprec.tmpnames: `.NAME.tmp-HOST-PID-*`; the job puts it
    beside the database, where a failed job's launcher and the next run remove it). Each of
    `observers` (a context manager, entered around the pass) sees every batch as
    `update(p_ref, p_cand, dense, row, sparse)` (row: the batch's first row in the window; sparse:
    the batch's (B, slots) ids, -1 pads) and is merged over ranks by its `merge()` after the paired
    sums (lowprec.drift.attribution, lowprec.drift.tiers)."""
    windows = [window] if isinstance(window, int) else list(window)
    window = windows[0]
    t0 = time.perf_counter()
    reference.eval()
    candidate.eval()
    counts = count_batches(ds, windows, cfg.batch_size)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)  # global index of each window's batch 0
    spans = [(int(f) + a, int(f) + b) for f, (a, b) in zip(firsts, map(dist.span, counts))]
    acc = _Accumulators(cfg, window, table_err, spans)
    names, hotness = candidate.config.table_names, ds.meta.hotness
    spilled: list[tuple[int, int]] = []  # (global batch index, rows) in spill order
    fd, name = tempfile.mkstemp(prefix=tmp_prefix(f"{spill_prefix.name}w{windows[0]}"), dir=spill_prefix.parent)
    spill = Path(name)  # (a temporary sibling by name, lowprec.tmpnames: a killed run's is swept)
    clip = ClipMonitor(candidate)
    try:
        with os.fdopen(fd, "wb") as fh, clip, contextlib.ExitStack() as stack:
            for o in observers:
                stack.enter_context(o)
            feature_ids = reads_feature_ids(reference) or reads_feature_ids(candidate)
            offset = 0  # rows of the pooled windows before this one
            for w, n_batches, (a, b) in zip(windows, counts, spans):
                for i, batch in enumerate(iter_batches(ds, [w], cfg.batch_size, feature_ids=feature_ids,
                                                       span=dist.span(n_batches)), start=a):
                    pr = predict(reference, batch.dense, batch.ids_for(reference), f"the reference model, window {w}")
                    pc = predict(candidate, batch.dense, batch.ids_for(candidate), f"the candidate model, window {w}")
                    y = batch.labels.numpy()
                    acc.update(i, pr, pc, y, batch.sparse, names, hotness, offset + batch.row0)
                    spilled.append((i, len(y)))
                    with clip.paused():
                        for o in observers:
                            o.update(pr, pc, batch.dense, offset + batch.row0, batch.sparse)
                    rec = np.empty(len(y), dtype=SPILL_DTYPE)
                    rec["ref"], rec["cand"], rec["y"] = pr, pc, y
                    fh.write(rec.tobytes())
                    if progress is not None:
                        progress(len(y))
                offset += ds.meta.window(w).rows
        merge.merge_paired(acc, clip, acc.sums)
        for o in observers:
            o.merge()
        delong = _delong_pass(spill, acc, spilled, spans)
    finally:
        spill.unlink(missing_ok=True)
    return _measure(window, acc, cfg, delong, clip, table_err, time.perf_counter() - t0)


def _measure(window: int, acc: _Accumulators, cfg: PairedConfig, delong: stats.DeLongResult,
             clip: ClipMonitor, table_err: TableError | None, seconds: float) -> WindowMeasure:
    gap = acc.cand.logloss_sum / acc.ref.logloss_sum - 1 if acc.ref.logloss_sum > 0 else float("nan")
    cal = acc.cand.pred_sum / acc.ref.pred_sum - 1 if acc.ref.pred_sum > 0 else float("nan")
    rows = int(acc.ref.weight)  # (below stats.MIN_INTERVAL_ROWS the gaps' intervals are undefined)
    return WindowMeasure(
        window=window, rows=rows,
        reference=acc.ref.summary(), candidate=acc.cand.summary(),
        ne_gap=stats.percentile_interval(gap, acc.boot.ratio("ll_cand", "ll_ref"), cfg.confidence, rows),
        ne_gap_se_delta=acc.moments.ratio_se(),
        cal_gap=stats.percentile_interval(cal, acc.boot.ratio("pred_cand", "pred_ref"), cfg.confidence, rows),
        delong=delong,
        psi=stats.psi(acc.ref.hist_pos + acc.ref.hist_neg, acc.cand.hist_pos + acc.cand.hist_neg),
        clipping=clip.rates(),
        table_error=table_err.weighted(acc.counts) if table_err is not None else {},
        seconds=round(seconds, 3),
    )
