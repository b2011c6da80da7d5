"""TorchRec export of a quantized artifact: the files TorchRec's public API loads into a serving DLRM.

`export_torchrec(artifact)` adds a `torchrec/` folder to a verified artifact:

    torchrec/config.json        table configs (name, feature_names, num_embeddings, embedding_dim,
                                TorchRec DataType, the torch dtype for `per_table_weight_dtype`),
                                the DLRM's layer sizes, and per layer its precision and qparams
    torchrec/ebc.safetensors    the state dict of `torchrec.quant.embedding_modules.
                                EmbeddingBagCollection`: `embedding_bags.{table}.weight`, uint8 rows
                                in FBGEMM's fused layout ([fp16 scale | fp16 bias | codes] for
                                int8/4/2) zero-padded to the EBC's 16-byte row alignment; int4/int2
                                as their raw bytes (wrap them in torchrec's UInt4Tensor/UInt2Tensor
                                to load, as the EBC's own state dict does)
    torchrec/dense.safetensors  the dense and over arch in `torchrec.models.dlrm.DLRM`'s names:
                                fp32/fp16 layers as `weight`/`bias` (fp16 weights stay fp16);
                                int8 layers as int8 `weight` codes, fp32 `weight_scale` and `bias`,
                                served by `lowprec.serve.layers.Int8Linear` (FBGEMM's int8 GEMM,
                                activations to codes 0..`input_qmax`, exactly lowprec's runtime)

lowprec's rows are byte-for-byte the rows the quantized EBC stores, so the loaded model computes
exactly the runtime's logits. Only dense tables at fp32/fp16/int8/int4/int2 fit TorchRec's EBC:
hash, QR, ROBE and hot-sharing forms, and FP8 tables (TorchRec's DataType has no HFP8; its NFP8 is
E4M3, another encoding), are refused naming the table; `--export torchscript` serves all of them.

`load_torchrec(folder)` is the documented loader (docs/torchrec.md): TorchRec's public constructors
plus `load_state_dict(strict=True)`. Writing is atomic, as for the TorchScript export: a temporary
sibling artifact (hard links to the existing files, the new folder, a manifest whose sha256 map
covers it) replaces the old one only when complete, and only after the loaded model was checked
against the runtime when TorchRec imports here.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lowprec.checkpoint.artifact import MANIFEST, WEIGHTS, load_artifact, write_manifest
from lowprec.checkpoint.mapped import open_tensors
from lowprec._compat import quiet_torchrec_internals
from lowprec.errors import InputError, InputWarning
from lowprec.data.ids import IdOutOfRange
from lowprec.fileio import atomic_dir, read_json, sha256_file, write_json
from lowprec.serve.checks import check_id_matrix, out_of_range
from lowprec.serve.export import _link_or_copy, example_batch
from lowprec.serve.runtime import QuantizedDLRM

FOLDER = "torchrec"
CONFIG, EBC, DENSE = "config.json", "ebc.safetensors", "dense.safetensors"
FORMAT, FORMAT_VERSION = "lowprec-torchrec", 1
ROW_ALIGNMENT = 16  # torchrec.quant.embedding_modules.DEFAULT_ROW_ALIGNMENT
# lowprec precision -> (TorchRec DataType name, torch dtype for quantize_embeddings' per_table_weight_dtype)
DATA_TYPES = {"fp32": ("FP32", "float32"), "fp16": ("FP16", "float16"), "int8": ("INT8", "qint8"),
              "int4": ("INT4", "quint4x2"), "int2": ("INT2", "quint2x4")}
PRECISIONS = {dt: p for p, (dt, _) in DATA_TYPES.items()}
CHECK_TOLERANCE = 1e-5
TORCHSCRIPT_HINT = "`lowprec convert ... --export torchscript` serves every form"


def table_name(feature: str) -> str:
    """TorchRec table name of a lowprec table (TorchRec's DLRM examples name tables t_{feature})."""
    return f"t_{feature}"


def layer_module(name: str, n_top: int) -> str:
    """The module path in torchrec.models.dlrm.DLRM of lowprec layer bottom.i / top.i."""
    kind, i = name.split(".")
    if kind == "bottom":
        return f"dense_arch.model._mlp.{i}._linear"
    return "over_arch.model.1" if int(i) == n_top - 1 else f"over_arch.model.0._mlp.{i}._linear"


def refusal(name: str, form: str | None, precision: str, dim: int) -> str | None:
    """Why TorchRec's quantized EBC cannot hold table `name`, or None when it can."""
    if form:
        return (f"table {name!r} serves as {form}; TorchRec's quantized EmbeddingBagCollection "
                f"holds plain tables only ({TORCHSCRIPT_HINT})")
    if precision not in DATA_TYPES:
        return (f"table {name!r} is {precision}; TorchRec's quantized EmbeddingBagCollection has no "
                f"such data type (TorchRec's DataType maps to no FBGEMM SparseType.FP8, the HFP8 "
                f"lowprec's fp8 tables use; its NFP8 is E4M3, another encoding; it takes "
                f"{sorted(DATA_TYPES)}) ({TORCHSCRIPT_HINT})")
    if dim % 4:
        return (f"table {name!r} has dim {dim}, which FBGEMM stores padded to a multiple of 4; "
                f"TorchRec's DLRM needs the tables' dim to equal the dense arch's output "
                f"({TORCHSCRIPT_HINT})")
    return None


def _refuse(where: str, why: str | None) -> None:
    if why:
        raise InputError(f"{where}: {why}")


def check_plan(config, plan, where: str = "plan") -> None:
    """Before converting: InputError if `plan` on `config` (a DLRMConfig) cannot export to TorchRec."""
    if not config.top_mlp:
        raise InputError(f"{where}: the top MLP has no hidden layer; TorchRec's OverArch needs at "
                         f"least two layers ({TORCHSCRIPT_HINT})")
    for t in config.tables:
        choice = plan.table(t.name)
        form = (choice.sharing or {}).get("kind") or (t.embedding if t.embedding != "dense" else None)
        _refuse(where, refusal(t.name, form and str(form), choice.precision.value, config.embedding_dim))


def _check_table(t: dict[str, Any], serving: dict[str, Any], manifest: dict[str, Any], where: str) -> dict:
    kind = (t.get("sharing") or {}).get("kind") or (t.get("embedding") if t.get("embedding") != "dense" else None)
    feats = [f for g in serving["groups"] for f in g]
    physical = {p["key"]: p for p in manifest["physical_tables"]}
    p = physical.get(t["physical"][0]) if len(t["physical"]) == 1 else None
    plain = (len(feats) == 1 and manifest["features"][feats[0]]["transform"].get("kind") == "identity"
             and p is not None and int(p["rows"]) == int(t["rows"]))
    form = kind or (None if plain else "a shared or transformed form")
    _refuse(where, refusal(t["name"], form, t["precision"], int((p or {}).get("padded_from") or
                                                                 manifest["model"]["embedding_dim"])))
    return p


def torchrec_config(manifest: dict[str, Any], where: str = "artifact") -> dict[str, Any]:
    """The TorchRec config of an artifact's manifest; InputError naming what TorchRec cannot serve."""
    model = manifest["model"]
    dim = int(model["embedding_dim"])
    if not model["top_mlp"]:
        raise InputError(f"{where}: the top MLP has no hidden layer; TorchRec's OverArch needs at "
                         f"least two layers ({TORCHSCRIPT_HINT})")
    tables = []
    for t, serving, tcfg in zip(manifest["tables"], manifest["serving"], model["tables"]):
        p = _check_table(t, serving, manifest, where)
        data_type, dtype = DATA_TYPES[t["precision"]]
        tables.append({"name": table_name(t["name"]), "feature_names": [t["name"]],
                       "num_embeddings": int(t["rows"]), "embedding_dim": dim, "data_type": data_type,
                       "weight_dtype": dtype, "precision": t["precision"], "key": p["key"],
                       "range_method": t.get("range_method") or "minmax",
                       "hotness": int(tcfg.get("hotness", 1))})
    n_top = len(model["top_mlp"]) + 1
    layers = [{"name": n, "module": layer_module(n, n_top), "precision": spec["precision"],
               "input_qparams": spec.get("input_qparams"),
               "input_qmax": spec.get("input_qmax")} for n, spec in manifest["layers"].items()]
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "row_alignment": ROW_ALIGNMENT,
        "dense_in_features": int(model["dense_in"]),
        "dense_arch_layer_sizes": [int(x) for x in model["bottom_mlp"]],
        "over_arch_layer_sizes": [int(x) for x in model["top_mlp"]] + [1],
        "embedding_dim": dim, "dense_names": list(model.get("dense_names") or []),
        "tables": tables, "layers": layers,
        "per_table_weight_dtype": {t["name"]: t["weight_dtype"] for t in tables},
    }


