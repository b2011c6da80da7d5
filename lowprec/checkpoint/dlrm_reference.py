"""Import a facebookresearch/dlrm (`dlrm_s_pytorch.py`, `DLRM_Net`) model as a lowprec float model.

The reference code saves `torch.save` pickles, which lowprec never opens (unpickling runs code).
The user converts their own checkpoint in their training environment with
tools/dlrm_reference_to_safetensors.py (a short script they read and run), which writes the state
dict as safetensors plus a JSON config; this module reads only those two files.

DLRM_Net's naming (create_mlp builds Sequential(Linear, ReLU, Linear, ..., Sigmoid), create_emb a
ModuleList of sum EmbeddingBags):

    emb_l.{t}.weight               -> embeddings.{t}.bag.weight   table t = sparse feature t
    bot_l.{2i}.weight / .bias      -> bottom.{i}.weight / .bias   (odd indices are activations)
    top_l.{2i}.weight / .bias      -> top.{i}.weight / .bias      the last layer's Sigmoid is dropped:
                                                                  lowprec models return the logit

Its dot interaction (`arch_interaction_itself=False`) takes the pairs (i, j), j < i, row by row
(`li, lj` in interact_features): the lower triangle, while lowprec's graph takes the upper triangle
row by row; the top MLP's first columns are permuted so the imported model computes the same
logits. QR / mixed-dimension tables (`--qr-flag`, `--md-flag`: `emb_l.{t}.embs.*`), learned
per-sample weights (`v_W_l`), the `cat` interaction, self-interaction and integer (non-float) weight
tensors are refused naming the key or setting. Tables follow the dataset's sparse feature order unless the config's
`sparse_feature_names` lists the reference's own order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lowprec.checkpoint.torchrec_import import import_config, listed, read_safetensors, to_float32
from lowprec.data.dataset import DatasetMeta
from lowprec.errors import InputError
from lowprec.fileio import read_json, sha256_file
from lowprec.model.dlrm import DLRM

_EMB = re.compile(r"emb_l\.(\d+)\.weight")
_MLP = re.compile(r"(bot_l|top_l)\.(\d+)\.(weight|bias)")
SCRIPT = "tools/dlrm_reference_to_safetensors.py"


def reference_pairs(f: int) -> list[tuple[int, int]]:
    """The reference's interaction pairs over f vectors, in its column order (j < i, row by row)."""
    return [(i, j) for i in range(f) for j in range(i)]


def interaction_columns(dim: int, lowprec_order: list[str], reference_order: list[str]) -> torch.Tensor:
    """Column c of lowprec's interaction output = column cols[c] of the reference's, same inputs."""
    slot = {name: k + 1 for k, name in enumerate(reference_order)}
    idx = [0] + [slot[name] for name in lowprec_order]  # lowprec vector -> reference vector
    ref = {frozenset(p): k for k, p in enumerate(reference_pairs(len(idx)))}
    cols = list(range(dim))
    for a, b in zip(*torch.triu_indices(len(idx), len(idx), 1).tolist()):
        cols.append(dim + ref[frozenset((idx[a], idx[b]))])
    return torch.tensor(cols)


