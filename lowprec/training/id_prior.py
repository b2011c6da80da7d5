"""Inverse-frequency weights for the tables' Gaussian-prior penalty (`lowprec train --embedding-prior`).

A Gaussian prior on every embedding row adds λ Σ_rows ||w_row||² to the loss of the whole epoch,
once per row: rows seen rarely are shrunk hard relative to their data, frequent rows hardly at all
(the MAP estimate). Spread over the samples that look a row up, that is λ ||w_row||² / n_row at each
of its n_row occurrences; with the loss a batch mean, the step adds
    λ · mean_b Σ_t v_bt ||pooled_bt||²,   v_bt = mean over the bag's valid ids of 1 / n_t(id)
(n_t(id): the id's occurrences in table t over the training windows, counted once before training).
For one-hot bags this is exactly the per-row prior above; for multi-hot bags it penalises the pooled
sum with the mean weight of its ids. Compare `embedding_l2` (lowprec.training.steps), which shrinks a
row at every occurrence alike, i.e. frequent rows the most.
"""

from __future__ import annotations

import numpy as np
import torch

from lowprec.data.dataset import PAD_ID, Dataset

CHUNK_ROWS = 1 << 18


def id_counts(ds: Dataset, windows: list[int]) -> list[np.ndarray]:
    """Per table, how often each id occurs in `windows` (over every slot of a multi-hot bag)."""
    sizes, hot = ds.meta.num_embeddings, [f.hotness for f in ds.meta.sparse]
    starts = np.concatenate([[0], np.cumsum(hot)])
    counts = [np.zeros(n, dtype=np.int64) for n in sizes]
    for w in windows:
        sparse = ds.arrays(w)[1]
        for r0 in range(0, len(sparse), CHUNK_ROWS):
            block = np.asarray(sparse[r0:r0 + CHUNK_ROWS])
            for t, c in enumerate(counts):
                ids = block[:, starts[t]:starts[t + 1]].ravel()
                c += np.bincount(ids[ids != PAD_ID], minlength=len(c))
    return counts


class InverseFrequency:
    """sparse (B, slots) -> v (B, T): per bag, the mean of 1 / count over its valid ids (0 if none)."""

    def __init__(self, counts: list[np.ndarray], hotness: list[int]):
        self.inv = [torch.from_numpy(1.0 / np.maximum(c, 1)).float() for c in counts]
        self.hotness = hotness

    def __call__(self, sparse: torch.Tensor) -> torch.Tensor:
        out = []
        for inv, ids in zip(self.inv, torch.split(sparse, self.hotness, dim=1)):
            valid = ids != PAD_ID
            v = torch.where(valid, inv[torch.where(valid, ids, torch.zeros_like(ids))], torch.zeros(()))
            out.append(v.sum(1) / valid.sum(1).clamp_min(1))
        return torch.stack(out, dim=1)
