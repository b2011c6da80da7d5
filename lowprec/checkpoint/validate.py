"""Validation of an artifact's manifest and of the weights it describes, before anything serves.

`validate_manifest` runs on the parsed manifest.json before any other file is touched: file names
must be plain names inside the artifact (no `..`, no absolute path, no directory part: the refusal
never depends on, or says, whether such a file exists); every precision string parses; per layer the
activation qparams are a finite scale > 0 with a zero point in [0, 255] and the recorded input range
is finite; physical tables, features and serving entries agree with the model config (rows, dims,
hotness, table references). `validate_weights` runs on the loaded runtime: each physical table's
bytes per row match its precision and dim, no fp32/fp16 table value, int row scale/bias or layer
tensor is NaN or infinite, and each layer's weight has the (out, in) shape of the model config
(`check_table_rows`, `check_layer_tensor`, called by the loader as it reads each tensor).
Every refusal is an InputError naming the manifest and the entry at fault (exit 2).
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import torch

from lowprec.errors import InputError
from lowprec.model.config import DLRMConfig
from lowprec.precision import Precision

_LIST_KEYS = ("physical_tables", "features", "serving", "tables")


def _fail(where: str, msg: str) -> InputError:
    return InputError(f"{where}: {msg}")


def check_file_name(name: Any, where: str) -> None:
    """A name listed in the manifest must be a relative path inside the artifact directory (exports
    keep files in a subdirectory, e.g. torchrec/): no '..' part, no absolute or drive path."""
    ok = isinstance(name, str) and name not in ("", ".", "..")
    if ok:
        p, w = PurePosixPath(name), PureWindowsPath(name)
        ok = not p.is_absolute() and not w.is_absolute() and not w.drive and "\\" not in name \
            and ".." not in p.parts and "." not in p.parts and "\x00" not in name
    if not ok:
        raise _fail(where, f"file name {name!r} is not a relative path inside the artifact "
                           f"(no '..', no absolute paths); refusing to read it")


def _int(value: Any, where: str, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(where, f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _qparams(name: str, spec: Any, where: str) -> None:
    if not isinstance(spec, dict):
        raise _fail(where, f"layer {name!r}: entry is not an object")
    Precision.parse(spec.get("precision"), f"{where}: layer {name!r}")
    qp, rng = spec.get("input_qparams"), spec.get("input_range")
    if qp is not None:
        ok = isinstance(qp, list) and len(qp) == 2 and all(isinstance(x, (int, float)) for x in qp)
        if not ok or not (math.isfinite(qp[0]) and qp[0] > 0 and qp[1] == int(qp[1]) and 0 <= qp[1] <= 255):
            raise _fail(where, f"layer {name!r}: activation qparams {qp!r} are not [finite scale > 0, "
                               f"zero point in 0..255]")
        if qp[0] < torch.finfo(torch.float32).tiny or qp[0] > torch.finfo(torch.float32).max:
            raise _fail(where, f"layer {name!r}: activation scale {qp[0]!r} is outside float32's range")
    if rng is not None:
        ok = isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, (int, float)) for x in rng)
        if not ok or not all(math.isfinite(x) for x in rng) or rng[0] > rng[1]:
            raise _fail(where, f"layer {name!r}: input range {rng!r} is not a finite interval")


def validate_manifest(manifest: dict[str, Any], where: str) -> None:
    """Structural and numeric checks of a parsed manifest (see the module docstring)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _fail(where, "no 'files' map of sha256 hashes")
    for name in files:
        check_file_name(name, where)
    for key in _LIST_KEYS:
        if not isinstance(manifest.get(key), list) or not all(isinstance(x, dict) for x in manifest[key]):
            raise _fail(where, f"{key!r} must be a list of objects")
    if not isinstance(manifest.get("layers"), dict):
        raise _fail(where, "'layers' must be an object")
    config = DLRMConfig.from_json(manifest.get("model"), where)
    for name, spec in manifest["layers"].items():
        _qparams(name, spec, where)
    _check_tables(manifest, config, where)


