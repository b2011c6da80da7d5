"""Import what a TorchRec user serves: a quantized EBC state dict + dense weights -> a lowprec artifact.

Inputs (safetensors only; nothing is unpickled):
- the state dict of `torchrec.quant.embedding_modules.EmbeddingBagCollection` (`embedding_bags.{table}.
  weight`, optionally under `sparse_arch.embedding_bag_collection.` and `model.`/`module.`): uint8
  rows in FBGEMM's fused layout ([fp16 scale | fp16 bias | codes] for int8/4/2, padded to the row
  alignment), or in split scale/bias mode (`weight` codes + `weight_qscale`, `weight_qbias`);
  int4/int2 rows as the raw bytes of torchrec's UInt4Tensor/UInt2Tensor (`.elem`);
- the dense and over arch under `torchrec.models.dlrm.DLRM`'s names (the layer naming of
  lowprec.checkpoint.torchrec_import): float `weight`/`bias` (fp32 or fp16), or int8 `weight` codes
  with fp32 `weight_scale` (per output channel) for int8 layers (what `--export torchrec` writes);
  in the same file as the tables or a separate one;
- the table configs (JSON): `{"tables": [{name, feature_names, num_embeddings, embedding_dim,
  data_type}], "layers": [{module, input_qparams, input_qmax}]}` (`--export torchrec`'s config.json is one),
  since rows alone do not say their data type.

Each dataset feature is served by the table whose `feature_names` hold it (or, failing that, the
table listing no feature_names named `t_{feature}` / `{feature}`); the config is type-checked key by
key and its redundant keys checked against the weights (lowprec.checkpoint.torchrec_quant_config); as
in the float import, a table serving no dataset feature
and a key nothing reads are refused, naming the file. The interaction's columns follow the EBC's
feature order, permuted into dataset order as the float import does. The rows are copied as they are: the
artifact's runtime computes exactly what the TorchRec model computes, so `lowprec compare`,
`drift`, `inspect` and `eval` run on what the user serves.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

import torch

import lowprec
from lowprec.checkpoint.artifact import FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS, load_artifact, write_manifest
from lowprec.checkpoint.tensorfile import ALIGN, TensorFileWriter
from lowprec.checkpoint.torchrec_quant_config import (check_arch, check_feature_names, check_hotness, check_layer,
                                                      check_layers, check_row_alignment, check_tables)
from lowprec.checkpoint.torchrec_import import (_strip_wrappers, import_config, interaction_permutation, listed,
                                                read_safetensors, refuse_unexpected)
from lowprec.data.dataset import DatasetMeta
from lowprec.errors import InputError
from lowprec.fileio import atomic_dir, read_json, sha256_file
from lowprec.model.config import DLRMConfig
from lowprec.plan import LayerChoice, Plan, PlanInfo, TableChoice
from lowprec.precision import Precision
from lowprec.serve.torchrec_export import PRECISIONS

EBC_PREFIX = "sparse_arch.embedding_bag_collection."
_ROWS = re.compile(r"embedding_bags\.(.+)\.(weight|weight_qscale|weight_qbias)")
_LAYER = re.compile(r"(dense_arch\.model\._mlp\.\d+\._linear|over_arch\.model\.0\._mlp\.\d+\._linear|"
                    r"over_arch\.model\.1)\.(weight|bias|weight_scale)")
EBC_KEYS = "TorchRec's quantized EBC keys embedding_bags.<table>.weight (+ .weight_qscale, .weight_qbias)"
LAYER_KEYS = ("TorchRec DLRM's dense_arch.model._mlp.<i>._linear, over_arch.model.0._mlp.<i>._linear and "
              "over_arch.model.1 .weight, .bias (+ .weight_scale for int8)")


def _table_rows(name: str, parts: dict[str, torch.Tensor], precision: Precision, rows: int, dim: int,
                align: int, where: str) -> torch.Tensor:
    """A table's rows in lowprec's stored layout (FBGEMM's fused rows, unpadded).

    Fused rows are `width` bytes padded to a multiple of `align` (the EBC's row_alignment), or
    unpadded; split scale/bias mode holds unpadded codes (FBGEMM drops the padding there). Any other
    width is another dim or data type than the config says, so it is refused, not read in part."""
    width = precision.bytes_per_row(dim)
    w = parts.get("weight")
    if w is None:
        raise InputError(f"{where}: table {name!r} has no embedding_bags.{name}.weight")
    shape, aligned = tuple(w.shape), width + (-width % align)
    if "weight_qscale" in parts or "weight_qbias" in parts:  # split scale/bias mode
        if not precision.is_integer or "weight_qscale" not in parts or "weight_qbias" not in parts:
            raise InputError(f"{where}: table {name!r} ({precision.value}) has a partial or "
                             f"unexpected weight_qscale/weight_qbias")
        if w.dim() != 2 or w.shape[1] != width - 4:
            raise InputError(f"{where}: table {name!r} holds {w.dtype} codes of shape {shape}; a "
                             f"{precision.value} table of {rows} rows x dim {dim} in split scale/bias mode "
                             f"needs uint8 codes of exactly {width - 4} bytes a row (TorchRec's quantized "
                             f"EBC layout)")
        s, b = (parts[k].to(torch.float16).reshape(-1, 1) for k in ("weight_qscale", "weight_qbias"))
        if s.shape[0] != w.shape[0] or b.shape[0] != w.shape[0]:
            raise InputError(f"{where}: table {name!r}: weight_qscale/weight_qbias do not have "
                             f"{w.shape[0]} rows")
        w = torch.cat([s.view(torch.uint8), b.view(torch.uint8), w.to(torch.uint8)], dim=1)
        aligned = width
    if w.dtype != torch.uint8 or w.dim() != 2 or w.shape[0] != rows or w.shape[1] not in (width, aligned):
        padded = f" (or {aligned}: padded to the row_alignment {align})" if aligned != width else ""
        raise InputError(f"{where}: table {name!r} holds {w.dtype} of shape {shape}; a "
                         f"{precision.value} table of {rows} rows x dim {dim} needs uint8 rows of exactly "
                         f"{width} bytes{padded} (TorchRec's quantized EBC layout)")
    rows_out = w[:, :width].contiguous()
    if not precision.is_integer and precision != Precision.FP8:
        decoded = rows_out.view(torch.float32 if precision == Precision.FP32 else torch.float16)
        if not torch.isfinite(decoded).all():
            raise InputError(f"{where}: table {name!r} holds NaN or Inf")
    return rows_out


def _tables_by_feature(features: list[str], tables: list[dict[str, Any]], where: str) -> dict[str, dict]:
    by_feature: dict[str, dict] = {}
    names = {t["name"]: t for t in tables}
    for f in features:
        owners = [t for t in tables if f in t.get("feature_names", [])]
        # by name only tables that list no feature_names (a table listing others serves those)
        owners = owners or [names[n] for n in (f"t_{f}", f) if n in names and "feature_names" not in names[n]]
        if len(owners) != 1:
            raise InputError(f"{where}: dataset feature {f!r} is served by "
                             f"{[t['name'] for t in owners] or 'no table'} (tables and their feature_names: "
                             f"{ {t['name']: t.get('feature_names') for t in tables} })")
        by_feature[f] = owners[0]
    return by_feature


def _unused_tables(ebc: dict[str, dict], owners: dict[str, dict], tables: list[dict], features: list[str],
                   ebc_path, config_path) -> None:
    """Refuse tables (in the state dict or the config) that serve no dataset feature, as the float import does."""
    used = {t["name"] for t in owners.values()}
    hint = (f"(dataset features: {features[:30]}); list the feature each serves in its feature_names in "
            f"{config_path}, or drop the table")
    for where, names in ((ebc_path, ebc), (config_path, [t["name"] for t in tables])):
        unused = set(names) - used
        if unused:
            raise InputError(f"{where}: tables {listed(unused)} serve no dataset feature {hint}")


def read_inputs(ebc_path: str | Path, dense_path: str | Path | None, config_path: str | Path):
    """(ebc parts by table, layer parts by TorchRec module, config) from the user's files."""
    config = read_json(config_path, "TorchRec table config")
    if not isinstance(config, dict) or not isinstance(config.get("tables"), list) or not config["tables"]:
        raise InputError(f"{config_path}: expected {{\"tables\": [{{name, feature_names, num_embeddings, "
                         f"embedding_dim, data_type}}, ...]}}")
    state, _ = read_safetensors(ebc_path)
    state = _strip_wrappers(state)
    tables: dict[str, dict[str, torch.Tensor]] = {}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, t in state.items():
        if m := _ROWS.fullmatch(key[len(EBC_PREFIX):] if key.startswith(EBC_PREFIX) else key):
            tables.setdefault(m.group(1), {})[m.group(2)] = t
        elif dense_path is None and (m := _LAYER.fullmatch(key)):
            layers.setdefault(m.group(1), {})[m.group(2)] = t
        else:
            unexpected.append(key)
    refuse_unexpected(unexpected, str(ebc_path), EBC_KEYS + (f" (the dense and over arch are read from --dense "
                                                             f"{dense_path})" if dense_path else f", {LAYER_KEYS}"))
    if not tables:
        raise InputError(f"{ebc_path}: no embedding_bags.<table>.weight; is this a TorchRec quantized "
                         f"EmbeddingBagCollection state dict?")
    if dense_path is not None:
        dense, _ = read_safetensors(dense_path)
        unexpected = []
        for key, t in _strip_wrappers(dense).items():
            if m := _LAYER.fullmatch(key):
                layers.setdefault(m.group(1), {})[m.group(2)] = t
            else:
                unexpected.append(key)
        refuse_unexpected(unexpected, str(dense_path), LAYER_KEYS)
    return tables, layers, config


def _layer_order(found: dict[str, dict[str, torch.Tensor]], where: str) -> tuple[list[str], list[str]]:
    """TorchRec module paths of the bottom layers and the top layers (hidden, then the final one)."""
    def numbered(prefix: str) -> list[str]:
        idx = sorted(int(m[len(prefix):].split(".")[0]) for m in found if m.startswith(prefix))
        if idx != list(range(len(idx))):
            raise InputError(f"{where}: {prefix}* layers are numbered {idx}, not 0..{len(idx) - 1}")
        return [f"{prefix}{i}._linear" for i in idx]

    bottom, top = numbered("dense_arch.model._mlp."), numbered("over_arch.model.0._mlp.")
    if not bottom or not top or "over_arch.model.1" not in found:
        raise InputError(f"{where}: a TorchRec DLRM needs dense_arch.model._mlp.*, over_arch.model.0._mlp.* "
                         f"and over_arch.model.1 layers; found {sorted(found)[:12]}")
    return bottom, top + ["over_arch.model.1"]


def _layer_tensors(module: str, parts: dict[str, torch.Tensor], where: str) -> tuple[Precision, dict]:
    """(precision, tensors as the artifact stores them: weight, bias[, scale]) of one layer."""
    w, b = parts.get("weight"), parts.get("bias")
    if w is None or b is None or w.dim() != 2 or b.shape != (w.shape[0],):
        raise InputError(f"{where}: layer {module} needs weight (out, in) and bias (out,); got "
                         f"{ {k: tuple(v.shape) for k, v in parts.items()} }")
    for key in ("bias", "weight_scale"):  # an int64 bias was cast silently
        if key in parts and parts[key].dtype not in (torch.float32, torch.float16):
            raise InputError(f"{where}: layer {module}.{key} is {parts[key].dtype}; expected float32 (or float16)")
    if "weight_scale" in parts:
        s = parts["weight_scale"].float().reshape(-1)
        if w.dtype != torch.int8 or s.shape != (w.shape[0],) or not (torch.isfinite(s).all() and (s > 0).all()):
            raise InputError(f"{where}: int8 layer {module} needs int8 weight codes and one positive "
                             f"finite weight_scale per output channel")
        over = (~torch.isfinite(w.float().abs().amax(dim=1) * s)).nonzero()  # code x scale = the weight
        if over.numel():
            c = int(over[0, 0])
            raise InputError(f"{where}: int8 layer {module}: output channel {c}'s weight_scale {float(s[c]):g} "
                             f"times its codes overflows float32 (the served weights would be Inf)")
        tensors = {"weight": w, "scale": s, "bias": b.float()}
        precision = Precision.INT8
    elif w.dtype in (torch.float32, torch.float16):
        precision = Precision.FP32 if w.dtype == torch.float32 else Precision.FP16
        tensors = {"weight": w, "bias": b.float()}
    else:
        raise InputError(f"{where}: layer {module}.weight is {w.dtype}; expected fp32, fp16, or int8 "
                         f"codes with weight_scale")
    if not all(torch.isfinite(t.float()).all() for t in tensors.values()):
        raise InputError(f"{where}: layer {module} holds NaN or Inf")
    return precision, tensors


def _feature_order(features: list[str], owners: dict[str, dict], tables: list[dict]) -> list[str]:
    """Dataset features in the order the EBC emits them (tables in config order, then feature_names)."""
    index = {t["name"]: i for i, t in enumerate(tables)}

    def key(f: str) -> tuple[int, int]:
        names = owners[f].get("feature_names") or []
        return index[owners[f]["name"]], names.index(f) if f in names else 0
    return sorted(features, key=key)


def import_torchrec_quant(ebc_path: str | Path, dense_path: str | Path | None, config_path: str | Path,
                          meta: DatasetMeta, out: str | Path) -> dict[str, Any]:
    """Write a lowprec artifact at `out` (atomically) serving the TorchRec model; returns its manifest.

    The user's files are refused (InputError) where a key, type or shape is not what TorchRec
    writes, and the artifact is loaded back before it replaces `out`: one that lowprec itself would
    refuse later (bad activation qparams, non-finite row scales) is never written."""
    try:
        return _import(ebc_path, dense_path, config_path, meta, out)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        files = ", ".join(str(x) for x in (config_path, ebc_path, dense_path) if x is not None)
        raise InputError(f"{files}: not the TorchRec quantized model lowprec imports ({type(exc).__name__}: "
                         f"{exc}); see docs/torchrec.md for the files and keys") from exc


def _import(ebc_path: str | Path, dense_path: str | Path | None, config_path: str | Path,
            meta: DatasetMeta, out: str | Path) -> dict[str, Any]:
    ebc, found, cfg = read_inputs(ebc_path, dense_path, config_path)
    where, features = str(ebc_path), meta.sparse_names
    check_tables(cfg, features, str(config_path))
    align = check_row_alignment(cfg, str(config_path))
    owners = _tables_by_feature(features, cfg["tables"], str(config_path))
    _unused_tables(ebc, owners, cfg["tables"], features, ebc_path, config_path)
    check_feature_names(cfg["tables"], features, str(config_path))
    check_hotness(owners, {f.name: f.hotness for f in meta.sparse}, str(config_path))
    dims = {int(t["embedding_dim"]) for t in cfg["tables"]}
    if len(dims) != 1:
        raise InputError(f"{config_path}: tables have dims {sorted(dims)}; TorchRec's DLRM uses one")
    dim = dims.pop()
    if dim < 1:
        raise InputError(f"{config_path}: tables have embedding_dim {dim}; it must be >= 1")
    dense_where = str(dense_path or ebc_path)
    bottom, top = _layer_order(found, dense_where)
    layers = {f"bottom.{i}": m for i, m in enumerate(bottom)} | {f"top.{i}": m for i, m in enumerate(top)}
    widths = {m: int(found[m]["weight"].shape[0]) for m in bottom + top}
    if widths[bottom[-1]] != dim:
        raise InputError(f"{dense_where}: {bottom[-1]} has {widths[bottom[-1]]} outputs, but the tables' "
                         f"embedding_dim in {config_path} is {dim}; the dense arch must end at it (the dot "
                         f"interaction needs them equal)")
    config = import_config(meta, dim, [widths[m] for m in bottom], [widths[m] for m in top[:-1]],
                           f"{config_path}, {dense_where}")
    check_arch(cfg, meta.dense_names, dim, [widths[m] for m in bottom], [widths[m] for m in top],
               str(config_path), dense_where)
    layer_cfg = check_layers(cfg, {m: n for n, m in layers.items()}, str(config_path))
    perm = interaction_permutation(dim, features, _feature_order(features, owners, cfg["tables"]))
    with atomic_dir(out, "artifact") as tmp:
        with TensorFileWriter(tmp / WEIGHTS) as writer:  # its file closed on any error
            tables = [_write_table(writer, f, n, owners[f], ebc, align, str(config_path), where)
                      for f, n in zip(features, meta.num_embeddings)]
            entries = {}
            for name, module in layers.items():
                precision, tensors = _layer_tensors(module, found[module], str(dense_path or ebc_path))
                want = config.layer_shapes()[name]
                if tuple(tensors["weight"].shape) != (want[1], want[0]):
                    raise InputError(f"{dense_path or ebc_path}: layer {module} has weight "
                                     f"{tuple(tensors['weight'].shape)}; the DLRM over {len(features)} "
                                     f"tables of dim {dim} needs {(want[1], want[0])}")
                if name == "top.0":
                    tensors["weight"] = tensors["weight"][:, perm]
                check_layer(layer_cfg[module], module, precision.value, str(config_path), dense_where)
                qp = layer_cfg[module].get("input_qparams")
                nbytes = sum(writer.add(f"layers.{name}.{k}", t.contiguous()) for k, t in tensors.items())
                entries[name] = {"precision": precision.value, "in": want[0], "out": want[1], "bytes": nbytes,
                                 "input_range": None,
                                 "input_qparams": [float(qp[0]), int(qp[1])] if qp and precision == Precision.INT8 else None}
                qmax = layer_cfg[module].get("input_qmax")  # (none: an older export, served at 255 as it was;
                if precision == Precision.INT8 and qmax is not None:  # the artifact's validation checks it)
                    entries[name]["input_qmax"] = qmax
            writer.close()
        manifest = _manifest(config, tables, entries, ebc_path, dense_path, config_path)
        manifest["files"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
        write_manifest(tmp / MANIFEST, manifest)
        try:
            load_artifact(tmp)
        except InputError as exc:
            raise InputError(f"{config_path}, {ebc_path}: the artifact they make would not load, so nothing "
                             f"was written: {str(exc).replace(str(tmp), str(out))}") from None
    return manifest


def _write_table(writer: TensorFileWriter, feature: str, rows: int, table: dict[str, Any],
                 ebc: dict[str, dict[str, torch.Tensor]], align: int, config_where: str, where: str) -> dict[str, Any]:
    name = table["name"]
    if table.get("data_type") not in PRECISIONS:
        raise InputError(f"{config_where}: table {name!r} has data_type {table.get('data_type')!r}; "
                         f"lowprec imports {sorted(PRECISIONS)}")
    if int(table["num_embeddings"]) != rows:
        raise InputError(f"{config_where}: table {name!r} has {table['num_embeddings']} rows but dataset "
                         f"feature {feature!r} has num_embeddings {rows}")
    if name not in ebc:
        raise InputError(f"{where}: no rows for table {name!r} (tables: {sorted(ebc)[:30]})")
    precision = Precision(PRECISIONS[table["data_type"]])
    data = _table_rows(name, ebc[name], precision, rows, int(table["embedding_dim"]), align, where)
    nbytes = writer.add(f"tables.{feature}", data, align=ALIGN)
    return {"name": feature, "rows": rows, "embedding": "dense", "precision": precision.value,
            "range_method": table.get("range_method") or "minmax", "sharing": None,
            "physical": [feature], "exact": True, "bytes": nbytes, "dim": int(table["embedding_dim"]),
            "torchrec_table": name}


def _manifest(config: DLRMConfig, tables: list[dict], layers: dict[str, dict], ebc_path, dense_path,
              config_path) -> dict[str, Any]:
    plan = Plan({t["name"]: TableChoice(Precision(t["precision"]), None, t["range_method"]) for t in tables},
                {n: LayerChoice(Precision(v["precision"])) for n, v in layers.items()},
                PlanInfo(kind="imported torchrec-quant"))
    embedding_bytes = sum(t["bytes"] for t in tables)
    fp32_bytes = config.dense_fp32_bytes()
    files = [p for p in (ebc_path, dense_path, config_path) if p is not None]
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lowprec_version": lowprec.__version__, "torch_version": lowprec.TORCH_VERSION,
        "fbgemm_version": lowprec.FBGEMM_VERSION,
        "source": {"format": "torchrec-quant", "files": {str(p): sha256_file(p) for p in files}},
        "model": config.to_json(), "plan": plan.to_json(),
        "tables": [{k: v for k, v in t.items() if k not in ("dim", "torchrec_table")} |
                   {"torchrec_table": t["torchrec_table"]} for t in tables],
        "physical_tables": [{"key": t["name"], "rows": t["rows"], "dim": t["dim"], "precision": t["precision"],
                             "bytes": t["bytes"], "padded_from": None} for t in tables],
        "features": [{"table": t["name"], "transform": {"kind": "identity"}} for t in tables],
        "serving": [{"name": t.name, "hotness": t.hotness, "groups": [[i]]} for i, t in enumerate(config.tables)],
        "buffers": [], "layers": layers,
        "embedding_bytes": embedding_bytes, "fp32_embedding_bytes": fp32_bytes,
        "compression": fp32_bytes / embedding_bytes if embedding_bytes else float("nan"),
        "layer_bytes": sum(v["bytes"] for v in layers.values()),
    }
