"""TorchScript export of a quantized artifact: `model.torchscript.pt` that runs on torch + fbgemm_gpu alone.

The runtime `QuantizedDLRM` carries Python-only parts (dataclasses, a transform registry, debugger
callbacks), so export builds `ScriptableDLRM`: the runtime's own FBGEMM TBE (scriptable; TorchRec
scripts it for inference), its fp32 Linears, its int8 layers as `ScriptInt8Linear` over the same
prepacked FBGEMM weight (LinearPackedParamsBase pickles through TorchScript), and the serving
layout precomputed into ints. Its graph is the float DLRM's (`lowprec.model.dlrm`):

    forward(dense: float32 (B, n_dense), sparse: int (B, slots), -1 pads) -> logits (B,)

Supported id transforms: identity (dense tables, any hotness, padded dims), `qr_q` / `qr_r`
(quotient-remainder tables) and `remap` (post-training hot sharing with lookup="remap"). Hashed forms
(`hash`, `robe`, `hot_hash`) raise InputError. Consumers load with `import torch, fbgemm_gpu` then
`torch.jit.load(path)` (set `torch.backends.quantized.engine = "fbgemm"` as lowprec does).

Writing is atomic: the new artifact (hard links to the existing files, the .pt, and a manifest whose
"files" map covers the .pt) is built in a temporary sibling and swapped in by `fileio.atomic_dir`, so
a crash leaves the old, valid artifact. Export checks the saved module against the runtime first.
"""

import os
import shutil
from pathlib import Path
from typing import Any, List, Tuple

import torch
from torch import nn

import lowprec
from lowprec.checkpoint.artifact import MANIFEST, load_artifact, read_manifest
from lowprec.errors import InputError
from lowprec.fileio import atomic_dir, sha256_file, write_json
from lowprec.model.dlrm import upper_pairs
from lowprec.model.quantized import Int8Linear, QuantizedDLRM, QuantizedEmbeddings

TORCHSCRIPT = "model.torchscript.pt"
KINDS = {"identity": 0, "qr_q": 1, "qr_r": 2, "remap": 3}
SIGNATURE = "forward(dense: float32 (B, n_dense), sparse: int64 (B, slots), -1 pads) -> logits (B,)"
CHECK_TOLERANCE = 1e-4


class ScriptInt8Linear(nn.Module):
    """Int8Linear for TorchScript: the same packed FBGEMM weight, qparams as plain attributes."""

    def __init__(self, layer: Int8Linear):
        super().__init__()
        self.packed = layer.packed
        self.static = layer.input_qparams is not None
        scale, zero_point = layer.input_qparams or (1.0, 0)
        self.scale, self.zero_point = float(scale), int(zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                x, self.scale, self.zero_point, self.packed)
        return torch.ops.quantized.linear_dynamic(x, self.packed)


