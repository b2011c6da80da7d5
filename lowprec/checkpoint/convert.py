"""`lowprec convert`, offline phase: float model + plan (+ calibration) -> quantized artifact.

Conversion walks the model table by table through read-only mappings of its files
(`lowprec.checkpoint.mapped`, which also reads index files and row-sharded tables). A dense table
kept dense (the common case, and the large tables) streams: its rows are read in chunks of at most
`chunk_bytes` (256 MB), encoded by the precision's handler (`lowprec.serve.tables`) and written to the
artifact piece by piece, so memory is bounded by a chunk, not by the table. Tables with a
hash-sharing backend or post-training sharing build their serving form whole (their memory is that
of the smaller shared form plus any table it is built from). The model's sha256 is computed in the
same pass as reading. Everything lands in a temporary directory that replaces --out only when
complete (`fileio.atomic_dir`).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Callable

import torch

import lowprec
from lowprec.checkpoint.artifact import (FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS, check_loads, read_manifest,
                                      write_manifest)
from lowprec.checkpoint.float_model import identity_note, open_weights, read_float_config, weights_sha256
from lowprec.checkpoint.mapped import DEFAULT_CHUNK_BYTES, LogicalTable, MappedTensors
from lowprec.checkpoint.tensorfile import ALIGN, TensorFileWriter
from lowprec.errors import InputError, warn
from lowprec.fileio import atomic_dir, sha256_file
from lowprec.model.backends import load_table_module
from lowprec.model.config import DLRMConfig
from lowprec.model.sharing import unaligned_robe_warning
from lowprec.model.embedding import parse_spec
from lowprec.plan import Plan, TableChoice
from lowprec.precision import DIM_ALIGNMENT, Precision
from lowprec.progress import Update
from lowprec.serve.forms import Feature, ServingForm
from lowprec.serve.layers import layer_codec
from lowprec.serve.quantize import check_finite, quantize_form, table_form
from lowprec.serve.runtime import PhysicalTable
from lowprec.serve.tables import padded_dim, table_codec
from lowprec.serve.tiers import empty_tiers_note


def load_table_form(src: Any, index: int, config: DLRMConfig, choice: TableChoice,
                    row_counts: torch.Tensor | None) -> ServingForm:
    """Rebuild one logical table's float module from the checkpoint and return its serving form."""
    module = load_table_module(config, index, src.get_tensor)
    return table_form(module, config.tables[index], choice, row_counts)


def _warn_larger_than_fp32(tcfg, dim: int, sharing: dict[str, Any], nbytes: int) -> None:
    """Sharing meant to save memory that stores more than the plain fp32 table (many tiers, each with
    its rank directory; a hot-id list beside nearly every row) is said: nothing else would flag it."""
    fp32 = tcfg.num_embeddings * dim * 4  # as the manifest's fp32_embedding_bytes counts a table
    if nbytes <= fp32:
        return
    how = (f"{len(sharing.get('tiers', []))} upper tier(s) and their id map(s)" if sharing.get("kind") == "tiered"
           else f"sharing {sharing}")
    warn(f"table {tcfg.name!r}: with {how} it stores {nbytes:,} bytes, more than the same table at fp32 "
         f"({fp32:,} bytes): fewer tiers or a plain precision would be smaller")


