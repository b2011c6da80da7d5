"""`lowprec convert`, offline phase: float model + plan (+ calibration) -> quantized artifact.

Conversion walks the model table by table through read-only mappings of its files
(`lowprec.checkpoint.mapped`, which also reads index files and row-sharded tables). A dense table
kept dense (the common case, and the large tables) streams: its rows are read in chunks of at most
`chunk_bytes` (256 MB), encoded (`table_rows_bytes`, the one encoding call) and written to the
artifact piece by piece, so memory is bounded by a chunk, not by the table. Tables with a
hash-sharing backend or post-training sharing build their serving form whole (their memory is that
of the smaller shared form plus any table it is built from). The model's sha256 is computed in the
same pass as reading. Everything lands in a temporary directory that replaces --out only when
complete (`fileio.atomic_dir`).
"""

from __future__ import annotations

import datetime as _dt
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import lowprec
from lowprec.checkpoint.artifact import FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS
from lowprec.checkpoint.float_model import open_weights, read_float_config
from lowprec.checkpoint.mapped import DEFAULT_CHUNK_BYTES, LogicalTable, MappedTensors
from lowprec.checkpoint.tensorfile import TensorFileWriter
from lowprec.errors import InputError
from lowprec.fileio import atomic_dir, sha256_file, write_json
from lowprec.model.config import DLRMConfig
from lowprec.model.deploy import DeployForm, Feature, post_training_form
from lowprec.model.quantized import PhysicalTable, QuantizedEmbeddings, TableServing
from lowprec.model.embedding import parse_spec
from lowprec.model.sharing import load_table_module
from lowprec.plan import Plan, TableChoice
from lowprec.precision import DIM_ALIGNMENT, Precision
from lowprec.quant.linear import activation_qparams, quantize_weight_per_channel
from lowprec.quant.rowwise import fused_row_bytes, fused_rows


