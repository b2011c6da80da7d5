"""Merging the paired evaluation over ranks so the merged numbers are the one-process numbers, bit for bit.

Integer quantities (histograms of unit-weight rows, id counts, clip counts, class counts) hold
integers < 2^53, so their float64 all-reduce is exact in any order; extremes merge by min/max.
Float sums (log-loss, predictions, the K bootstrap replicate sums, delta-method moments, DeLong's
placement moments) are not associative, so they are summed in ONE canonical order that does not
depend on how batches are dealt to ranks (`OrderedSum`):

    total = fold over blocks k = 0, 1, ... of ( fold over the batches i of block k of delta_i ),

fold = `acc = 0.0; acc += x` in order, block k = global batch indices [k G, (k+1) G). A rank
folds every block it holds whole, keeps the per-batch deltas of the (at most two per span) blocks
it may share with a neighbour, and the gathered pieces are folded on every rank in that order.
One process runs the same code with one span, so 1 and N ranks give the same bits; memory is
O(batches / G + 2 G) vectors per rank, not one vector per batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lowprec import distributed as dist

BLOCK = 256  # batches per block of the canonical summation order


class OrderedSum:
    """Per-batch float vectors of width `width`, summed in the canonical blocked order.

    `spans` are the global batch ranges [a, b) this rank scores (one per window for pooled windows)."""

    def __init__(self, width: int, spans: Sequence[tuple[int, int]], block: int = BLOCK):
        self.width, self.block = width, block
        self.shared = {a // block for a, b in spans if b > a} | {(b - 1) // block for a, b in spans if b > a}
        self.folds: dict[int, np.ndarray] = {}
        self.single: list[tuple[int, np.ndarray]] = []

    def add(self, i: int, delta: np.ndarray) -> None:
        """The float vector of global batch i (batches are added in increasing i)."""
        delta = np.asarray(delta, dtype=np.float64).ravel()
        k = i // self.block
        if k in self.shared:
            self.single.append((i, delta))
        elif k in self.folds:
            self.folds[k] += delta
        else:
            self.folds[k] = np.zeros(self.width) + delta

    def pieces(self) -> np.ndarray:
        """This rank's rows (block, batch index or -1 for a whole-block fold, vector...)."""
        rows = [np.concatenate([[k, -1.0], v]) for k, v in self.folds.items()]
        rows += [np.concatenate([[i // self.block, float(i)], v]) for i, v in self.single]
        return np.array(rows, dtype=np.float64).reshape(len(rows), self.width + 2)

    @staticmethod
    def fold(rows: np.ndarray, width: int) -> np.ndarray:
        """Every rank's pieces (any order) summed in the canonical order."""
        total = np.zeros(width)
        k_prev, acc = None, None
        for r in rows[np.lexsort((rows[:, 1], rows[:, 0]))]:  # by block, then batch
            if r[0] != k_prev:
                if acc is not None:
                    total += acc
                k_prev, acc = r[0], np.zeros(width)
            acc += r[2:]
        if acc is not None:
            total += acc
        return total

    def merged(self, what: str) -> np.ndarray:
        """The sum over every rank's batches, in the canonical order (a collective under torchrun)."""
        return self.fold(dist.gather_rows(self.pieces(), what), self.width)


def merge_paired(acc: Any, clip: Any, sums: OrderedSum) -> None:
    """Set a paired window's float sums (both models' BinaryStats sums, bootstrap, delta-method
    moments) from `sums` (layout of `paired_vector`) and all-reduce its integer parts in place."""
    v = sums.merged("paired sums")
    for s, part in ((acc.ref, v[0:4]), (acc.cand, v[4:8])):
        s.weight, s.positives, s.pred_sum, s.logloss_sum = (float(x) for x in part)
    k = acc.boot.sums.size
    acc.boot.sums = v[8: 8 + k].reshape(acc.boot.sums.shape)
    acc.moments.s = v[8 + k: 13 + k]
    if not dist.active():
        return
    for s in (acc.ref, acc.cand):
        h = dist.all_reduce_sum(np.stack([s.hist_pos, s.hist_neg]), "paired histograms")
        s.hist_pos, s.hist_neg = h[0], h[1]
    names = sorted(acc.counts)
    if names:
        flat = dist.all_reduce_sum(np.concatenate([acc.counts[n] for n in names]), "id counts")
        for n, part in zip(names, np.split(flat, np.cumsum([len(acc.counts[n]) for n in names])[:-1])):
            acc.counts[n] = part
    layers = sorted(clip.counts)
    if layers:
        c = np.array([clip.counts[n] for n in layers], dtype=np.float64).reshape(len(layers), 4)
        total = dist.all_reduce_sum(c[:, :2], "clip counts")
        lo, hi = dist.all_reduce_min(c[:, 2], "clip min"), dist.all_reduce_max(c[:, 3], "clip max")
        for i, n in enumerate(layers):
            clip.counts[n] = [int(total[i, 0]), int(total[i, 1]), float(lo[i]), float(hi[i])]


def paired_width(replicates: int, cols: int) -> int:
    """Width of a batch's paired float vector: 4 + 4 stats sums, K x cols bootstrap sums, 5 moments."""
    return 8 + replicates * cols + 5


def merge_delong(d: Any, sums: OrderedSum) -> None:
    """DeLong's placement moments from `sums` (per batch: s10 then s01) and class counts over ranks."""
    v = sums.merged("DeLong moments")
    d.s10, d.s01 = v[0:3], v[3:6]
    if dist.active():
        mn = dist.all_reduce_sum(np.array([d.m, d.n], dtype=np.float64), "DeLong counts")
        d.m, d.n = int(mn[0]), int(mn[1])
