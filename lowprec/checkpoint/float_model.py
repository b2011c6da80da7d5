"""The float model checkpoint: MODEL_DIR/model.safetensors + MODEL_DIR/config.json.

config.json holds the format version, the DLRMConfig, versions, training provenance and the
sha256 of model.safetensors. Instead of model.safetensors a model may come as
model.safetensors.index.json naming several files, with tables split into row-range shards
(`lowprec.checkpoint.mapped`); config.json's "sha256" then lists the files it vouches for. Loading
maps the files read-only (no memory proportional to the model), checks the hashes, the exact set
of tensor names and shapes, and that every weight is finite, and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file

import lowprec
from lowprec.checkpoint.mapped import MappedTensors, index_files, open_tensors
from lowprec.checkpoint.tensorfile import TensorFileWriter
from lowprec.errors import InputError
from lowprec.filekind import check_regular
from lowprec.fileio import atomic_dir, read_json, sha256_file, write_json
from lowprec.model.config import DLRMConfig
from lowprec.model.dlrm import DLRM
from lowprec.model.embedding import parse_spec
from lowprec.model.parted import PartedBag
from lowprec.progress import Update

FORMAT = "lowprec-float-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # a model in several files (lowprec.checkpoint.mapped)


def save_float_model(model: DLRM, out: str | Path, info: dict[str, Any] | None = None,
                     inputs: tuple | list = ()) -> Path:
    """Write the model atomically; `info` (training provenance, metrics) goes into config.json."""
    with atomic_dir(out, "model", inputs) as tmp:
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        write_json(tmp / "config.json", {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "lowprec_version": lowprec.__version__,
            "torch_version": lowprec.TORCH_VERSION,
            "model": model.config.to_json(),
            "info": info or {},
            "sha256": {WEIGHTS: sha256_file(tmp / WEIGHTS)},
        })
    return Path(out)


def write_float_model(out: str | Path, config: DLRMConfig,
                      pieces: Callable[[str, tuple[int, ...]], Iterator[torch.Tensor]],
                      info: dict[str, Any] | None = None) -> Path:
    """Write a float model tensor by tensor without holding it: `pieces(name, shape)` yields each
    tensor's fp32 values in consecutive row blocks (for models larger than RAM: imports, tests,
    benchmarks). The sha256 is computed while writing would need a second pass; it is read back."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DLRM(config).state_dict().items()}
    with atomic_dir(out, "model") as tmp:
        with TensorFileWriter(tmp / WEIGHTS) as writer:  # its file closed on any error
            for name in sorted(shapes):
                with writer.stream(name, torch.float32, shapes[name]) as put:
                    for piece in pieces(name, shapes[name]):
                        put(piece.float())
            writer.close()
        write_json(tmp / "config.json", {
            "format": FORMAT, "version": FORMAT_VERSION, "lowprec_version": lowprec.__version__,
            "torch_version": lowprec.TORCH_VERSION, "model": config.to_json(), "info": info or {},
            "sha256": {WEIGHTS: sha256_file(tmp / WEIGHTS)},
        })
    return Path(out)


def read_float_config(model_dir: str | Path) -> tuple[DLRMConfig, dict[str, Any]]:
    model_dir = Path(model_dir)
    from lowprec.checkpoint.artifact import MANIFEST

    cfg_path = model_dir / "config.json"
    if not cfg_path.exists() and (model_dir / MANIFEST).exists():
        raise InputError(f"{model_dir}: a quantized artifact ({MANIFEST}), not a float model: this takes the float "
                         f"model it was converted from (a `train` or `import` output, with config.json)")
    obj = read_json(cfg_path, "model config.json")
    if obj.get("format") != FORMAT:
        raise InputError(f"{cfg_path}: not a lowprec float model (format {obj.get('format')!r})")
    if obj.get("version") != FORMAT_VERSION:
        raise InputError(f"{cfg_path}: float model format version {obj.get('version')} is not "
                         f"supported (expected {FORMAT_VERSION})")
    for key in ("model", "sha256", "info"):
        if not isinstance(obj.get(key, {}), dict):
            raise InputError(f"{cfg_path}: `{key}` must be a JSON object")
    return DLRMConfig.from_json(obj.get("model", {}), str(cfg_path)), obj