class _Builder:
    """Writes quantized tables into the tensor file and collects their manifest entries."""

    def __init__(self, writer: TensorFileWriter, dim: int):
        self.writer, self.dim = writer, dim
        self.physical: dict[str, dict[str, Any]] = {}
        self.features: list[dict[str, Any]] = []
        self.serving: list[dict[str, Any]] = []
        self.tables: list[dict[str, Any]] = []
        self.buffers: list[str] = []
        self.buffer_bytes = 0

    def add_table(self, tcfg, form: ServingForm, choice: TableChoice, row_counts) -> None:
        qf = quantize_form(form, choice, row_counts, skip=set(self.physical))
        for table, rows in qf.physical:
            nbytes = self.writer.add(f"tables.{table.key}", rows, align=ALIGN)  # served in place: rows in lines
            self._physical(table, nbytes, qf.padded_from.get(table.key))
        for name, buf in qf.buffers.items():
            if name not in self.buffers:
                self.buffer_bytes += self.writer.add(f"buffers.{name}", buf)
                self.buffers.append(name)
        buf_bytes = sum(b.numel() * b.element_size() for b in form.buffers.values())
        # the sharing served: none where it kept the plain table (hot sharing that keeps every row)
        sharing = None if form.rows_are_ids else choice.sharing
        if choice.sharing is not None and sharing is None:
            warn(f"table {tcfg.name!r}: sharing {choice.sharing} keeps all {tcfg.num_embeddings} rows: stored "
                 f"(and recorded in the manifest) as a plain {choice.precision.value} table")
        elif sharing is not None and sharing.get("kind") == "tiered":
            note = empty_tiers_note(tcfg.name, sharing, tcfg.num_embeddings, choice.precision)
            if note:
                warn(note)
        self._logical(tcfg, choice, qf.groups, list(dict.fromkeys(form.tables)), form.exact, buf_bytes, sharing)
        if sharing is not None:
            _warn_larger_than_fp32(tcfg, self.dim, sharing, self.tables[-1]["bytes"])

    def stream_dense(self, tcfg, table: LogicalTable, choice: TableChoice,
                     row_counts: torch.Tensor | None, chunk_bytes: int) -> None:
        """A dense table kept dense: read, check, encode and write it in row chunks."""
        rows, dim = table.shape
        pdim = padded_dim(dim)
        phys = PhysicalTable(tcfg.name, rows, pdim, choice.precision)
        shape = (rows, choice.precision.bytes_per_row(pdim))
        codec = table_codec(choice.precision)
        what = f"table {tcfg.name!r} (bag.weight)"
        with self.writer.stream(f"tables.{phys.key}", torch.uint8, shape, align=ALIGN) as put:
            for start, chunk in table.iter_chunks(chunk_bytes):
                if not codec.rejects_non_finite:  # else encode checks, in the same pass
                    check_finite(chunk, what, chunk_rows=chunk.shape[0] or 1, first_row=start)
                counts = row_counts[start:start + chunk.shape[0]] if row_counts is not None else None
                padded = torch.nn.functional.pad(chunk.float(), (0, pdim - dim)) if pdim != dim else chunk
                try:
                    put(codec.encode(padded, choice.range_method, counts))
                except InputError as exc:  # a NaN/Inf row named by its row in the table
                    check_finite(chunk, what, chunk_rows=chunk.shape[0] or 1, first_row=start)
                    raise InputError(f"{what}, row chunk from row {start}: {exc}") from None
        self._physical(phys, shape[0] * shape[1], dim if pdim != dim else None)
        self._logical(tcfg, choice, [[Feature(phys.key)]], [phys.key], True, 0, None)

    def _physical(self, table: PhysicalTable, nbytes: int, padded_from: int | None) -> None:
        self.physical[table.key] = {"key": table.key, "rows": table.rows, "dim": table.dim,
                                    "precision": table.precision.value, "bytes": nbytes,
                                    "padded_from": padded_from}

    def _logical(self, tcfg, choice: TableChoice, groups: list[list[Feature]], keys: list[str],
                 exact: bool, buf_bytes: int, sharing: dict[str, Any] | None) -> None:
        ids = []
        for group in groups:
            ids.append([len(self.features) + i for i in range(len(group))])
            self.features.extend({"table": f.table, "transform": f.transform} for f in group)
        self.serving.append({"name": tcfg.name, "hotness": tcfg.hotness, "groups": ids})
        self.tables.append({
            "name": tcfg.name, "rows": tcfg.num_embeddings, "embedding": tcfg.embedding,
            "precision": choice.precision.value, "range_method": choice.range_method,
            "sharing": sharing, "physical": keys, "exact": exact,
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


def _streams(config: DLRMConfig, index: int, choice: TableChoice) -> bool:
    return parse_spec(config.tables[index].embedding)[0] == "dense" and choice.sharing is None


def _check_counts_given(config: DLRMConfig, plan: Plan, counts_all: dict[str, Any]) -> None:
    """Post-training sharing (hot, tiered) ranks rows by their access counts from calibration:
    refused before any table is converted (naming the plan's file) when they are not there."""
    need = [t.name for t in config.tables if plan.table(t.name).sharing is not None and t.name not in counts_all]
    if need:
        kinds = sorted({plan.table(n).sharing["kind"] for n in need})
        raise InputError(f"{plan.source}: tables {need[:10]}{' ...' if len(need) > 10 else ''} have {'/'.join(kinds)} "
                         f"sharing, which ranks rows by their access counts from calibration, and "
                         f"{'the calibration has none for them' if counts_all else 'no calibration was given'}"
                         f" (run `lowprec calibrate` and pass --calibration)")


def _convert_tables(src: MappedTensors, config: DLRMConfig, plan: Plan, builder: _Builder,
                    counts_all: dict[str, Any], chunk_bytes: int, progress) -> None:
    for i, tcfg in enumerate(config.tables):
        choice = plan.table(tcfg.name)
        counts = counts_all.get(tcfg.name)
        counts_t = torch.as_tensor(counts, dtype=torch.float32) if counts is not None else None
        try:
            if _streams(config, i, choice):
                builder.stream_dense(tcfg, src.table(f"embeddings.{i}.bag.weight"), choice, counts_t,
                                     chunk_bytes)
            else:
                builder.add_table(tcfg, load_table_form(src, i, config, choice, counts_t), choice, counts_t)
        except InputError as exc:  # e.g. sharing that needs a dense table: the rule is the plan's
            if choice.sharing is None or plan.source in str(exc):
                raise
            raise InputError(f"{exc} (the rule of {plan.source})") from None
        if progress is not None:
            progress(1)


def convert(model_dir: str | Path, plan: Plan, out: str | Path,
            calibration: dict[str, Any] | None = None,
            progress: Update | None = None,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES,
            hash_progress: Update | None = None,
            allow_calibration_mismatch: bool = False,
            finish: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Write the artifact for `plan` at `out` atomically; returns the manifest.

    `progress(1)` after each table; `hash_progress(n)` with the model bytes hashed (the sha256
    recorded in config.json is checked in the same pass as reading, before --out is replaced).
    A calibration loaded from a file (it has `model_sha256`) must record this model's sha256 unless
    `allow_calibration_mismatch`. `finish(tmp)` runs on the complete artifact before it replaces
    `out` (the TorchScript export: all or nothing)."""
    model_dir = Path(model_dir)
    config, obj = read_float_config(model_dir)
    recorded = obj.get("sha256") or {}
    if calibration is not None and "model_sha256" in calibration and not allow_calibration_mismatch:
        check_calibration_model(calibration, weights_sha256(model_dir), model_dir)
    src = open_weights(model_dir, recorded, hash_progress, config)  # (names and shapes checked first)
    layer_shapes = config.layer_shapes()
    plan.check_against(config.table_names, list(layer_shapes))
    calibration = calibration or {}
    _check_counts_given(config, plan, calibration.get("row_counts", {}))
    if padded_dim(config.embedding_dim) != config.embedding_dim:  # once, not once a table (26 lines for Criteo)
        warn(f"embedding dim {config.embedding_dim} is not a multiple of {DIM_ALIGNMENT}: every table's rows are "
             f"padded with {padded_dim(config.embedding_dim) - config.embedding_dim} zero columns for FBGEMM "
             f"(recorded in the manifest)")
    with atomic_dir(out, "artifact", [model_dir]) as tmp:
        with TensorFileWriter(tmp / WEIGHTS) as writer:  # its file closed on any error
            builder = _Builder(writer, config.embedding_dim)
            _convert_tables(src, config, plan, builder, calibration.get("row_counts", {}), chunk_bytes,
                            progress)
            layers = {
                name: _convert_layer(writer, name, src.tensor(f"{name}.weight"),
                                     src.tensor(f"{name}.bias"), plan.layer(name).precision,
                                     calibration.get("layers", {}).get(name))
                for name in layer_shapes
            }
            _warn_dynamic_layers(layers, plan, calibration)
            if (robe := unaligned_robe_warning(config)) is not None:
                warn(robe)
            writer.close()
        src.check_sha256()
        source_sha = weights_sha256(model_dir) if recorded else None  # (the identity every check compares)
        manifest = _manifest(config, plan, builder, layers, model_dir, source_sha)
        for key in ("window_fingerprints", "row_fingerprints", "row_sample"):  # what the model learned from
            learned = (obj.get("info") or {}).get(key)  # travel with it (lowprec.train.seen_in_training)
            if learned:
                manifest["source"][key] = learned
        manifest["files"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
        write_manifest(tmp / MANIFEST, manifest)
        _check_written(tmp, plan)
        if finish is not None:
            finish(tmp)
    return manifest


def _check_written(tmp: Path, plan: Plan) -> None:
    """The loader's own checks on the artifact just written, before it replaces --out: convert never
    commits an artifact its loader refuses (the tables' rows were checked as they were encoded)."""
    try:
        check_loads(tmp, read_manifest(tmp, verify=False))
    except InputError as exc:
        text = str(exc).removeprefix(f"{tmp / MANIFEST}: ").replace(str(tmp), "the new artifact")
        raise InputError(f"{plan.source}: the artifact converted with this plan fails the loader's checks "
                         f"({text}); nothing was written") from None


def _warn_dynamic_layers(layers: dict[str, dict[str, Any]], plan: Plan, calibration: dict[str, Any]) -> None:
    """int8 layers without a calibrated input range quantize activations per batch (dynamic): say so
    where that is not what the user would expect (a searched plan was validated with static ranges;
    a calibration that lacks a layer was meant to cover it)."""
    far = [n for n, e in layers.items() if e["precision"] == "int8" and _far_from_observed(calibration, n)]
    if far:  # (a range of +-1e38 or [5, 5] converted silently; the layer then predicts almost a constant)
        warn(f"layers {far} have calibrated input ranges far from the inputs the same calibration observed "
             f"({'; '.join(_range_text(calibration['layers'][n]) for n in far[:3])}): an edited or foreign "
             f"calibration? int8 activations quantized with them keep little of their resolution")
    dynamic = [n for n, e in layers.items() if e["precision"] == "int8" and n not in calibration.get("layers", {})]
    if not dynamic:
        return
    if calibration.get("layers"):
        warn(f"layers {dynamic} are int8 with dynamic activation ranges: the calibration has no range for them")
    elif plan.info.kind == "search":
        warn(f"layers {dynamic} are int8 with dynamic activation ranges (no --calibration), but the search "
             f"validated this plan with static ones: pass `--calibration CALIB.json` (`lowprec calibrate` on the "
             f"plan's calibration windows) for the artifact it measured")


def _far_from_observed(calibration: dict[str, Any], name: str) -> bool:
    """A layer's range [min, max] that misses the inputs calibration observed there: no overlap, or a
    width under 1% or over 100x the observed one (percentile and MSE ranges clip the tails, well
    inside both bounds)."""
    e = calibration.get("layers", {}).get(name) or {}
    lo, hi, olo, ohi = (e.get(k) for k in ("min", "max", "observed_min", "observed_max"))
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi, olo, ohi)) or ohi <= olo:
        return False
    width, seen = hi - lo, ohi - olo
    return hi < olo or lo > ohi or width < 0.01 * seen or width > 100 * seen


def _range_text(e: dict[str, Any]) -> str:
    return f"range [{e['min']:.4g}, {e['max']:.4g}], observed [{e['observed_min']:.4g}, {e['observed_max']:.4g}]"


def check_calibration_model(calibration: dict[str, Any], model_sha: str, weights: Path,
                            override: str | None = "--allow-calibration-mismatch") -> None:
    """Refuse a calibration measured on another model (its ranges and row counts would not fit);
    `override` names the flag that accepts it anyway, if the command has one."""
    recorded = calibration.get("model_sha256")
    if recorded != model_sha:
        what = "records no model sha256" if recorded is None else f"was measured on model sha256 {recorded}"
        rest = f" or pass {override} to use it anyway" if override else ""
        raise InputError(f"--calibration {what}, but {weights} has sha256 {model_sha}; calibrate this model "
                         f"(`lowprec calibrate`){rest}{identity_note(weights, recorded)}")


def _manifest(config: DLRMConfig, plan: Plan, b: _Builder, layers: dict[str, Any],
              model_dir: Path, model_sha: str | None) -> dict[str, Any]:
    # Serving memory of the tables: every physical table once (shared arrays are counted once)
    # plus id-transform buffers; fp32 equivalent: every logical table dense in fp32.
    embedding_bytes = sum(t["bytes"] for t in b.physical.values()) + b.buffer_bytes
    fp32_bytes = config.dense_fp32_bytes()
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