def _mlp(found: dict[int, dict[str, torch.Tensor]], name: str, where: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    idx = sorted(found)
    if not idx:
        raise InputError(f"{where}: no {name}.{{2i}}.weight / .bias layers; is this DLRM_Net's state dict?")
    if idx != list(range(0, 2 * len(idx), 2)):
        raise InputError(f"{where}: {name} Linear layers sit at indices {idx}; DLRM_Net's create_mlp puts "
                         f"them at 0, 2, 4, ... (an activation after each)")
    out = []
    for i in idx:
        w, b = found[i].get("weight"), found[i].get("bias")
        if w is None or b is None or w.dim() != 2 or b.shape != (w.shape[0],):
            raise InputError(f"{where}: {name}.{i} needs weight (out, in) and bias (out,)")
        if w.shape[0] < 1:
            raise InputError(f"{where}: {name}.{i}.weight has shape {tuple(w.shape)}: a layer with no "
                             f"outputs (every layer needs at least one)")
        out.append((w.float(), b.float()))
    return out


def split_reference(state: dict[str, torch.Tensor], where: str):
    """(tables in reference order, bottom layers, top layers) of a DLRM_Net state dict."""
    tables: dict[int, torch.Tensor] = {}
    mlps: dict[str, dict[int, dict[str, torch.Tensor]]] = {"bot_l": {}, "top_l": {}}
    unexpected = []
    for key, t in state.items():
        if (_EMB.fullmatch(key) or _MLP.fullmatch(key)) and not t.is_floating_point():
            raise InputError(f"{where}: tensor {key!r} has dtype {t.dtype}; expected float weights (convert "
                             f"DLRM_Net's float state dict with {SCRIPT}, not a quantized or cast copy)")
        if m := _EMB.fullmatch(key):
            tables[int(m.group(1))] = to_float32(where, key, 0, t)  # (finite after the cast, too)
        elif m := _MLP.fullmatch(key):
            mlps[m.group(1)].setdefault(int(m.group(2)), {})[m.group(3)] = to_float32(where, key, 0, t)
        else:
            unexpected.append(key)
    if unexpected:
        hint = (" (QR / mixed-dimension tables from --qr-flag / --md-flag, or learned per-sample "
                "weights v_W_l, are not imported)" if any(k.startswith(("emb_l.", "v_W_l")) for k in unexpected) else "")
        raise InputError(f"{where}: unexpected keys {listed(unexpected)}{hint}; expected DLRM_Net's "
                         f"emb_l.{{t}}.weight, bot_l.{{2i}}.*, top_l.{{2i}}.*")
    if sorted(tables) != list(range(len(tables))) or not tables:
        raise InputError(f"{where}: embedding tables emb_l.{{t}}.weight are numbered {sorted(tables)}, "
                         f"not 0..T-1")
    return ([tables[i] for i in range(len(tables))], _mlp(mlps["bot_l"], "bot_l", where),
            _mlp(mlps["top_l"], "top_l", where))


def _check_config(cfg: Any, where: str) -> list[str] | None:
    if not isinstance(cfg, dict) or cfg.get("format") != "dlrm-reference":
        raise InputError(f"{where}: not a config written by {SCRIPT} (format 'dlrm-reference')")
    if cfg.get("arch_interaction_op", "dot") != "dot":
        raise InputError(f"{where}: arch_interaction_op {cfg['arch_interaction_op']!r}; lowprec's graph is "
                         f"the dot interaction")
    if cfg.get("arch_interaction_itself", False):
        raise InputError(f"{where}: arch_interaction_itself=True adds self-dots lowprec's graph does not have")
    names = cfg.get("sparse_feature_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(x, str) for x in names)):
        raise InputError(f"{where}: sparse_feature_names must be a list of feature names, got {names!r}")
    return names


def import_dlrm_reference(path: str | Path, config_path: str | Path, meta: DatasetMeta) -> tuple[DLRM, dict[str, Any]]:
    """A lowprec DLRM (dataset order) computing the reference model's logits (pre-sigmoid)."""
    where = str(path)
    ref_order = _check_config(read_json(config_path, "dlrm-reference config"), str(config_path))
    try:
        state, _ = read_safetensors(path)
    except InputError as exc:
        raise InputError(f"{exc}. For a reference DLRM checkpoint, run {SCRIPT} on it in your training "
                         f"environment instead.") from None
    tables, bottom, top = split_reference(state, where)
    features = meta.sparse_names
    ref_order = ref_order or list(features)
    if sorted(ref_order) != sorted(features) or len(tables) != len(features):
        raise InputError(f"{where}: {len(tables)} tables for features {ref_order[:30]}; the dataset has "
                         f"{len(features)} sparse features {features[:30]}")
    by_name = dict(zip(ref_order, tables))
    flat = [i for i, w in enumerate(tables) if w.dim() != 2]
    if flat:
        raise InputError(f"{where}: emb_l.{flat[0]}.weight has shape {tuple(tables[flat[0]].shape)}; a table is "
                         f"(rows, dim)")
    dim = int(tables[0].shape[1])
    if dim < 1:
        raise InputError(f"{where}: emb_l.0.weight has shape {tuple(tables[0].shape)}; a table needs at least "
                         f"one column (rows, dim >= 1)")
    for i, (f, w) in enumerate(zip(ref_order, tables)):
        n = meta.num_embeddings[features.index(f)]
        if w.shape != (n, dim):
            raise InputError(f"{where}: emb_l.{i}.weight (feature {f!r}) has shape {tuple(w.shape)}; "
                             f"expected ({n}, {dim})")
    if int(bottom[-1][0].shape[0]) != dim:
        raise InputError(f"{where}: bot_l.{2 * (len(bottom) - 1)}.weight has shape {tuple(bottom[-1][0].shape)}; "
                         f"the bottom MLP must end at the tables' dim {dim} (the dot interaction needs them equal)")
    config = import_config(meta, dim, [int(w.shape[0]) for w, _ in bottom], [int(w.shape[0]) for w, _ in top[:-1]],
                           where)
    shapes = config.layer_shapes()
    state_out: dict[str, torch.Tensor] = {}
    for kind, layers in (("bottom", bottom), ("top", top)):
        for i, (w, b) in enumerate(layers):
            name = f"{kind}.{i}"
            ref = f"{'bot_l' if kind == 'bottom' else 'top_l'}.{2 * i}"
            if name not in shapes or tuple(w.shape) != (shapes[name][1], shapes[name][0]):
                want = (shapes[name][1], shapes[name][0]) if name in shapes else "no such layer"
                raise InputError(f"{where}: {ref}.weight has shape {tuple(w.shape)}; a DLRM over "
                                 f"{len(meta.dense_names)} dense features and {len(features)} tables of dim "
                                 f"{dim} needs {want} (the top MLP ends at 1 logit)")
            state_out[f"{name}.weight"], state_out[f"{name}.bias"] = w, b
    state_out["top.0.weight"] = state_out["top.0.weight"][:, interaction_columns(dim, features, ref_order)]
    for t, f in enumerate(features):
        state_out[f"embeddings.{t}.bag.weight"] = by_name[f].clone()
    model = DLRM(config)
    model.load_state_dict(state_out)
    model.eval()
    info = {"format": "dlrm-reference", "file": str(path), "sha256": sha256_file(path),
            "tables": {f: f"emb_l.{ref_order.index(f)}" for f in features}, "feature_order": ref_order,
            "feature_order_source": "config" if ref_order != list(features) else "dataset"}
    return model, info
