"""`lowprec convert`, offline phase: float model + plan (+ calibration) -> quantized artifact.

Conversion walks the model table by table: read one table's float weights lazily from
model.safetensors, build its serving form (dense, or a hash-sharing form), quantize each physical
table row-wise at the plan's precision, spool the bytes, drop the table. Peak memory is about the
largest table plus its quantized copy. Everything lands in a temporary directory that replaces
--out only when complete (`fileio.atomic_dir`).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

import lowprec
from lowprec.checkpoint.artifact import FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS
from lowprec.checkpoint.float_model import WEIGHTS as FLOAT_WEIGHTS
from lowprec.checkpoint.float_model import read_float_config
from lowprec.checkpoint.tensorfile import TensorFileWriter
from lowprec.errors import InputError
from lowprec.fileio import atomic_dir, sha256_file, write_json
from lowprec.model.backends import load_table_module
from lowprec.model.config import DLRMConfig
from lowprec.plan import Plan, TableChoice
from lowprec.precision import Precision
from lowprec.serve.forms import ServingForm
from lowprec.serve.layers import layer_codec
from lowprec.serve.quantize import check_finite, quantize_form, table_form


def load_table_form(src: Any, index: int, config: DLRMConfig, choice: TableChoice,
                    row_counts: torch.Tensor | None) -> ServingForm:
    """Rebuild one logical table's float module from the checkpoint and return its serving form."""
    module = load_table_module(config, index, src.get_tensor)
    return table_form(module, config.tables[index], choice, row_counts)


class _Builder:
    """Writes quantized tables into the tensor file and collects their manifest entries."""

    def __init__(self, writer: TensorFileWriter):
        self.writer = writer
        self.physical: dict[str, dict[str, Any]] = {}
        self.features: list[dict[str, Any]] = []
        self.serving: list[dict[str, Any]] = []
        self.tables: list[dict[str, Any]] = []
        self.buffers: list[str] = []
        self.buffer_bytes = 0

    def add_table(self, tcfg, form: ServingForm, choice: TableChoice, row_counts) -> None:
        qf = quantize_form(form, choice, row_counts, skip=set(self.physical))
        for table, rows in qf.physical:
            nbytes = self.writer.add(f"tables.{table.key}", rows)
            self.physical[table.key] = {"key": table.key, "rows": table.rows, "dim": table.dim,
                                        "precision": table.precision.value, "bytes": nbytes,
                                        "padded_from": qf.padded_from.get(table.key)}
        for name, buf in qf.buffers.items():
            if name not in self.buffers:
                self.buffer_bytes += self.writer.add(f"buffers.{name}", buf)
                self.buffers.append(name)
        groups = []
        for group in qf.groups:
            groups.append([len(self.features) + i for i in range(len(group))])
            self.features.extend({"table": f.table, "transform": f.transform} for f in group)
        self.serving.append({"name": tcfg.name, "hotness": tcfg.hotness, "groups": groups})
        keys = list(dict.fromkeys(form.tables))
        buf_bytes = sum(b.numel() * b.element_size() for b in form.buffers.values())
        self.tables.append({
            "name": tcfg.name, "rows": tcfg.num_embeddings, "embedding": tcfg.embedding,
            "precision": choice.precision.value, "range_method": choice.range_method,
            "sharing": choice.sharing, "physical": keys, "exact": form.exact,
            "bytes": sum(self.physical[k]["bytes"] for k in keys) + buf_bytes,
        })


def _convert_layer(writer: TensorFileWriter, name: str, weight: torch.Tensor, bias: torch.Tensor,
                   precision: Precision, calib: dict[str, Any] | None) -> dict[str, Any]:
    check_finite(weight, f"layer {name!r} weight")
    try:
        tensors, entry = layer_codec(precision, f"layer {name!r}").encode(weight, bias, calib)
    except InputError as exc:
        raise InputError(f"layer {name!r}: {exc}") from None
    nbytes = sum(writer.add(f"layers.{name}.{suffix}", t) for suffix, t in tensors.items())
    return {"precision": precision.value, "in": weight.shape[1], "out": weight.shape[0], **entry,
            "bytes": nbytes}