def padded_rows(rows: torch.Tensor, alignment: int = ROW_ALIGNMENT) -> torch.Tensor:
    """uint8 rows zero-padded on the right to a multiple of `alignment` bytes."""
    width = rows.shape[1] + (-rows.shape[1] % alignment)
    out = torch.zeros(rows.shape[0], width, dtype=torch.uint8)
    out[:, : rows.shape[1]] = rows
    return out


def ebc_state(config: dict[str, Any], src: Any) -> dict[str, torch.Tensor]:
    """The quantized EBC's state dict (raw uint8 bytes for every data type)."""
    return {f"embedding_bags.{t['name']}.weight": padded_rows(src.get_tensor(f"tables.{t['key']}"))
            for t in config["tables"]}


def dense_state(config: dict[str, Any], src: Any) -> dict[str, torch.Tensor]:
    """The dense and over arch's tensors in TorchRec DLRM names (int8: codes, weight_scale, bias)."""
    out = {}
    for layer in config["layers"]:
        name, module = layer["name"], layer["module"]
        out[f"{module}.weight"] = src.get_tensor(f"layers.{name}.weight")
        out[f"{module}.bias"] = src.get_tensor(f"layers.{name}.bias").float()
        if layer["precision"] == "int8":
            out[f"{module}.weight_scale"] = src.get_tensor(f"layers.{name}.scale").float()
    return out