def weights_sha256(model_dir: str | Path) -> str:
    """The model's identity (calibrations, artifacts and drift runs record it) without reading the
    weights: the sha256 config.json records for model.safetensors (checked whenever the model is
    loaded or converted). For a model in several files, a hash of the recorded per-file hashes and
    of model.safetensors.index.json's (hashed here unless recorded: it says which rows each shard
    holds, so two equal-sized shards swapped in it are other weights). Only a model with nothing
    recorded is hashed here: a pass over model.safetensors, or over every file its index names and
    the index (the identity config.json's record of those files' hashes gives)."""
    model_dir = Path(model_dir)
    _, obj = read_float_config(model_dir)
    recorded = obj.get("sha256") or {}
    if set(recorded) == {WEIGHTS}:
        return str(recorded[WEIGHTS])
    path = weights_path(model_dir)
    if recorded and path.name == INDEX and INDEX not in recorded:
        recorded = {**recorded, INDEX: sha256_file(path)}
    if not recorded and path.name == INDEX:  # every file the index names, hashed here, and the index
        recorded = {**{f: _shard_sha256(path, f) for f in index_files(path)}, INDEX: sha256_file(path)}
    if recorded:
        return _combined(recorded)
    return sha256_file(path)


def _shard_sha256(index: Path, name: str) -> str:
    if not check_regular(index.parent / name):
        raise InputError(f"{index}: shard file {name!r} is missing")
    return sha256_file(index.parent / name)


