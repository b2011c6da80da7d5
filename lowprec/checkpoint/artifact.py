"""The quantized artifact: ARTIFACT_DIR/weights.safetensors + manifest.json, and loading it.

manifest.json records the format version; lowprec, torch and fbgemm versions; the model config;
the plan; per logical table its rows, dim, precision, sharing and bytes; the physical TBE tables,
TBE features (physical table + id transform) and how each logical table combines them; per layer
its precision and activation qparams; and the sha256 of every other file. Loading validates the
manifest (lowprec.checkpoint.validate: file names, precisions, qparams, rows and dims against the
model config) and verifies every hash before reading a byte of weights, checks each tensor as it is
read (width, finite values, layer shapes), then builds `QuantizedDLRM` (torch + fbgemm_gpu only) through
the serving handlers (lowprec.serve); the TBE looks rows up in place in a read-only mapping of
weights.safetensors (no copy of the tables).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lowprec.checkpoint.mapped import MappedTensors, open_tensors
from lowprec.checkpoint.validate import (check_layer_tensor, check_stored, check_summary, check_table_rows,
                                         validate_manifest)
from lowprec.checkpoint.validate_serving import check_buffers
from lowprec.errors import InputError
from lowprec.filekind import check_regular
from lowprec.fileio import read_json, sha256_file, write_json
from lowprec.jsonsafe import dumps
from lowprec.model.config import DLRMConfig
from lowprec.precision import Precision
from lowprec.serve.forms import Feature
from lowprec.serve.layers import layer_codec
from lowprec.serve.runtime import PhysicalTable, QuantizedDLRM, QuantizedEmbeddings, TableServing

FORMAT = "lowprec-artifact"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
CONTENT = "content_sha256"  # the manifest's own hash: "files" covers every file but the manifest
CONTENT_SINCE = (0, 2, 0)  # the lowprec versions that record it: a manifest from one without it was edited


def content_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, as it reads back), without CONTENT."""
    body = json.loads(dumps({k: v for k, v in manifest.items() if k != CONTENT}))
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _release(version: Any) -> tuple[int, ...]:
    """'0.2.0' -> (0, 2, 0); anything unreadable -> () (older than every release)."""
    parts = str(version).split("+")[0].split(".")[:3]
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """manifest.json with its CONTENT hash, so a hand edit of it (rewired tables, a transform's seed,
    a layer's range: every file hash intact, and other scores) is refused on loading."""
    manifest[CONTENT] = content_sha256(manifest)
    write_json(path, manifest)


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse manifest.json, check format and version, and (by default) every file's sha256."""
    root = Path(path)
    manifest = read_json(root / MANIFEST, "artifact manifest.json")
    where = str(root / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{where}: not a lowprec artifact manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise InputError(f"{where}: artifact format version {manifest.get('version')!r} is not "
                         f"supported by this lowprec (it reads version {FORMAT_VERSION})")
    recorded = manifest.get(CONTENT)  # (absent: an artifact from a lowprec before CONTENT_SINCE)
    if recorded is None and _release(manifest.get("lowprec_version")) >= CONTENT_SINCE:
        raise InputError(f"{where}: has no {CONTENT}, which lowprec {manifest.get('lowprec_version')} (the "
                         f"lowprec_version it declares) always records: it was edited after conversion. Undo the "
                         f"edit, or re-run `lowprec convert`")
    if recorded is not None and recorded != content_sha256(manifest):
        raise InputError(f"{where}: edited after conversion: its content no longer matches its {CONTENT}, so "
                         f"what it says about tables, transforms or layers may not be what was converted and "
                         f"verified (its TorchScript module keeps the converted wiring). Undo the edit, or re-run "
                         f"`lowprec convert`")
    validate_manifest(manifest, where)  # before any listed file is touched
    if verify:
        verify_files(root, manifest)
        check_stored_and_summary(root, manifest)
    return manifest


def check_stored_and_summary(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest against the weights file's header: precisions, rows, and its summary numbers
    (bytes, compression), recomputed (lowprec.checkpoint.validate.check_summary); returns them."""
    where, shapes = str(root / MANIFEST), stored_shapes(root / WEIGHTS)
    check_stored(manifest, where, shapes)
    return check_summary(manifest, where, shapes)


def stored_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) from the safetensors header, reading no tensor data."""
    return {name: (list(e.shape), e.dtype) for name, e in MappedTensors(path).entries_in_file_order()}


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise InputError(f"{root / MANIFEST}: no sha256 recorded for {WEIGHTS}")
    for name, expected in files.items():
        f = root / name
        if not check_regular(f):  # (a FIFO, directory or device: refused as not a regular file)
            raise InputError(f"{f}: missing (listed in {MANIFEST})")
        if sha256_file(f) != expected:
            raise InputError(f"{f}: sha256 does not match {MANIFEST}; the file was modified or "
                             f"truncated after conversion. Re-run `lowprec convert`.")


def _layer_module(name: str, spec: dict[str, Any], src: Any, shape: tuple[int, int], where: str) -> torch.nn.Module:
    precision = Precision.parse(spec["precision"], f"layer {name}")

    def tensor(suffix: str) -> torch.Tensor:
        t = src.get_tensor(f"layers.{name}.{suffix}")
        check_layer_tensor(name, suffix, t, shape, where)
        return t
    return layer_codec(precision, f"layer {name!r}").build(tensor, spec)


def in_place_offsets(src: Any, tables: list[PhysicalTable]) -> tuple[torch.Tensor, list[int]] | None:
    """(file bytes, offset of each table) when every table is stored in one mapped file exactly
    as the CPU TBE lays rows out (unpadded), else None (the rows are then copied into the TBE)."""
    if not isinstance(src, MappedTensors) or not tables:
        return None
    flat, offsets = None, []
    for t in tables:
        name = f"tables.{t.key}"
        if name not in src or src.shape(name) != (t.rows, t.precision.bytes_per_row(t.dim)):
            return None
        data, offset = src.file_bytes(name)
        if flat is not None and data.data_ptr() != flat.data_ptr():
            return None
        flat = data
        offsets.append(offset)
    return flat, offsets


def build_runtime(manifest: dict[str, Any], src: Any, where: str, serve: bool = True) -> QuantizedDLRM:
    """The runtime module from a checked manifest and its tensors (`src`). `serve=False` builds the
    same modules (layers, buffers, id transforms, the TBE's specs) without reading or placing the
    tables' rows, which are then checked by the file's header only (`check_loads`: inspect, convert)."""
    config = DLRMConfig.from_json(manifest["model"], where)
    shapes = config.layer_shapes()  # the layer set: checked by validate_manifest
    tables = [PhysicalTable(t["key"], int(t["rows"]), int(t["dim"]), Precision.parse(t["precision"]))
              for t in manifest["physical_tables"]]
    features = [Feature(f["table"], f["transform"]) for f in manifest["features"]]
    serving = [TableServing(s["name"], int(s["hotness"]), tuple(tuple(g) for g in s["groups"]))
               for s in manifest["serving"]]
    layers = {name: _layer_module(name, spec, src, shapes[name], where) for name, spec in manifest["layers"].items()}
    buffers = {name: src.get_tensor(f"buffers.{name}") for name in manifest.get("buffers", [])}
    check_buffers(manifest, config, buffers, where)
    try:
        for t in tables if serve else ():  # width, finite values: checked where the rows lie, no copy
            _table_rows(src, t, where)
        in_place = in_place_offsets(src, tables) if serve else None
        embeddings = QuantizedEmbeddings(config.embedding_dim, tables, features, serving, buffers,
                                         rows=[t.num_embeddings for t in config.tables],
                                         allocate=serve and in_place is None)
        if not serve:
            pass
        elif in_place is not None:  # the TBE reads the mapped artifact: no copy of the tables
            embeddings.serve_from(*in_place)
        else:
            embeddings.load_rows(lambda key: src.get_tensor(f"tables.{key}"))
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    runtime = QuantizedDLRM(config, embeddings, layers)
    runtime.eval()
    return runtime


def _table_rows(src: Any, table: PhysicalTable, where: str) -> torch.Tensor:
    rows = src.get_tensor(f"tables.{table.key}")
    check_table_rows(table.key, table.precision, table.dim, rows, where)
    return rows


def _build(root: Path, manifest: dict[str, Any], serve: bool) -> QuantizedDLRM:
    where = str(root / MANIFEST)
    try:  # read-only mapping (lowprec.checkpoint.mapped): works for files larger than RAM
        return build_runtime(manifest, open_tensors(root / WEIGHTS), where, serve)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(f"{where}: artifact is inconsistent with {WEIGHTS} ({exc!r})") from exc


def check_loads(root: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The loader's checks of an artifact whose manifest `read_manifest` accepted, except reading the
    tables' rows (their header is checked): the stored tensors against the manifest, its summary
    numbers, and the runtime built from the mapped files as `load_artifact` builds it (layers,
    buffers, id transforms and their ranges, the TBE). `inspect` shows and `convert` commits only an
    artifact that passes. Returns the summary numbers (`check_stored_and_summary`)."""
    root = Path(root)
    numbers = check_stored_and_summary(root, manifest)
    _build(root, manifest, serve=False)
    return numbers


def load_artifact(path: str | Path) -> tuple[QuantizedDLRM, dict[str, Any]]:
    """Verify and load an artifact into the FBGEMM runtime module."""
    root = Path(path)
    manifest = read_manifest(root)
    return _build(root, manifest, serve=True), manifest