def export_torchrec(artifact_dir: str | Path) -> Path:
    """Add `torchrec/` to a verified artifact (covered by its manifest's sha256 map); returns it."""
    root = Path(artifact_dir)
    runtime, manifest = load_artifact(root)
    config = torchrec_config(manifest, str(root / MANIFEST))
    src = open_tensors(root / WEIGHTS)  # (read-only shared mappings: no private copy of the file)
    ebc, dense = ebc_state(config, src), dense_state(config, src)
    with atomic_dir(root, "artifact") as tmp:
        copy_artifact(root, tmp, skip=(MANIFEST, FOLDER))
        folder = tmp / FOLDER
        folder.mkdir()
        write_json(folder / CONFIG, config)
        save_file({k: v.contiguous() for k, v in ebc.items()}, str(folder / EBC), metadata={"format": FORMAT})
        save_file({k: v.contiguous() for k, v in dense.items()}, str(folder / DENSE), metadata={"format": FORMAT})
        checked = check_against_runtime(folder, runtime)
        files = {k: v for k, v in manifest["files"].items() if not k.startswith(FOLDER + "/")}
        files.update({f"{FOLDER}/{n}": sha256_file(folder / n) for n in (CONFIG, EBC, DENSE)})
        manifest["files"] = files
        manifest["torchrec"] = {"folder": FOLDER, "config": CONFIG, "ebc": EBC, "dense": DENSE,
                                "loader": "docs/torchrec.md (lowprec.serve.torchrec_export.load_torchrec)",
                                "checked_against_runtime": checked}
        write_manifest(tmp / MANIFEST, manifest)
    return root / FOLDER


def copy_artifact(root: Path, tmp: Path, skip: tuple[str, ...]) -> None:
    """Hard-link (or copy) the artifact's files into `tmp`, except top-level names in `skip`."""
    shutil.copytree(root, tmp, dirs_exist_ok=True, copy_function=_link_or_copy,
                    ignore=lambda d, names: [n for n in names if Path(d) == root and n in skip])


def check_against_runtime(folder: Path, runtime: QuantizedDLRM) -> bool:
    """Load the export with TorchRec and compare logits with the runtime; False if TorchRec is absent."""
    try:
        import torchrec  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        warnings.warn(f"torchrec cannot be imported ({type(exc).__name__}); the TorchRec export was "
                      f"written but not checked against the runtime", InputWarning)
        return False
    model = load_torchrec(folder)
    config = read_json(folder / CONFIG, "torchrec config.json")
    quiet_torchrec_internals()
    for seed, pads in ((0, True), (1, False)):
        dense, sparse = example_batch(runtime, seed=seed)
        if not pads:
            sparse = sparse.clamp(min=0)
        with torch.no_grad():
            diff = float((model(dense, kjt_from_ids(sparse, config)).squeeze(1)
                          - runtime(dense, sparse)).abs().max())
        if not diff <= CHECK_TOLERANCE:
            raise RuntimeError(f"torchrec export: the TorchRec model differs from the runtime by {diff:g}")
    return True