def _combined(recorded: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()


def identity_note(model_dir: str | Path, sha: Any) -> str:
    """Why `sha`, recorded for this model elsewhere, may differ from `weights_sha256` now: "" unless
    it is what lowprec <= 0.1.0 recorded for a model in several files (the combined hash, or an
    artifact's per-file map, without the index); then a sentence saying so, to append to a refusal."""
    try:
        model_dir = Path(model_dir)
        _, obj = read_float_config(model_dir)
        recorded = obj.get("sha256") or {}
        if INDEX in recorded or weights_path(model_dir).name != INDEX or sha not in (recorded, _combined(recorded)):
            return ""
    except InputError:
        return ""
    return (f" ({model_dir}'s sha256 was recorded by an older lowprec, whose hash of a model in several "
            f"files left out {INDEX}, which says which rows each shard holds; it covers the index now. "
            f"Run that step again on this model; if the index was not edited since, the old record is "
            f"still right)")


def weights_path(model_dir: Path) -> Path:
    """model.safetensors, or model.safetensors.index.json for a model stored in several files
    (a FIFO, directory or device in their place: refused as not a regular file)."""
    single, index = model_dir / WEIGHTS, model_dir / INDEX
    if check_regular(single):
        return single
    if check_regular(index):
        return index
    raise InputError(f"missing weights file {single} (or {INDEX})")


BAR_FROM_BYTES = 1 << 30  # models this large show a progress bar for the hashing pass


def open_weights(model_dir: Path, recorded: dict[str, str] | None, progress: Update | None = None,
                 config: DLRMConfig | None = None) -> MappedTensors:
    """The model's tensors mapped read-only; the files in `recorded` are hashed as they are read
    (model.safetensors.index.json, if listed, at once). With `config`, the tensors' names and shapes
    are checked first (`check_tensors`), so a tensor missing from an index is named as such, not as
    its shard files listed in `recorded` but unread. Without `progress`, a model of >= 1 GiB shows a
    byte progress bar on stderr (tqdm)."""
    src = open_tensors(weights_path(model_dir))
    if config is not None:
        check_tensors(src, config, model_dir)
    if recorded:
        if progress is None:
            total = sum(f.size for f in src.files.values())
            if total >= BAR_FROM_BYTES:
                from tqdm import tqdm

                bar = tqdm(total=total, desc=f"sha256 {model_dir.name}", unit="B", unit_scale=True,
                           file=sys.stderr, mininterval=0.5, leave=False)
                progress = bar.update
        src.expect_sha256(recorded, progress)
    return src


def check_finite_chunk(where: Path, name: str, row: int, chunk: torch.Tensor) -> None:
    """InputError naming the tensor and the first index of a NaN/Inf in a row chunk.

    A sum (one pass, no temporary; NaN/Inf always make it non-finite) clears almost every chunk;
    only then is the chunk searched, in blocks (torch.isfinite allocates several copies)."""
    if not chunk.is_floating_point() or bool(torch.isfinite(chunk.sum())):
        return
    flat = chunk.reshape(chunk.shape[0], -1) if chunk.dim() else chunk.reshape(1, 1)
    for start in range(0, flat.shape[0], 1 << 14):
        bad = ~torch.isfinite(flat[start:start + (1 << 14)])
        if bad.any():
            r, c = torch.nonzero(bad)[0].tolist()
            index = [row + start + r, *([c] if chunk.dim() == 2 else [])] if chunk.dim() <= 2 else \
                [row + start + r, *torch.unravel_index(torch.tensor(c), chunk.shape[1:])]
            raise InputError(f"{where}: tensor {name!r} holds NaN/Inf (first at index "
                             f"{[int(i) for i in index]})")


def check_finite(state: dict[str, torch.Tensor], where: Path) -> None:
    for name, t in state.items():
        check_finite_chunk(where, name, 0, t)


def _meta_model(config: DLRMConfig, where: Path) -> DLRM:
    """The model config.json implies, built on the meta device (nothing allocated)."""
    try:
        with torch.device("meta"):
            return DLRM(config)
    except (RuntimeError, NotImplementedError, ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise InputError(f"{where}: describes a model that cannot be built ({exc})") from exc


def _check_names(src: MappedTensors, expected: dict[str, torch.Tensor], where: Path) -> None:
    missing = sorted(set(expected) - set(src.names()))
    extra = sorted(set(src.names()) - set(expected))
    if missing or extra:
        raise InputError(f"{where}: tensors do not match config.json "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for name, t in expected.items():
        if tuple(src.shape(name)) != tuple(t.shape):
            raise InputError(f"{where}: tensor {name!r} has shape {tuple(src.shape(name))}, "
                             f"config.json implies {tuple(t.shape)}")
        if src.dtype(name) != "F32":  # (an fp16 table failed deep in a forward, exit 4; int32 converted)
            raise InputError(f"{where}: tensor {name!r} is {src.dtype(name)}; a float model's tensors are float32 "
                             f"(F32): convert them, e.g. tensor.float(), before saving")


def check_tensors(src: MappedTensors, config: DLRMConfig, model_dir: Path) -> None:
    """The mapped tensors are the ones config.json implies: names, shapes, float32 (on the meta
    device: nothing allocated). `convert` reads tensors one by one and checks the same up front."""
    _check_names(src, _meta_model(config, model_dir / "config.json").state_dict(), src.path)


def _parted_tables(src: MappedTensors, config: DLRMConfig) -> dict[str, tuple[int, Any]]:
    """Checkpoint name -> (table index, LogicalTable) of the dense tables stored in several row shards."""
    out = {}
    for i, t in enumerate(config.tables):
        name = f"embeddings.{i}.bag.weight"
        if parse_spec(t.embedding)[0] == "dense" and name in src and len(src.table(name).parts) > 1:
            out[name] = (i, src.table(name))
    return out


def load_float_model(model_dir: str | Path, writable: bool = False,
                     progress: Update | None = None) -> tuple[DLRM, dict[str, Any]]:
    """Rebuild the DLRM from its directory; raises InputError on anything inconsistent.

    The parameters are read-only views of the mapped files (no memory proportional to the model;
    they do not require grad, and writing to them would fault): for inference. A dense table in
    several row shards is a `PartedBag` over its shards' views (lookups part by part, nothing joined). `writable=True`
    copies them into ordinary tensors (training, fine-tuning). One pass over the files hashes them
    and checks every weight is finite, in row chunks; `progress(n)` gets the bytes hashed."""
    model_dir = Path(model_dir)
    config, obj = read_float_config(model_dir)
    src = open_weights(model_dir, obj.get("sha256"), progress, config)  # (names and shapes checked)
    where = src.path
    model = _meta_model(config, model_dir / "config.json")
    expected = model.state_dict()
    src.scan(lambda name, row, chunk: check_finite_chunk(where, name, row, chunk))
    src.check_sha256()
    parted = {} if writable else _parted_tables(src, config)
    for name, (i, table) in parted.items():  # looked up part by part, never joined (lowprec.model.parted)
        model.embeddings[i] = PartedBag(table, str(where), config.tables[i].name)
    state = {name: src.tensor(name) for name in expected if name not in parted}
    if writable:  # (training: a table in row shards is joined in memory)
        state = {name: t.clone() for name, t in state.items()}
    model.load_state_dict(state, assign=True)
    if not writable:
        for p in model.parameters():
            p.requires_grad_(False)
    model.eval()
    return model, obj.get("info", {})