def table_rows_bytes(weight: torch.Tensor, choice: TableChoice,
                     row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Float table (rows, dim % 4 == 0) -> uint8 rows exactly as FBGEMM's inference TBE stores them."""
    p = choice.precision
    if p is Precision.FP32:
        return weight.float().contiguous().view(torch.uint8)
    if p is Precision.FP16:
        return weight.half().contiguous().view(torch.uint8)
    return fused_rows(weight.float(), p.bits, choice.range_method, row_weights)


def check_table_finite(weight: torch.Tensor, what: str, chunk_rows: int = 1 << 16,
                       first_row: int = 0) -> None:
    """InputError naming the first row with NaN/Inf; checks in row chunks to keep memory flat."""
    for start in range(0, weight.shape[0], chunk_rows):
        part = weight[start:start + chunk_rows]
        if bool(torch.isfinite(part.sum())):  # one cheap pass; NaN/Inf always make the sum non-finite
            continue
        bad = ~torch.isfinite(part)
        if bad.any():
            row = first_row + start + int(torch.nonzero(bad)[0][0])
            raise InputError(f"{what}: row {row} holds NaN or Inf; fix the float model before converting")


def pad_dim(weight: torch.Tensor, key: str) -> torch.Tensor:
    extra = -weight.shape[1] % DIM_ALIGNMENT
    if not extra:
        return weight
    warnings.warn(f"table {key!r}: dim {weight.shape[1]} is not a multiple of {DIM_ALIGNMENT}; "
                  f"padding rows with {extra} zero columns for FBGEMM (recorded in the manifest)")
    return torch.nn.functional.pad(weight, (0, extra))


def load_table_form(src: Any, index: int, config: DLRMConfig, choice: TableChoice,
                    row_counts: torch.Tensor | None) -> DeployForm:
    """Rebuild one logical table's float module from the checkpoint and return its serving form."""
    tcfg = config.tables[index]
    module = load_table_module(config, index, src.get_tensor)
    for name, p in module.state_dict().items():
        check_table_finite(p.reshape(p.shape[0], -1) if p.ndim else p.reshape(1, 1),
                           f"table {tcfg.name!r} ({name})")
    form = module.deploy_form(tcfg.name)
    if choice.sharing is not None:
        form = post_training_form(form, choice.sharing, row_counts, tcfg.name)
    return form


@dataclass
class QuantizedForm:
    """One logical table quantized: physical tables with their FBGEMM rows, features, buffers."""

    physical: list[tuple[PhysicalTable, torch.Tensor]]  # (table, uint8 rows)
    groups: list[list[Feature]]
    buffers: dict[str, torch.Tensor]
    exact: bool
    padded_from: dict[str, int]

    def bytes(self) -> int:
        rows = sum(r.numel() for _, r in self.physical)
        return rows + sum(b.numel() * b.element_size() for b in self.buffers.values())


def rows_are_ids(form: DeployForm) -> bool:
    """One physical table looked up by the logical ids themselves (a dense table kept dense)."""
    return (len(form.tables) == 1 and len(form.groups) == 1 and len(form.groups[0]) == 1
            and form.groups[0][0].transform.get("kind") == "identity")


def quantize_form(form: DeployForm, choice: TableChoice, row_counts: torch.Tensor | None,
                  skip: set[str] = frozenset()) -> QuantizedForm:
    """Quantize every physical table of `form` (except keys in `skip`, already done elsewhere)."""
    physical, padded_from = [], {}
    for key, weight in form.tables.items():
        if key in skip:
            continue
        padded = pad_dim(weight.detach().float(), key)
        if padded.shape[1] != weight.shape[1]:
            padded_from[key] = int(weight.shape[1])
        # Access counts weight a table's rows only where physical rows are the logical ids.
        counts = row_counts if row_counts is not None and rows_are_ids(form) else None
        table = PhysicalTable(key, int(padded.shape[0]), int(padded.shape[1]), choice.precision)
        physical.append((table, table_rows_bytes(padded, choice, counts)))
    return QuantizedForm(physical, form.groups, dict(form.buffers), form.exact, padded_from)


def embeddings_from_forms(dim: int, names_hotness: list[tuple[str, int]],
                          forms: list[QuantizedForm]) -> QuantizedEmbeddings:
    """A runtime embedding module straight from quantized forms (no file in between)."""
    tables, rows, features, serving = [], {}, [], []
    for (name, hotness), qf in zip(names_hotness, forms):
        for table, r in qf.physical:
            if table.key not in rows:
                tables.append(table)
                rows[table.key] = r
        groups = []
        for group in qf.groups:
            groups.append(tuple(len(features) + i for i in range(len(group))))
            features.extend(group)
        serving.append(TableServing(name, hotness, tuple(groups)))
    buffers = {k: v for qf in forms for k, v in qf.buffers.items()}
    emb = QuantizedEmbeddings(dim, tables, features, serving, buffers)
    emb.load_rows(rows.__getitem__)
    return emb


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

    def add_table(self, tcfg, form: DeployForm, choice: TableChoice, row_counts) -> None:
        qf = quantize_form(form, choice, row_counts, skip=set(self.physical))
        for table, rows in qf.physical:
            nbytes = self.writer.add(f"tables.{table.key}", rows)
            self._physical(table, nbytes, qf.padded_from.get(table.key))
        for name, buf in qf.buffers.items():
            if name not in self.buffers:
                self.buffer_bytes += self.writer.add(f"buffers.{name}", buf)
                self.buffers.append(name)
        buf_bytes = sum(b.numel() * b.element_size() for b in form.buffers.values())
        self._logical(tcfg, choice, qf.groups, list(dict.fromkeys(form.tables)), form.exact, buf_bytes)

    def stream_dense(self, tcfg, table: LogicalTable, choice: TableChoice,
                     row_counts: torch.Tensor | None, chunk_bytes: int) -> None:
        """A dense table kept dense: read, check, encode and write it in row chunks."""
        rows, dim = table.shape
        pdim = dim + (-dim % DIM_ALIGNMENT)
        if pdim != dim:
            pad_dim(torch.zeros(0, dim), tcfg.name)  # the warning, once per table
        phys = PhysicalTable(tcfg.name, rows, pdim, choice.precision)
        shape = (rows, fused_row_bytes(pdim, choice.precision.bits))
        what = f"table {tcfg.name!r} (bag.weight)"
        with self.writer.stream(f"tables.{phys.key}", torch.uint8, shape) as put:
            for start, chunk in table.iter_chunks(chunk_bytes):
                check_table_finite(chunk, what, chunk_rows=chunk.shape[0] or 1, first_row=start)
                counts = row_counts[start:start + chunk.shape[0]] if row_counts is not None else None
                padded = torch.nn.functional.pad(chunk.float(), (0, pdim - dim)) if pdim != dim else chunk
                try:
                    put(table_rows_bytes(padded, choice, counts))
                except InputError as exc:
                    raise InputError(f"{what}, row chunk from row {start}: {exc}") from None
        self._physical(phys, shape[0] * shape[1], dim if pdim != dim else None)
        self._logical(tcfg, choice, [[Feature(phys.key)]], [phys.key], True, 0)

    def _physical(self, table: PhysicalTable, nbytes: int, padded_from: int | None) -> None:
        self.physical[table.key] = {"key": table.key, "rows": table.rows, "dim": table.dim,
                                    "precision": table.precision.value, "bytes": nbytes,
                                    "padded_from": padded_from}

    def _logical(self, tcfg, choice: TableChoice, groups: list[list[Feature]], keys: list[str],
                 exact: bool, buf_bytes: int) -> None:
        ids = []
        for group in groups:
            ids.append([len(self.features) + i for i in range(len(group))])
            self.features.extend({"table": f.table, "transform": f.transform} for f in group)
        self.serving.append({"name": tcfg.name, "hotness": tcfg.hotness, "groups": ids})
        self.tables.append({
            "name": tcfg.name, "rows": tcfg.num_embeddings, "embedding": tcfg.embedding,
            "precision": choice.precision.value, "range_method": choice.range_method,
            "sharing": choice.sharing, "physical": keys, "exact": exact,
            "bytes": sum(self.physical[k]["bytes"] for k in keys) + buf_bytes,
        })


def _convert_layer(writer: TensorFileWriter, name: str, weight: torch.Tensor, bias: torch.Tensor,
                   precision: Precision, calib: dict[str, Any] | None) -> dict[str, Any]:
    check_table_finite(weight, f"layer {name!r} weight")
    bias_bytes = writer.add(f"layers.{name}.bias", bias.float())
    entry: dict[str, Any] = {"precision": precision.value, "in": weight.shape[1], "out": weight.shape[0],
                             "input_qparams": None, "input_range": None}
    if precision is Precision.INT8:
        codes, scale = quantize_weight_per_channel(weight)
        writer.add(f"layers.{name}.weight", codes)
        writer.add(f"layers.{name}.scale", scale)
        if calib is not None:
            lo, hi = float(calib["min"]), float(calib["max"])
            entry["input_range"] = [lo, hi]
            entry["input_qparams"] = list(activation_qparams(lo, hi))
        entry["bytes"] = codes.numel() + 4 * scale.numel() + bias_bytes
    else:
        stored = weight.half() if precision is Precision.FP16 else weight.float()
        writer.add(f"layers.{name}.weight", stored)
        entry["bytes"] = stored.numel() * stored.element_size() + bias_bytes
    return entry


def _streams(config: DLRMConfig, index: int, choice: TableChoice) -> bool:
    return parse_spec(config.tables[index].embedding)[0] == "dense" and choice.sharing is None


def _convert_tables(src: MappedTensors, config: DLRMConfig, plan: Plan, builder: _Builder,
                    counts_all: dict[str, Any], chunk_bytes: int, progress) -> None:
    for i, tcfg in enumerate(config.tables):
        choice = plan.table(tcfg.name)
        counts = counts_all.get(tcfg.name)
        counts_t = torch.as_tensor(counts, dtype=torch.float32) if counts is not None else None
        if _streams(config, i, choice):
            builder.stream_dense(tcfg, src.table(f"embeddings.{i}.bag.weight"), choice, counts_t,
                                 chunk_bytes)
        else:
            builder.add_table(tcfg, load_table_form(src, i, config, choice, counts_t), choice, counts_t)
        if progress is not None:
            progress(1)


def convert(model_dir: str | Path, plan: Plan, out: str | Path,
            calibration: dict[str, Any] | None = None,
            progress: Callable[[int], Any] | None = None,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES,
            hash_progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Write the artifact for `plan` at `out` atomically; returns the manifest.

    `progress(1)` after each table; `hash_progress(n)` with the model bytes hashed (the sha256
    recorded in config.json is checked in the same pass as reading, before --out is replaced)."""
    model_dir = Path(model_dir)
    config, obj = read_float_config(model_dir)
    recorded = obj.get("sha256") or {}
    src = open_weights(model_dir, recorded, hash_progress)
    layer_shapes = config.layer_shapes()
    plan.check_against(config.table_names, list(layer_shapes), "plan")
    calibration = calibration or {}
    with atomic_dir(out) as tmp:
        writer = TensorFileWriter(tmp / WEIGHTS)
        builder = _Builder(writer)
        _convert_tables(src, config, plan, builder, calibration.get("row_counts", {}), chunk_bytes,
                        progress)
        layers = {
            name: _convert_layer(writer, name, src.tensor(f"{name}.weight"),
                                 src.tensor(f"{name}.bias"), plan.layer(name).precision,
                                 calibration.get("layers", {}).get(name))
            for name in layer_shapes
        }
        writer.close()
        src.check_sha256()
        source_sha = recorded.get(src.path.name) if len(recorded) <= 1 else recorded
        manifest = _manifest(config, plan, builder, layers, model_dir, source_sha)
        manifest["files"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _manifest(config: DLRMConfig, plan: Plan, b: _Builder, layers: dict[str, Any],
              model_dir: Path, model_sha: str | dict[str, str] | None) -> dict[str, Any]:
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