def kjt_from_ids(sparse: torch.Tensor, config: dict[str, Any]):
    """lowprec's (B, slots) id matrix (-1 pads) as the KeyedJaggedTensor TorchRec's DLRM reads.

    The ids are checked as lowprec's runtime checks them (an integer (B, slots) matrix; every id -1
    or in 0..num_embeddings-1 of its table, two compares per table): an id below -1 used to be
    dropped as a pad, and one past its table's end served row 0 in FBGEMM with a log line; both
    raise IdOutOfRange naming the table, the id and its batch row."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    keys, values, lengths = [], [], []
    hotness = [int(t["hotness"]) for t in config["tables"]]
    check_id_matrix(sparse, sum(hotness))
    cols = torch.split(sparse.long(), hotness, dim=1)
    for t, ids in zip(config["tables"], cols):
        rows = int(t["num_embeddings"])
        bad = (ids >= rows) | (ids < -1)
        if bool(bad.any()):
            b, j = (int(x) for x in bad.nonzero()[0])
            raise IdOutOfRange(out_of_range(t["name"], int(ids[b, j]), b, rows))
        valid = ids >= 0
        keys.extend(t["feature_names"])
        values.append(ids[valid])  # row-major: sample by sample within a key
        lengths.append(valid.sum(1))
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(values),
                                               lengths=torch.cat(lengths).int())


# --- the documented loader (docs/torchrec.md shows this code) -----------------------------------

def load_torchrec(folder: str | Path) -> torch.nn.Module:
    """torchrec.models.dlrm.DLRM over TorchRec's quantized EBC, loaded from an export folder."""
    import json

    from safetensors.torch import load_file
    from torchrec import DataType, EmbeddingBagConfig
    from torchrec.models.dlrm import DLRM
    from torchrec.quant.embedding_modules import EmbeddingBagCollection
    from torchrec.tensor_types import UInt2Tensor, UInt4Tensor

    from lowprec.serve.layers import Int8Linear, input_qmax

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    tables = [EmbeddingBagConfig(name=t["name"], feature_names=t["feature_names"],
                                 num_embeddings=t["num_embeddings"], embedding_dim=t["embedding_dim"],
                                 data_type=DataType[t["data_type"]]) for t in cfg["tables"]]
    ebc = EmbeddingBagCollection(tables, is_weighted=False, device=torch.device("cpu"))
    wrap = {"INT4": UInt4Tensor, "INT2": UInt2Tensor}
    state = load_file(str(folder / "ebc.safetensors"))  # uint8 rows; int4/int2 wrapped as the EBC holds them
    for t in tables:
        if t.data_type.value in wrap:
            key = f"embedding_bags.{t.name}.weight"
            state[key] = wrap[t.data_type.value](state[key])
    ebc.load_state_dict(state, strict=True)
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=cfg["dense_in_features"],
                 dense_arch_layer_sizes=cfg["dense_arch_layer_sizes"],
                 over_arch_layer_sizes=cfg["over_arch_layer_sizes"], dense_device=torch.device("cpu"))
    dense = load_file(str(folder / "dense.safetensors"))
    for layer in (x for x in cfg["layers"] if x["precision"] == "int8"):
        p, qp = layer["module"], layer["input_qparams"]
        int8 = Int8Linear(dense.pop(f"{p}.weight"), dense.pop(f"{p}.weight_scale"), dense.pop(f"{p}.bias"),
                          (float(qp[0]), int(qp[1])) if qp else None, input_qmax(layer))
        parent, child = p.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, int8)
    # every float layer tensor is loaded; only the (already loaded) EBC's keys may be missing here
    missing, unexpected = model.load_state_dict(dense, strict=False)
    if unexpected or any(not k.startswith("sparse_arch.") for k in missing):
        raise ValueError(f"{folder}: dense.safetensors does not fit the DLRM: missing "
                         f"{[k for k in missing if not k.startswith('sparse_arch.')]}, unexpected {unexpected}")
    return model.eval()


def load_export_config(artifact_dir: str | Path) -> dict[str, Any]:
    """The TorchRec config of an artifact that has the export (InputError pointing to the option)."""
    root = Path(artifact_dir)
    if not (root / FOLDER / CONFIG).is_file():
        raise InputError(f"{root}: the artifact has no TorchRec export; add it with "
                         f"`lowprec convert ... --export torchrec`")
    return read_json(root / FOLDER / CONFIG, "torchrec config.json")


__all__ = ["export_torchrec", "load_torchrec", "kjt_from_ids", "torchrec_config", "check_plan"]