class ScriptableEmbeddings(nn.Module):
    """Padded ids (B, slots) -> pooled (B, T, D) through one TBE; serving layout as int lists."""

    feat_start: List[int]
    feat_hot: List[int]
    feat_kind: List[int]
    feat_param: List[int]
    groups: List[List[List[Tuple[int, int]]]]
    id_buffers: List[torch.Tensor]

    def __init__(self, emb: QuantizedEmbeddings, table_kinds: List[str]):
        super().__init__()
        self.tbe = emb.tbe
        self.dim = emb.dim
        starts, s = [], 0
        for serving in emb.serving:
            starts.append(s)
            s += serving.hotness
        owner = _feature_owners(emb)
        buffer_names = sorted({f.transform["buffer"] for f in emb.features
                               if f.transform.get("kind") == "remap"})
        self.id_buffers = [emb.id_buffers[n].to(torch.int64) for n in buffer_names]
        self.feat_start, self.feat_hot, self.feat_kind, self.feat_param = [], [], [], []
        for i, feature in enumerate(emb.features):
            t = owner[i]
            kind = feature.transform.get("kind")
            if kind not in KINDS:
                raise InputError(f"torchscript export does not support sharing kind {table_kinds[t]!r} "
                                 f"yet (table {emb.serving[t].name!r} serves through id transform "
                                 f"{kind!r}); export works for dense, qr and hot sharing with "
                                 f"lookup=remap")
            self.feat_start.append(starts[t])
            self.feat_hot.append(emb.serving[t].hotness)
            self.feat_kind.append(KINDS[kind])
            param = 0
            if kind in ("qr_q", "qr_r"):
                param = int(feature.transform["c"])
            elif kind == "remap":
                param = buffer_names.index(feature.transform["buffer"])
            self.feat_param.append(param)
        slices = _feature_slices(emb)
        self.groups = [[[slices[f] for f in g] for g in s.groups] for s in emb.serving]
        self.simple = owner == list(range(len(owner))) and all(
            s.hotness == 1 and len(s.groups) == 1 and self.feat_kind[s.groups[0][0]] == 0
            and slices[s.groups[0][0]][1] - slices[s.groups[0][0]][0] == emb.dim for s in emb.serving)
        self.n_tables = len(emb.serving)

    def _transform(self, f: int, ids: torch.Tensor) -> torch.Tensor:
        kind = self.feat_kind[f]
        if kind == 1:
            return torch.div(ids, self.feat_param[f], rounding_mode="floor")
        if kind == 2:
            return torch.remainder(ids, self.feat_param[f])
        if kind == 3:
            return self.id_buffers[self.feat_param[f]][ids]
        return ids

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        b = sparse.shape[0]
        if self.simple and not bool((sparse == -1).any()):
            t = sparse.shape[1]
            offsets = torch.arange(0, b * t + 1, dtype=torch.int32)
            out = self.tbe(sparse.t().reshape(-1).int(), offsets)
            return out.view(b, self.n_tables, self.dim)
        idx: List[torch.Tensor] = []
        lens: List[torch.Tensor] = []
        for f in range(len(self.feat_kind)):
            ids = sparse[:, self.feat_start[f]:self.feat_start[f] + self.feat_hot[f]].long()
            valid = ids != -1
            idx.append(self._transform(f, ids[valid]))
            lens.append(valid.sum(1))
        offsets = torch.zeros(b * len(lens) + 1, dtype=torch.int32)
        offsets[1:] = torch.cumsum(torch.cat(lens), 0).int()
        out = self.tbe(torch.cat(idx).int(), offsets)
        per_table: List[torch.Tensor] = []
        for groups in self.groups:
            acc = torch.zeros(b, self.dim)
            for group in groups:
                cols = torch.cat([out[:, a:z] for a, z in group], dim=1)
                acc = acc + cols[:, : self.dim]
            per_table.append(acc)
        return torch.stack(per_table, dim=1)


def _feature_slices(emb: QuantizedEmbeddings) -> List[Tuple[int, int]]:
    """Columns of each TBE feature in the TBE's output (features in order, each its table's dim)."""
    dims = {t.key: t.dim for t in emb.physical}
    out, start = [], 0
    for feature in emb.features:
        out.append((start, start + dims[feature.table]))
        start += dims[feature.table]
    return out


def _feature_owners(emb: QuantizedEmbeddings) -> List[int]:
    owner = [-1] * len(emb.features)
    for t, serving in enumerate(emb.serving):
        for group in serving.groups:
            for f in group:
                if owner[f] != -1:
                    raise InputError(f"torchscript export: TBE feature {f} serves two tables")
                owner[f] = t
    if -1 in owner:
        raise InputError(f"torchscript export: TBE feature {owner.index(-1)} serves no table")
    return owner


class ScriptableDLRM(nn.Module):
    """The DLRM graph over `ScriptableEmbeddings`: bottom MLP (ReLU after every layer), dot
    interaction over [z0, e_1..e_T] (upper triangle, offset 1), top MLP (no ReLU on the last)."""

    def __init__(self, embeddings: ScriptableEmbeddings, bottom: List[nn.Module], top: List[nn.Module]):
        super().__init__()
        self.embeddings = embeddings
        self.bottom = nn.ModuleList(bottom)
        self.top = nn.ModuleList(top)
        self.n_top = len(top)
        f = embeddings.n_tables + 1
        self.register_buffer("pairs", upper_pairs(f).clone())

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        z0 = dense.float()
        for layer in self.bottom:
            z0 = torch.relu(layer(z0))
        pooled = self.embeddings(sparse)
        feats = torch.cat([z0.unsqueeze(1), pooled], dim=1)
        dots = torch.bmm(feats, feats.transpose(1, 2))
        x = torch.cat([z0, dots.flatten(1).index_select(1, self.pairs)], dim=1)
        for i, layer in enumerate(self.top):
            x = layer(x)
            if i < self.n_top - 1:
                x = torch.relu(x)
        return x.squeeze(1)


def _script_layer(name: str, layer: nn.Module) -> nn.Module:
    if isinstance(layer, Int8Linear):
        return ScriptInt8Linear(layer)
    if isinstance(layer, nn.Linear):
        return layer
    raise InputError(f"torchscript export: layer {name!r} is a {type(layer).__name__}, which export "
                     f"does not know")


