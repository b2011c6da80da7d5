"""Every embedding table of a DLRM trained in ONE FBGEMM fused training TBE (CPU).

`FusedTables(model, lr)` builds one `SplitTableBatchedEmbeddingBagsCodegen` with the fused
optimizer EXACT_ROWWISE_ADAGRAD (Duchi et al. 2011, one accumulator per row; FBGEMM applies it
inside backward, touching only the batch's rows):
    g = the row's gradient summed over the batch,  s += mean(g^2),  w -= lr * g / (sqrt(s) + eps)
Its optimizer state is 4 bytes a row, against SparseAdam's two dense copies of every table. The
accumulators s start at `init` (0: FBGEMM's default; > 0 as Adagrad's `initial_accumulator_value`:
a row's first steps are lr * g / sqrt(init + g^2), not a full lr-sized normalised step, so an id seen
once moves little and a frequent id soon moves as if init were 0).

Each logical table becomes TBE features (`feature_ids.FeatureSpec`) over physical TBE tables:
- dense: one table, ids as they are;
- hash: one table of ceil(n/R) rows, the row hash applied before the lookup;
- qr: two tables, features x // c and x % c, the pooled vectors added;
- aligned ROBE (all robe tables align=1): the shared array as one (|M|/Z, Z) table, D/Z chunk
  features per logical table (the sign is the per-sample weight); the deploy form, exactly.
- exact ROBE (any robe table align=0): all robe tables in `robe_batched.RobeBatched`, which a
  TBE cannot express (an exact block straddles two TBE rows).
Features are ordered so that the features of one physical table are consecutive (FBGEMM's CPU
row-wise Adagrad rejects a table whose features are interleaved with another's).

The TBE holds its own copy of the weights, initialised from the model's modules; `write_back()`
copies them into the model's per-table modules, so the checkpoint (state-dict keys and shapes) is
exactly the one the per-table modules would save. `FusedDLRM` is the training-time forward: the
model's MLPs and graph with `FusedTables` as the pooled embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from lowprec.errors import InputError
from lowprec.model.dlrm import DLRM
from lowprec.model.embedding import DenseBag
from lowprec.model.sharing import HashBag, QRBag, RobeBag
from lowprec.training.id_maps import BatchedIdMaps, FeatureSpec
from lowprec.training.robe_batched import RobeBatched

OPTIMIZER = "EXACT_ROWWISE_ADAGRAD"


def _tbe(shapes: list[tuple[int, int]], feature_table_map: list[int], lr: float, eps: float) -> nn.Module:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen)

    specs = [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for rows, dim in shapes]
    return SplitTableBatchedEmbeddingBagsCodegen(
        specs, feature_table_map=feature_table_map, optimizer=getattr(EmbOptimType, OPTIMIZER),
        learning_rate=lr, eps=eps, device=torch.device("cpu"), bounds_check_mode=BoundsCheckMode.FATAL)


class _Plan:
    """Which TBE features and physical tables the model's tables become (see module docstring)."""

    def __init__(self, model: DLRM):
        self.primary: list[tuple[int, FeatureSpec, nn.Parameter]] = []  # logical, feature, param
        self.extra: list[tuple[int, FeatureSpec, nn.Parameter]] = []  # QR remainders
        self.robe: list[tuple[int, RobeBag]] = []
        dim = model.config.embedding_dim
        for t, m in enumerate(model.embeddings):
            name = model.config.tables[t].name
            if isinstance(m, DenseBag):
                self.primary.append((t, FeatureSpec(t, "id"), m.bag.weight))
            elif isinstance(m, HashBag):
                self.primary.append((t, FeatureSpec(t, "hash", m.table, 0, m.seed, m.rows), m.bag.weight))
            elif isinstance(m, QRBag):
                self.primary.append((t, FeatureSpec(t, "qr_q", c=m.c), m.q.weight))
                self.extra.append((t, FeatureSpec(t, "qr_r", c=m.c), m.r.weight))
            elif isinstance(m, RobeBag):
                self.robe.append((t, m))
            else:
                raise InputError(f"table {name!r}: backend {type(m).__name__} has no fused training "
                                 f"form; train with --optimizer sparse-adam")
        if (self.primary or self.extra) and dim % 4:
            raise InputError(f"embedding dim {dim} is not a multiple of 4, which FBGEMM's training TBE "
                             f"needs; use a multiple of 4 or --optimizer sparse-adam")
        self.aligned = bool(self.robe) and all(b.member.align for _, b in self.robe)