def convert(model_dir: str | Path, plan: Plan, out: str | Path,
            calibration: dict[str, Any] | None = None,
            progress: Callable[[int], Any] | None = None,
            allow_calibration_mismatch: bool = False,
            finish: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Write the artifact for `plan` at `out` atomically; returns the manifest. A calibration must
    loaded from a file (it has `model_sha256`) must record this model's sha256 unless
    `allow_calibration_mismatch`. `finish(tmp)`
    runs on the complete artifact before it replaces `out` (the TorchScript export: all or nothing)."""
    model_dir = Path(model_dir)
    config, obj = read_float_config(model_dir)
    weights_path = model_dir / FLOAT_WEIGHTS
    recorded = obj.get("sha256", {}).get(FLOAT_WEIGHTS)
    if not weights_path.is_file():
        raise InputError(f"missing weights file {weights_path}")
    actual = sha256_file(weights_path)
    if recorded is not None and actual != recorded:
        raise InputError(f"{weights_path}: sha256 does not match config.json; the file was modified")
    if calibration is not None and "model_sha256" in calibration and not allow_calibration_mismatch:
        check_calibration_model(calibration, actual, weights_path)
    layer_shapes = config.layer_shapes()
    plan.check_against(config.table_names, list(layer_shapes), "plan")
    calibration = calibration or {}
    counts_all = calibration.get("row_counts", {})
    with atomic_dir(out) as tmp, safe_open(str(weights_path), framework="pt") as src:
        writer = TensorFileWriter(tmp / WEIGHTS)
        builder = _Builder(writer)
        for i, tcfg in enumerate(config.tables):
            choice = plan.table(tcfg.name)
            counts = counts_all.get(tcfg.name)
            counts_t = torch.as_tensor(counts, dtype=torch.float32) if counts is not None else None
            form = load_table_form(src, i, config, choice, counts_t)
            builder.add_table(tcfg, form, choice, counts_t)
            if progress is not None:
                progress(1)
        layers = {
            name: _convert_layer(writer, name, src.get_tensor(f"{name}.weight"),
                                 src.get_tensor(f"{name}.bias"), plan.layer(name).precision,
                                 calibration.get("layers", {}).get(name))
            for name in layer_shapes
        }
        writer.close()
        manifest = _manifest(config, plan, builder, layers, model_dir, recorded)
        manifest["files"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
        write_json(tmp / MANIFEST, manifest)
        if finish is not None:
            finish(tmp)
    return manifest


def check_calibration_model(calibration: dict[str, Any], model_sha: str, weights: Path) -> None:
    """Refuse a calibration measured on another model (its ranges and row counts would not fit)."""
    recorded = calibration.get("model_sha256")
    if recorded != model_sha:
        what = "records no model sha256" if recorded is None else f"was measured on model sha256 {recorded}"
        raise InputError(f"--calibration {what}, but {weights} has sha256 {model_sha}; calibrate this model "
                         f"(`lowprec calibrate`) or pass --allow-calibration-mismatch to use it anyway")


def _manifest(config: DLRMConfig, plan: Plan, b: _Builder, layers: dict[str, Any],
              model_dir: Path, model_sha: str | None) -> dict[str, Any]:
    # Serving memory of the tables: every physical table once (shared arrays are counted once)
    # plus id-transform buffers; fp32 equivalent: every logical table dense in fp32.
    embedding_bytes = sum(t["bytes"] for t in b.physical.values()) + b.buffer_bytes
    fp32_bytes = sum(t.num_embeddings * config.embedding_dim * 4 for t in config.tables)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lowprec_version": lowprec.__version__,
        "torch_version": lowprec.TORCH_VERSION,
        "fbgemm_version": lowprec.FBGEMM_VERSION,
        "source": {"model_dir": str(model_dir), "sha256": model_sha},
        "model": config.to_json(),
        "plan": plan.to_json(),
        "tables": b.tables,
        "physical_tables": list(b.physical.values()),
        "features": b.features,
        "serving": b.serving,
        "buffers": b.buffers,
        "layers": layers,
        "embedding_bytes": embedding_bytes,
        "fp32_embedding_bytes": fp32_bytes,
        "compression": fp32_bytes / embedding_bytes if embedding_bytes else float("nan"),
        "layer_bytes": sum(v["bytes"] for v in layers.values()),
    }
