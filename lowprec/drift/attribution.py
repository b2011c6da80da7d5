"""Which table or layer carries the candidate's divergence: swap one quantized part at a time into
the float reference, on a fixed subsample of the window's rows; and the observer that runs the
label-free signals inside the paired pass.

The artifact's manifest records no per-table error measurement (precision, rows and bytes only),
and the drift job's lookup-weighted row error (lowprec.evaluation.paired.TableError) covers only
tables served dense or tiered and says nothing about the predictions. So this measures it: on the rows of the
subsample (`LabelFreeConfig.attribution_rows` a window, chosen by `labelfree.subsample_key`, the
same rows on any split over ranks) the float reference is run with

- `table:NAME`: table NAME's pooled embedding taken from the candidate (any serving form: the
  pooled outputs are read at the graph's `pooled_tap`, so hash sharing, QR and tiers are covered),
- `tables:all`: every table from the candidate, the reference's MLP,
- `layer:NAME`: the candidate's module for that linear layer (its int8 kernels and static ranges),
- `layers:all`: every layer from the candidate, the reference's tables,

and each part's mean KL(Bern(p_ref) || Bern(p_part)) is recorded. Ranks merge the per-batch sums in
the one-process batch order (`distributed.fold_rows`): the one-process numbers, bit for bit.
Parts interact (the whole candidate is not the sum of its parts); the share column in the report is
each part's KL over the whole candidate's KL on the same rows.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from lowprec import distributed as dist
from lowprec.drift.labelfree import LabelFreeAccumulator, LabelFreeConfig, row_kl, subsample_key


def _comparable(reference: Any, candidate: Any) -> str:
    """'' when both models are DLRM graphs over the same tables and layers, else why not."""
    for m in (reference, candidate):
        if not hasattr(m, "pooled_tap") or not hasattr(m, "linear_layers"):
            return f"{type(m).__name__} is not a DLRM graph with a pooled-embedding tap"
    if list(reference.config.table_names) != list(candidate.config.table_names):
        return "the models' tables differ"
    if list(reference.linear_layers()) != list(candidate.linear_layers()):
        return "the models' layers differ"
    return ""


@contextlib.contextmanager
def swapped(model: Any, modules: dict[str, torch.nn.Module]) -> Iterator[None]:
    """`model` with linear layers replaced by `modules` (name as linear_layers() names it), restored after."""
    saved = {}
    try:
        for name, module in modules.items():
            part, i = name.split(".")
            saved[name] = getattr(model, part)[int(i)]
            getattr(model, part)[int(i)] = module
        yield
    finally:
        for name, module in saved.items():
            part, i = name.split(".")
            getattr(model, part)[int(i)] = module


class Attribution:
    """Per-part KL sums on the attribution subsample (see the module docstring)."""

    def __init__(self, reference: Any, candidate: Any, cfg: LabelFreeConfig, window: int, window_rows: int):
        self.reference, self.candidate, self.cfg, self.window = reference, candidate, cfg, window
        self.note = _comparable(reference, candidate) or ("" if cfg.attribution_rows else "attribution off")
        self.rate = min(1.0, cfg.attribution_rows / window_rows) if window_rows > 0 else 0.0
        tables = list(reference.config.table_names) if not self.note else []
        layers = list(reference.linear_layers()) if not self.note else []
        self.parts = ([f"table:{n}" for n in tables] + ["tables:all"] + [f"layer:{n}" for n in layers]
                      + ["layers:all", "candidate"]) if not self.note else []
        self.layers = layers
        self.sums = np.zeros(len(self.parts))
        self.rows = 0
        self.batch_sums: list[np.ndarray] = []  # [rows, part sums...] of each batch, for the ordered merge
        self._pooled: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> "Attribution":
        if not self.note:
            self._hooks = [m.pooled_tap.register_forward_hook(lambda mod, a, out, k=k: self._pooled.__setitem__(k, out))
                           for k, m in (("ref", self.reference), ("cand", self.candidate))]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self._pooled = [], {}

    @torch.inference_mode()
    def update(self, dense: torch.Tensor, row0: int) -> None:
        if self.note or "ref" not in self._pooled or "cand" not in self._pooled:
            return
        keep = subsample_key(self.cfg.seed, self.window, np.arange(row0, row0 + len(dense))) < self.rate
        if not keep.any():
            return
        idx = torch.from_numpy(np.flatnonzero(keep))
        x, pr, pc = dense[idx], self._pooled["ref"][idx], self._pooled["cand"][idx]
        prob = lambda logits: torch.sigmoid(logits.float()).double().numpy()  # noqa: E731
        base = prob(self.reference.logits(x, pr))
        out = []
        for t in range(pr.shape[1]):
            mix = pr.clone()
            mix[:, t] = pc[:, t]
            out.append(prob(self.reference.logits(x, mix)))
        out.append(prob(self.reference.logits(x, pc)))
        cand_layers = self.candidate.linear_layers()
        for name in self.layers:
            with swapped(self.reference, {name: cand_layers[name]}):
                out.append(prob(self.reference.logits(x, pr)))
        with swapped(self.reference, {n: cand_layers[n] for n in self.layers}):
            out.append(prob(self.reference.logits(x, pr)))
        out.append(prob(self.candidate.logits(x, pc)))
        sums = np.array([row_kl(base, p).sum() for p in out])
        self.batch_sums.append(np.concatenate([[len(idx)], sums]))
        self.sums += sums
        self.rows += len(idx)

    def merge(self) -> None:
        if dist.active() and not self.note:
            width = 1 + len(self.parts)
            v = dist.fold_rows(dist.gather_rows(np.reshape(self.batch_sums, (-1, width)), "attribution sums"), width)
            self.rows, self.sums = int(v[0]), v[1:]

    def result(self) -> list[dict[str, Any]]:
        """One row per part: its mean KL on the subsample and its share of the whole candidate's."""
        if self.note or self.rows == 0:
            return []
        total = self.sums[-1]
        return [{"part": p, "kl": float(s / self.rows), "share": float(s / total) if total > 0 else None,
                 "rows": self.rows} for p, s in zip(self.parts, self.sums)]


class LabelFreeObserver:
    """Runs the label-free accumulator and the attribution inside `evaluate_window`'s pass."""

    def __init__(self, reference: Any, candidate: Any, cfg: LabelFreeConfig, window: int, window_rows: int):
        self.acc = LabelFreeAccumulator(cfg, window, window_rows)
        self.attribution = Attribution(reference, candidate, cfg, window, window_rows)

    def __enter__(self) -> "LabelFreeObserver":
        self.attribution.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.attribution.__exit__(*exc)

    def update(self, p_ref: np.ndarray, p_cand: np.ndarray, dense: torch.Tensor, row0: int,
               sparse: torch.Tensor | None = None) -> None:
        self.acc.update(p_ref, p_cand, row0)
        self.attribution.update(dense, row0)

    def merge(self) -> None:
        self.acc.merge()
        self.attribution.merge()
