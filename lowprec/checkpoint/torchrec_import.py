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

Memory: the file is mapped read-only (lowprec.checkpoint.mapped), shapes are checked on its header,
and `write_torchrec` (the CLI's path) writes each table in row chunks of CHUNK_BYTES, each checked
finite after its cast to float32, so a model of any size imports in a few chunks of memory;
`import_torchrec` builds the model in memory (tests, small models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lowprec.checkpoint.float_model import check_finite_chunk, write_float_model
from lowprec.checkpoint.mapped import LogicalTable, open_tensors
from lowprec.checkpoint.torchrec_features import (interaction_permutation, listed, match_tables,
                                                  resolve_feature_order)
from lowprec.data.dataset import DatasetMeta
from lowprec.errors import InputError
from lowprec.filekind import check_regular
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
    """A TorchRec DLRM state dict split into its parts: tables as read-only mapped row sources (read
    in chunks when written, never held whole), layers as float32 tensors (small)."""

    tables: dict[str, LogicalTable]
    dense: list[tuple[torch.Tensor, torch.Tensor]]
    over: list[tuple[torch.Tensor, torch.Tensor]]  # hidden layers then the final Linear
    metadata: dict[str, str]
    keys: dict[str, str]  # table -> its key in the file (for messages)


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
    _check_not_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as src:
            return {k: src.get_tensor(k) for k in src.keys()}, dict(src.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc}); {EXPORT_HINT}") from exc


def _check_not_pickle(path: Path) -> None:
    if not check_regular(path):  # (a FIFO would block the read below)
        raise InputError(f"state dict not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # a safetensors file is an 8-byte header length then a JSON header ("{"); torch.save writes a
    # zip ("PK") or a raw pickle (protocol byte 0x80). Byte 8 tells them apart: bytes 0-7 are a
    # length, which may begin with any byte (0x80 in one file of 256).
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise InputError(f"{path}: looks like a torch.save pickle; lowprec never unpickles a user's "
                         f"file (it can execute code). Load it yourself in TorchRec and {EXPORT_HINT}")


def open_state(path: str | Path) -> tuple[dict[str, LogicalTable | torch.Tensor], dict[str, str]]:
    """The state dict's tensors as read-only mapped views (nothing copied, any size) and its metadata."""
    path = Path(path)
    _check_not_pickle(path)
    try:
        src = open_tensors(path)
    except InputError as exc:
        raise InputError(f"{path}: not a readable safetensors file ({str(exc).replace(f'{path}: ', '')}); "
                         f"{EXPORT_HINT}") from None
    mapped = src.files.get(src.path)
    metadata = dict(mapped.metadata or {}) if mapped is not None else {}
    return {k: src.table(k) if len(src.shape(k)) == 2 else src.tensor(k) for k in src.names()}, metadata


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


def split_state(state: dict[str, LogicalTable | torch.Tensor], metadata: dict[str, str], where: str) -> TorchRecState:
    """Sort keys into tables, dense-arch and over-arch layers; anything else is an InputError."""
    original = {k: k for k in state}
    stripped = _strip_wrappers(original)
    state = {k: state[v] for k, v in stripped.items()}
    tables: dict[str, LogicalTable] = {}
    keys: dict[str, str] = {}
    dense: dict[int, dict[str, torch.Tensor]] = {}
    over: dict[int, dict[str, torch.Tensor]] = {}
    final: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, t in state.items():
        if not t.dtype.is_floating_point:
            raise InputError(f"{where}: tensor {stripped[key]!r} has dtype {t.dtype}; expected float weights")
        if m := _TABLE.fullmatch(key):  # (rows are checked as they are written, chunk by chunk)
            if not isinstance(t, LogicalTable):
                raise InputError(f"{where}: table {m.group(1)!r} has shape {tuple(t.shape)}; every table "
                                 f"must be (rows, dim)")
            tables[m.group(1)], keys[m.group(1)] = t, stripped[key]
            continue
        if isinstance(t, LogicalTable):
            t = t.tensor()
        t = to_float32(where, stripped[key], 0, t)
        if m := _DENSE.fullmatch(key):
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
                         layers_over, metadata, keys)


CHUNK_BYTES = 64 << 20  # a table is read, checked and written in row chunks of at most this


def plan_import(parts: TorchRecState, meta: DatasetMeta, table_map: dict[str, str] | None = None,
                feature_order: list[str] | None = None, where: str = "state dict"):
    """(config, layer tensors by lowprec name, tables by lowprec name as (source, key), info) of the
    lowprec DLRM in dataset order computing the TorchRec model's logits: shapes checked on the
    headers, no table read yet."""
    features = meta.sparse_names
    chosen = match_tables(features, list(parts.tables), table_map, where)
    dim = int(parts.tables[chosen[0]].shape[1])
    if dim < 1:
        raise InputError(f"{where}: table {chosen[0]!r} has shape {tuple(parts.tables[chosen[0]].shape)}; "
                         f"an embedding table needs at least one column (rows, dim >= 1)")
    for f, t, n in zip(features, chosen, meta.num_embeddings):
        w = parts.tables[t]
        if w.shape[1] != dim:
            raise InputError(f"{where}: table {t!r} has shape {tuple(w.shape)}; every table must be "
                             f"(rows, {dim}) (TorchRec's DLRM uses one embedding dim)")
        if w.shape[0] != n:
            raise InputError(f"{where}: table {t!r} has {w.shape[0]} rows but dataset feature {f!r} "
                             f"has num_embeddings {n}")
    _check_chain(parts, len(meta.dense_names), dim, len(features), where)
    order, source = resolve_feature_order(features, feature_order, parts.metadata, where)
    config = import_config(meta, dim, [int(w.shape[0]) for w, _ in parts.dense],
                           [int(w.shape[0]) for w, _ in parts.over[:-1]], where)
    layers: dict[str, torch.Tensor] = {}
    for i, (w, b) in enumerate(parts.dense):
        layers[f"bottom.{i}.weight"], layers[f"bottom.{i}.bias"] = w, b
    for i, (w, b) in enumerate(parts.over):
        layers[f"top.{i}.weight"], layers[f"top.{i}.bias"] = w, b
    layers["top.0.weight"] = layers["top.0.weight"][:, interaction_permutation(dim, features, order)]
    tables = {f"embeddings.{i}.bag.weight": (parts.tables[t], parts.keys[t]) for i, t in enumerate(chosen)}
    info = {"tables": dict(zip(features, chosen)), "feature_order": order, "feature_order_source": source}
    return config, layers, tables, info


def _table_chunks(table: LogicalTable, key: str, where: str):
    """A table's rows as float32 row chunks, each checked finite (after the cast) as it is read."""
    for row, chunk in table.iter_chunks(CHUNK_BYTES):
        yield to_float32(where, key, row, chunk)


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


def _plan(path: str | Path, meta: DatasetMeta, table_map: dict[str, str] | None,
          feature_order: list[str] | None):
    state, metadata = open_state(path)
    parts = split_state(state, metadata, str(path))
    return plan_import(parts, meta, table_map, feature_order, str(path))


def import_torchrec(path: str | Path, meta: DatasetMeta, table_map: dict[str, str] | None = None,
                    feature_order: list[str] | None = None) -> tuple[DLRM, dict[str, Any]]:
    """Read a TorchRec DLRM safetensors state dict and rebuild it as a lowprec DLRM for `meta` (in
    memory; `write_torchrec` writes a model of any size without holding it)."""
    config, state, tables, info = _plan(path, meta, table_map, feature_order)
    for name, (table, key) in tables.items():
        state[name] = torch.cat(list(_table_chunks(table, key, str(path))))
    model = DLRM(config)
    model.load_state_dict(state)
    model.eval()
    return model, {"format": "torchrec", "file": str(path), "sha256": sha256_file(path), **info}


def write_torchrec(path: str | Path, meta: DatasetMeta, out: str | Path, table_map: dict[str, str] | None = None,
                   feature_order: list[str] | None = None) -> tuple[DLRMConfig, dict[str, Any]]:
    """Import as `import_torchrec` does, straight into the float model directory `out` (atomically):
    the state dict is mapped read-only and each table streamed in row chunks, each checked finite
    (float_model.write_float_model), so memory stays a few chunks whatever the model's size."""
    config, layers, tables, info = _plan(path, meta, table_map, feature_order)
    info = {"format": "torchrec", "file": str(path), "sha256": sha256_file(path), **info}

    def pieces(name: str, shape: tuple[int, ...]):
        if name in tables:
            yield from _table_chunks(*tables[name], str(path))
        else:
            yield layers[name]
    write_float_model(out, config, pieces, {"imported": info})
    return config, info