def _table_kinds(manifest: dict[str, Any]) -> List[str]:
    kinds = []
    for t in manifest.get("tables", []):
        sharing = t.get("sharing")
        kinds.append(sharing.get("kind", "?") if isinstance(sharing, dict)
                     else str(t.get("embedding", "dense")).split(":")[0])
    return kinds


def scriptable(runtime: QuantizedDLRM, manifest: dict[str, Any]) -> ScriptableDLRM:
    """A TorchScript-friendly module computing exactly `runtime`'s logits."""
    kinds = _table_kinds(manifest)
    kinds += ["?"] * (len(runtime.embeddings.serving) - len(kinds))
    layers = runtime.linear_layers()
    bottom = [_script_layer(n, m) for n, m in layers.items() if n.startswith("bottom.")]
    top = [_script_layer(n, m) for n, m in layers.items() if n.startswith("top.")]
    module = ScriptableDLRM(ScriptableEmbeddings(runtime.embeddings, kinds), bottom, top)
    module.eval()
    return module


def example_batch(runtime: QuantizedDLRM, rows: int = 64, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random dense features and ids in range, with -1 pads in multi-hot slots and one empty row."""
    g = torch.Generator().manual_seed(seed)
    config = runtime.config
    dense = torch.randn(rows, config.dense_in, generator=g)
    cols = []
    for t in config.tables:
        ids = torch.randint(0, t.num_embeddings, (rows, t.hotness), generator=g)
        if t.hotness > 1:
            ids[:, 1:][torch.rand(rows, t.hotness - 1, generator=g) < 0.4] = -1
        ids[0] = -1
        cols.append(ids)
    return dense, torch.cat(cols, dim=1)


def _check(module: Any, runtime: QuantizedDLRM, what: str) -> None:
    dense, sparse = example_batch(runtime)
    with torch.no_grad():
        want = runtime(dense, sparse)
        got = module(dense, sparse)
        # and the fast path: no pads, one id per table
        dense1, sparse1 = example_batch(runtime, seed=1)
        sparse1 = sparse1.clamp(min=0)
        diff = max(float((got - want).abs().max()),
                   float((module(dense1, sparse1) - runtime(dense1, sparse1)).abs().max()))
    if not diff <= CHECK_TOLERANCE:
        raise RuntimeError(f"torchscript export: the {what} module differs from the runtime by {diff:g}")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_torchscript(artifact_dir: str | Path) -> Path:
    """Add `model.torchscript.pt` to a verified artifact, covered by its manifest's sha256 map."""
    root = Path(artifact_dir)
    runtime, manifest = load_artifact(root)
    scripted = torch.jit.script(scriptable(runtime, manifest))
    _check(scripted, runtime, "scripted")
    with atomic_dir(root, "artifact") as tmp:
        shutil.copytree(root, tmp, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=lambda d, names: [n for n in names if Path(d) == root
                                                 and n in (MANIFEST, TORCHSCRIPT)])
        torch.jit.save(scripted, str(tmp / TORCHSCRIPT))
        _check(torch.jit.load(str(tmp / TORCHSCRIPT), map_location="cpu"), runtime, "saved")
        manifest["files"] = {**manifest["files"], TORCHSCRIPT: sha256_file(tmp / TORCHSCRIPT)}
        manifest["torchscript"] = {
            "file": TORCHSCRIPT, "signature": SIGNATURE, "torch_version": lowprec.TORCH_VERSION,
            "fbgemm_version": lowprec.FBGEMM_VERSION, "needs": "import torch, fbgemm_gpu",
        }
        write_json(tmp / MANIFEST, manifest)
    return root / TORCHSCRIPT


def load_torchscript(artifact_dir: str | Path) -> torch.jit.ScriptModule:
    """Verify the artifact's hashes (the .pt included) and load its TorchScript module."""
    root = Path(artifact_dir)
    manifest = read_manifest(root)
    if TORCHSCRIPT not in manifest.get("files", {}):
        raise InputError(f"{root}: the artifact has no TorchScript export; add it with "
                         f"`lowprec convert ... --export torchscript`")
    info = manifest.get("torchscript", {})
    if info.get("torch_version") not in (None, lowprec.TORCH_VERSION):
        raise InputError(f"{root / TORCHSCRIPT}: exported with torch {info['torch_version']}, "
                         f"running torch {lowprec.TORCH_VERSION}; re-export with this torch")
    return torch.jit.load(str(root / TORCHSCRIPT), map_location="cpu")