class FusedTables(nn.Module):
    """Pooled embeddings (B, T, D) of every table of `model`, trained by the fused TBE update."""

    def __init__(self, model: DLRM, lr: float, eps: float = 1e-8, init: float = 0.0):
        super().__init__()
        plan = _Plan(model)
        self.num_tables, self.dim = len(model.embeddings), model.config.embedding_dim
        feats = [f for _, f, _ in plan.primary] + [f for _, f, _ in plan.extra]
        self.params = [p for _, _, p in plan.primary] + [p for _, _, p in plan.extra]
        shapes = [tuple(p.shape) for p in self.params]
        fmap = list(range(len(feats)))
        robe_tbe = [(t, b) for t, b in plan.robe] if plan.aligned else []
        if robe_tbe:
            array = robe_tbe[0][1].array
            z = array.z
            for t, b in robe_tbe:
                feats += [FeatureSpec(t, "hash", b.member.table, k, array.seed, array.size // z,
                                      sign=b.member.sign) for k in range(self.dim // z)]
            fmap += [len(shapes)] * (len(feats) - len(fmap))
            shapes.append((array.size // z, z))
            self.params.append(array.bag.weight)
        self.n_primary, self.n_extra = len(plan.primary), len(plan.extra)
        self.tbe = _tbe(shapes, fmap, lr, eps) if shapes else None
        self.ids = BatchedIdMaps(feats, model.hotness) if feats else None
        batched = [(t, b) for t, b in plan.robe] if not plan.aligned else []
        self.robe = (RobeBatched(batched[0][1].array, [b for _, b in batched], [t for t, _ in batched],
                                 model.hotness, lr, eps, init) if batched else None)
        logical = [t for t, _, _ in plan.primary] + [t for t, _ in plan.robe]
        self.order = torch.tensor(sorted(range(len(logical)), key=logical.__getitem__), dtype=torch.int64)
        self.identity = logical == list(range(len(logical)))
        self.extra_slots = torch.tensor([t for t, _, _ in plan.extra], dtype=torch.int64)
        self._load()
        if self.tbe is not None and init:
            for states in self.tbe.split_optimizer_states():
                states[0].fill_(init)

    @torch.no_grad()
    def _load(self) -> None:
        if self.tbe is not None:
            for w, p in zip(self.tbe.split_embedding_weights(), self.params):
                w.copy_(p.detach().reshape(w.shape))

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained weights into the model's per-table modules (the checkpoint's tensors)."""
        if self.tbe is not None:
            for w, p in zip(self.tbe.split_embedding_weights(), self.params):
                p.copy_(w.reshape(p.shape))
        if self.robe is not None:
            self.robe.write_back()

    def state_bytes(self) -> int:
        """Bytes of optimizer state (the row-wise accumulators)."""
        total = 0 if self.robe is None else self.robe.state_bytes()
        if self.tbe is not None:
            for states in self.tbe.split_optimizer_states():
                total += sum(s.numel() * s.element_size() for s in states)
        return total

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():
            # FBGEMM registers the CPU training lookup only as an autograd kernel, which inference
            # mode skips; scoring (validation) runs it under no_grad instead
            with torch.inference_mode(False), torch.no_grad():
                return self._pooled(sparse)
        return self._pooled(sparse)

    def _pooled(self, sparse: torch.Tensor) -> torch.Tensor:
        batch, d = sparse.shape[0], self.dim
        parts, extra = [], None
        if self.tbe is not None:
            idx, offsets, weights = self.ids(sparse)
            out = self.tbe(idx, offsets, per_sample_weights=weights)
            cut = (self.n_primary + self.n_extra) * d
            parts.append(out[:, : self.n_primary * d].reshape(batch, self.n_primary, d))
            if self.n_extra:
                extra = out[:, self.n_primary * d : cut].reshape(batch, self.n_extra, d)
            if out.shape[1] > cut:  # aligned robe chunks, D per logical table
                parts.append(out[:, cut:].reshape(batch, -1, d))
        if self.robe is not None:
            parts.append(self.robe(sparse))
        pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if not self.identity:
            pooled = pooled.index_select(1, self.order)
        if extra is not None:
            pooled = pooled.index_add(1, self.extra_slots, extra)
        return pooled


class FusedDLRM(nn.Module):
    """Training-time DLRM: the model's MLPs and graph over `FusedTables`; scores like the model."""

    def __init__(self, model: DLRM, lr: float, eps: float = 1e-8, init: float = 0.0):
        super().__init__()
        self.model = model
        self.tables = FusedTables(model, lr, eps, init)

    def dense_parameters(self) -> list[nn.Parameter]:
        table_params = {id(p) for p in self.model.embeddings.parameters()}
        return [p for p in self.model.parameters() if id(p) not in table_params]

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.logits(dense, self.tables(sparse))