def _check_tables(manifest: dict[str, Any], config: DLRMConfig, where: str) -> None:
    physical = {}
    for t in manifest["physical_tables"]:
        key = t.get("key")
        here = f"{where}: physical table {key!r}"
        _int(t.get("rows"), here, "rows")
        _int(t.get("dim"), here, "dim")
        Precision.parse(t.get("precision"), here).bytes_per_row(t["dim"])  # dim: a multiple of 4
        physical[key] = t
    for i, f in enumerate(manifest["features"]):
        if f.get("table") not in physical:
            raise _fail(where, f"feature {i} names physical table {f.get('table')!r}, which is not listed")
    rows = {t.name: t.num_embeddings for t in config.tables}
    for t in manifest["tables"]:
        Precision.parse(t.get("precision"), f"{where}: table {t.get('name')!r}")
        if t.get("name") in rows and t.get("rows") != rows[t["name"]]:
            raise _fail(where, f"table {t['name']!r} lists {t.get('rows')!r} rows, the model config "
                               f"{rows[t['name']]}")
    serving = manifest["serving"]
    if [s.get("name") for s in serving] != config.table_names:
        raise _fail(where, f"serving tables {[s.get('name') for s in serving]} are not the model's "
                           f"tables {config.table_names}")
    n_features = len(manifest["features"])
    for s, tcfg in zip(serving, config.tables):
        here = f"{where}: table {tcfg.name!r}"
        if s.get("hotness") != tcfg.hotness:
            raise _fail(here, f"hotness {s.get('hotness')!r} is not the model's {tcfg.hotness}")
        groups = s.get("groups")
        if not isinstance(groups, list) or not groups or not all(
                isinstance(g, list) and g and all(isinstance(i, int) and 0 <= i < n_features for i in g)
                for g in groups):
            raise _fail(here, f"groups {groups!r} are not lists of feature indices < {n_features}")
        feats = [manifest["features"][i] for g in groups for i in g]
        if len(feats) == 1 and (feats[0].get("transform") or {}).get("kind") == "identity":
            rows = physical[feats[0]["table"]]["rows"]
            if rows != tcfg.num_embeddings:
                raise _fail(here, f"served densely by {rows} rows, but the model's table has "
                                  f"{tcfg.num_embeddings}")


def _finite(t: torch.Tensor, where: str, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise _fail(where, f"{what} holds NaN or infinite values; the artifact is corrupt. "
                           f"Re-run `lowprec convert`.")


def check_table_rows(key: str, precision: Precision, dim: int, rows: torch.Tensor, where: str) -> None:
    """One physical table's uint8 rows: width matches precision and dim, stored floats finite."""
    here = f"{where}: physical table {key!r}"
    width = precision.bytes_per_row(dim)
    if rows.dim() != 2 or rows.dtype != torch.uint8 or rows.shape[1] != width:
        raise _fail(here, f"rows of {rows.dtype} shape {tuple(rows.shape)}; {precision.value} at dim {dim} "
                          f"stores {width} bytes per row")
    if rows.shape[0] == 0:
        return
    if precision in (Precision.FP32, Precision.FP16):
        dtype = torch.float32 if precision is Precision.FP32 else torch.float16
        _finite(rows.contiguous().view(dtype), here, "the table")
    elif precision.is_integer:
        _finite(rows[:, :4].contiguous().view(torch.float16), here, "a row scale/bias")


def check_layer_tensor(name: str, suffix: str, t: torch.Tensor, shape: tuple[int, int], where: str) -> None:
    """One stored tensor of a layer: finite; the weight of (out, in) = the model config's shape."""
    n_in, n_out = shape
    if suffix == "weight" and tuple(t.shape) != (n_out, n_in):
        raise _fail(where, f"layer {name!r}: weight of shape {tuple(t.shape)}, the model config "
                           f"implies {(n_out, n_in)}")
    if suffix != "weight" and tuple(t.shape) != (n_out,):
        raise _fail(where, f"layer {name!r}: {suffix} of shape {tuple(t.shape)}, expected ({n_out},)")
    _finite(t, where, f"layer {name!r} {suffix}")
