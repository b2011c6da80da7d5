"""Import a TorchRec DLRM checkpoint (`torchrec.models.dlrm.DLRM` state dict) as a lowprec float model.

TorchRec's DLRM (Naumov et al. 2019, as in torchrec/models/dlrm.py) computes exactly lowprec's graph:
bottom MLP with ReLU after every layer (`DenseArch`), sum-pooled `EmbeddingBagCollection`, the dot
interaction `cat(z0, triu(offset=1) of [z0, e_1..e_F] [z0, e_1..e_F]^T)` (`InteractionArch`), and an
over arch of ReLU layers plus a final Linear. Its state-dict keys map one to one:

    sparse_arch.embedding_bag_collection.embedding_bags.{table}.weight  -> embeddings.{t}.bag.weight
    dense_arch.model._mlp.{i}._linear.{weight,bias}                      -> bottom.{i}.{weight,bias}
    over_arch.model.0._mlp.{i}._linear.{weight,bias}                     -> top.{i}.{weight,bias}
    over_arch.model.1.{weight,bias}                                      -> top.{last}.{weight,bias}

A `DLRMTrain` wrapper's `model.` prefix (and DDP's `module.`) is stripped. `DLRM_DCN` (the DLRMv2 /
MLPerf DCN interaction, `inter_arch.crossnet.*`) and `DLRM_Projection` (`inter_arch.interaction_branch*`)
compute a different interaction and are refused with the keys named.

Security: the user's file is read with safetensors only; nothing is ever unpickled. A TorchRec user
exports with one line (gather a sharded / DistributedModelParallel model's state dict to one process
with full tensors first, e.g. on an unsharded copy of the model):

    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                "dlrm.safetensors")

Tables follow the dataset: safetensors does not keep key order, so each sparse feature of
dataset.json takes the table named `t_{feature}` (TorchRec's DLRM examples) or `{feature}`, unless
`table_map` says otherwise (several features may share one table explicitly; its rows are copied).
The interaction's columns follow TorchRec's *feature* order (`model.sparse_arch.sparse_feature_names`),
which a state dict does not record: lowprec assumes it is dataset.json's order unless `feature_order`
(or safetensors metadata `sparse_feature_names`, a JSON list) gives it, and then permutes the over
arch's input columns so the imported model computes the same logits in dataset order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lowprec.checkpoint.float_model import check_finite_chunk
from lowprec.data.dataset import DatasetMeta
from lowprec.errors import InputError
from lowprec.fileio import sha256_file
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.model.dlrm import DLRM

TABLE_PREFIX = "sparse_arch.embedding_bag_collection.embedding_bags."
_DENSE = re.compile(r"dense_arch\.model\._mlp\.(\d+)\._linear\.(weight|bias)")
_OVER = re.compile(r"over_arch\.model\.0\._mlp\.(\d+)\._linear\.(weight|bias)")
_FINAL = re.compile(r"over_arch\.model\.1\.(weight|bias)")
_TABLE = re.compile(re.escape(TABLE_PREFIX) + r"(.+)\.weight")
_WRAPPERS = ("model.", "module.")  # DLRMTrain, DistributedDataParallel
VARIANTS = {
    "inter_arch.crossnet.": "DLRM_DCN (DCN-v2 interaction, as in TorchRec's DLRMv2 / MLPerf model)",
    "inter_arch.interaction_branch": "DLRM_Projection (projection interaction)",
}
SUPPORTED = "torchrec.models.dlrm.DLRM (optionally wrapped in DLRMTrain) with sum-pooled tables"
EXPORT_HINT = ("export it with `safetensors.torch.save_file({k: v.contiguous() for k, v in "
               "model.state_dict().items()}, 'dlrm.safetensors')` (gather a sharded model's state "
               "dict first)")


def listed(items, limit: int = 8) -> str:
    """`['a', 'b', 'c'] and 5 more`: the first `limit` of `items` (sorted), for an error message."""
    items = sorted(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def refuse_unexpected(keys: list[str], where: str, supported: str) -> None:
    """InputError naming the keys of `where` that no part of the import uses (none: returns)."""
    if not keys:
        return
    variants = sorted({v for k in keys for p, v in VARIANTS.items() if k.startswith(p)})
    which = f" They belong to {', '.join(variants)}, which lowprec does not import." if variants else ""
    raise InputError(f"{where}: unexpected keys {listed(keys)}.{which} Supported: {supported}.")


def import_config(meta: DatasetMeta, dim: int, bottom: list[int], top: list[int], where: str) -> DLRMConfig:
    """The DLRMConfig of a model imported from `where` for `meta`'s features (in dataset order).

    Each table takes its feature's encoding fingerprint from `meta` (lowprec.data.encoding): the import
    binds the weights to the ids of that dataset, so scoring commands refuse data whose ids mean
    something else, as they do for a model lowprec trained. The importers check shapes first, naming
    the key; any rule of DLRMConfig they missed is still refused naming the file, never with a bare
    message."""
    try:
        tables = tuple(TableConfig(f.name, f.num_embeddings, f.hotness, encoding=f.encoding) for f in meta.sparse)
        return DLRMConfig(dense_in=len(meta.dense_names), tables=tables,
                          embedding_dim=dim, bottom_mlp=tuple(bottom), top_mlp=tuple(top),
                          dense_names=tuple(meta.dense_names))
    except InputError as exc:
        raise InputError(f"{where}: the model these weights describe is not a DLRM lowprec can build "
                         f"({exc})") from None


@dataclass
class TorchRecState:
    """A TorchRec DLRM state dict split into its parts (float32 tensors)."""

    tables: dict[str, torch.Tensor]
    dense: list[tuple[torch.Tensor, torch.Tensor]]
    over: list[tuple[torch.Tensor, torch.Tensor]]  # hidden layers then the final Linear
    metadata: dict[str, str]


F32_MAX = torch.finfo(torch.float32).max


def to_float32(where: str | Path, name: str, row: int, chunk: torch.Tensor) -> torch.Tensor:
    """`chunk` (rows from `row` of tensor `name`) as float32, refusing NaN/Inf and, for float64,
    finite values beyond float32's range, which the conversion would make Inf (checked after it)."""
    check_finite_chunk(Path(where), name, row, chunk)
    out = chunk.float()
    if out.dtype != chunk.dtype and not bool(torch.isfinite(out.sum())):  # (a sum may overflow alone)
        inf = torch.isinf(out.reshape(-1)).nonzero()
        if inf.numel():
            index = [int(i) for i in torch.unravel_index(inf[0, 0], out.shape)]
            value = float(chunk.reshape(-1)[inf[0, 0]])
            index[:1] = [row + index[0]] if index else []
            raise InputError(f"{where}: tensor {name!r} holds {value:g} at index {index}, beyond float32's "
                             f"range (|x| <= {F32_MAX:.4g}): lowprec's models are float32, where it would "
                             f"be Inf; rescale or clip it before exporting")
    return out


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a pickle (torch.save) is refused, never opened."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"state dict not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # a safetensors file is an 8-byte header length then a JSON header ("{"); torch.save writes a
    # zip ("PK") or a raw pickle (protocol byte 0x80). Byte 8 tells them apart: bytes 0-7 are a
    # length, which may begin with any byte (0x80 in one file of 256).
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise InputError(f"{path}: looks like a torch.save pickle; lowprec never unpickles a user's "
                         f"file (it can execute code). Load it yourself in TorchRec and {EXPORT_HINT}")
    try:
        with safe_open(str(path), framework="pt") as src:
            return {k: src.get_tensor(k) for k in src.keys()}, dict(src.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc}); {EXPORT_HINT}") from exc


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPERS:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _layers(found: dict[int, dict[str, torch.Tensor]], what: str, where: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(len(found)):
        parts = found.get(i, {})
        for p in ("weight", "bias"):
            if p not in parts:
                raise InputError(f"{where}: missing {what.format(i=i)}.{p} (layers must be numbered "
                                 f"0..{len(found) - 1} with weight and bias)")
        if parts["weight"].ndim != 2 or parts["bias"].shape != (parts["weight"].shape[0],):
            raise InputError(f"{where}: {what.format(i=i)} has weight {tuple(parts['weight'].shape)} "
                             f"and bias {tuple(parts['bias'].shape)}; not a Linear layer")
        if parts["weight"].shape[0] < 1:
            raise InputError(f"{where}: {what.format(i=i)} has weight {tuple(parts['weight'].shape)}: "
                             f"a layer with no outputs (every layer needs at least one)")
        out.append((parts["weight"], parts["bias"]))
    return out


def split_state(state: dict[str, torch.Tensor], metadata: dict[str, str], where: str) -> TorchRecState:
    """Sort keys into tables, dense-arch and over-arch layers; anything else is an InputError."""
    state = _strip_wrappers(state)
    tables: dict[str, torch.Tensor] = {}
    dense: dict[int, dict[str, torch.Tensor]] = {}
    over: dict[int, dict[str, torch.Tensor]] = {}
    final: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, t in state.items():
        if not t.is_floating_point():
            raise InputError(f"{where}: tensor {key!r} has dtype {t.dtype}; expected float weights")
        t = to_float32(where, key, 0, t)
        if m := _TABLE.fullmatch(key):
            tables[m.group(1)] = t
        elif m := _DENSE.fullmatch(key):
            dense.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif m := _OVER.fullmatch(key):
            over.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif m := _FINAL.fullmatch(key):
            final[m.group(1)] = t
        else:
            unexpected.append(key)
    refuse_unexpected(unexpected, where, SUPPORTED)
    if not tables:
        raise InputError(f"{where}: no embedding tables ({TABLE_PREFIX}<table>.weight); is this a "
                         f"TorchRec DLRM state dict?")
    for name, what in ((dense, "dense_arch"), (over, "over_arch.model.0"), (final, "over_arch.model.1")):
        if not name:
            raise InputError(f"{where}: no {what} layers; is this a TorchRec DLRM state dict?")
    layers_over = _layers(over, "over_arch.model.0._mlp.{i}._linear", where)
    layers_over += _layers({0: final}, "over_arch.model.1", where)
    return TorchRecState(tables, _layers(dense, "dense_arch.model._mlp.{i}._linear", where),
                         layers_over, metadata)


def match_tables(features: list[str], tables: list[str], table_map: dict[str, str] | None,
                 where: str) -> list[str]:
    """The TorchRec table serving each dataset feature, by name (`t_{f}` or `{f}`) or `table_map`."""
    table_map = dict(table_map or {})
    unknown = sorted(set(table_map) - set(features))
    if unknown:
        raise InputError(f"table map names features the dataset lacks: {unknown} (dataset features: "
                         f"{features[:30]})")
    absent = sorted({t for t in table_map.values() if t not in tables})
    if absent:
        raise InputError(f"{where}: table map names tables the state dict lacks: {absent} "
                         f"(tables: {sorted(tables)[:30]})")
    chosen, implicit = [], {}
    for f in features:
        if f in table_map:
            chosen.append(table_map[f])
            continue
        candidates = [c for c in (f"t_{f}", f) if c in tables]
        if not candidates:
            raise InputError(f"{where}: dataset feature {f!r} has no table named 't_{f}' or '{f}' "
                             f"(tables: {sorted(tables)[:30]}); map it with --table-map {f}=TABLE")
        if len(candidates) > 1:
            raise InputError(f"{where}: dataset feature {f!r} matches both tables {candidates}; "
                             f"choose one with --table-map {f}=TABLE")
        chosen.append(candidates[0])
        implicit[f] = candidates[0]
    for f, t in implicit.items():
        users = [g for g, u in zip(features, chosen) if u == t]
        if len(users) > 1:
            raise InputError(f"{where}: table {t!r} matches features {users} by name; say which "
                             f"feature uses it with --table-map FEATURE={t}")
    unused = sorted(set(tables) - set(chosen))
    if unused:
        raise InputError(f"{where}: tables {listed(unused)} serve no dataset feature (dataset features: "
                         f"{features[:30]}); map them with --table-map FEATURE=TABLE")
    return chosen


def resolve_feature_order(features: list[str], feature_order: list[str] | None,
                          metadata: dict[str, str], where: str) -> tuple[list[str], str]:
    """TorchRec's sparse feature order in dataset names, and where it came from."""
    source = "argument"
    if feature_order is None and "sparse_feature_names" in metadata:
        try:
            feature_order = [str(x) for x in json.loads(metadata["sparse_feature_names"])]
        except (ValueError, TypeError, RecursionError) as exc:
            raise InputError(f"{where}: metadata sparse_feature_names is not a JSON list ({exc})") from exc
        source = "safetensors metadata"
    if feature_order is None:
        return list(features), "dataset"
    if sorted(feature_order) != sorted(features):
        raise InputError(f"{where}: feature order ({source}) {feature_order[:30]} is not a "
                         f"permutation of the dataset's features {features[:30]}")
    return list(feature_order), source


def interaction_permutation(dim: int, lowprec_order: list[str], torchrec_order: list[str]) -> torch.Tensor:
    """Column c of lowprec's interaction output = column perm[c] of TorchRec's, for the same inputs.

    Both are [z0 (dim columns), dot(u, v) for u < v over (z0, e_...)] with the e's in each one's order.
    """
    pos = {name: i + 1 for i, name in enumerate(torchrec_order)}
    idx = [0] + [pos[name] for name in lowprec_order]  # lowprec slot -> TorchRec slot
    f = len(idx)
    tr_pairs = {(int(a), int(b)): k for k, (a, b) in enumerate(torch.triu_indices(f, f, 1).t().tolist())}
    cols = list(range(dim))
    for a, b in torch.triu_indices(f, f, 1).t().tolist():
        u, v = sorted((idx[a], idx[b]))
        cols.append(dim + tr_pairs[(u, v)])
    return torch.tensor(cols)


def build_model(parts: TorchRecState, meta: DatasetMeta, table_map: dict[str, str] | None = None,
                feature_order: list[str] | None = None, where: str = "state dict") -> tuple[DLRM, dict[str, Any]]:
    """A lowprec DLRM in dataset order computing the TorchRec model's logits."""
    features = meta.sparse_names
    chosen = match_tables(features, list(parts.tables), table_map, where)
    dims = {name: int(w.shape[1]) if w.ndim == 2 else -1 for name, w in parts.tables.items()}
    dim = dims[chosen[0]]
    if dim < 1:
        raise InputError(f"{where}: table {chosen[0]!r} has shape {tuple(parts.tables[chosen[0]].shape)}; "
                         f"an embedding table needs at least one column (rows, dim >= 1)")
    for f, t, n in zip(features, chosen, meta.num_embeddings):
        w = parts.tables[t]
        if w.ndim != 2 or dims[t] != dim:
            raise InputError(f"{where}: table {t!r} has shape {tuple(w.shape)}; every table must be "
                             f"(rows, {dim}) (TorchRec's DLRM uses one embedding dim)")
        if w.shape[0] != n:
            raise InputError(f"{where}: table {t!r} has {w.shape[0]} rows but dataset feature {f!r} "
                             f"has num_embeddings {n}")
    _check_chain(parts, len(meta.dense_names), dim, len(features), where)
    order, source = resolve_feature_order(features, feature_order, parts.metadata, where)
    config = import_config(meta, dim, [int(w.shape[0]) for w, _ in parts.dense],
                           [int(w.shape[0]) for w, _ in parts.over[:-1]], where)
    state: dict[str, torch.Tensor] = {}
    for i, (w, b) in enumerate(parts.dense):
        state[f"bottom.{i}.weight"], state[f"bottom.{i}.bias"] = w, b
    for i, (w, b) in enumerate(parts.over):
        state[f"top.{i}.weight"], state[f"top.{i}.bias"] = w, b
    state["top.0.weight"] = state["top.0.weight"][:, interaction_permutation(dim, features, order)]
    for i, t in enumerate(chosen):
        state[f"embeddings.{i}.bag.weight"] = parts.tables[t].clone()
    model = DLRM(config)
    model.load_state_dict(state)
    model.eval()
    info = {"tables": dict(zip(features, chosen)), "feature_order": order, "feature_order_source": source}
    return model, info


def _check_chain(parts: TorchRecState, dense_in: int, dim: int, n_features: int, where: str) -> None:
    width = dense_in
    for i, (w, _) in enumerate(parts.dense):
        if w.shape[1] != width:
            what = f"the dataset's {dense_in} dense features" if i == 0 else f"layer {i - 1}'s {width} outputs"
            raise InputError(f"{where}: dense_arch layer {i} takes {w.shape[1]} inputs, but {what} feed it")
        width = int(w.shape[0])
    if width != dim:
        raise InputError(f"{where}: the dense arch ends at {width}, not at the embedding dim {dim} "
                         f"(the dot interaction needs them equal)")
    f = n_features + 1
    width = dim + f * (f - 1) // 2
    for i, (w, _) in enumerate(parts.over):
        name = f"over_arch.model.0._mlp.{i}" if i < len(parts.over) - 1 else "over_arch.model.1"
        if w.shape[1] != width:
            expect = (f"D + F(F-1)/2 = {dim} + {f}*{n_features}/2 = {width} for D={dim} and "
                      f"{n_features} sparse features + the dense one" if i == 0 else f"{width}")
            raise InputError(f"{where}: {name} takes {w.shape[1]} inputs; expected {expect}")
        width = int(w.shape[0])
    if width != 1:
        raise InputError(f"{where}: over_arch.model.1 has {width} outputs; lowprec models predict one "
                         f"logit (over_arch_layer_sizes must end with 1)")


def import_torchrec(path: str | Path, meta: DatasetMeta, table_map: dict[str, str] | None = None,
                    feature_order: list[str] | None = None) -> tuple[DLRM, dict[str, Any]]:
    """Read a TorchRec DLRM safetensors state dict and rebuild it as a lowprec DLRM for `meta`."""
    state, metadata = read_safetensors(path)
    parts = split_state(state, metadata, str(path))
    model, info = build_model(parts, meta, table_map, feature_order, str(path))
    info = {"format": "torchrec", "file": str(path), "sha256": sha256_file(path), **info}
    return model, info
