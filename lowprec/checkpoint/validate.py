"""Validation of an artifact's manifest and of the weights it describes, before anything serves.

`validate_manifest` runs on the parsed manifest.json before any other file is touched: file names
must be plain names inside the artifact (no `..`, no absolute path, no directory part: the refusal
never depends on, or says, whether such a file exists); every precision string parses; per layer the
activation qparams are a finite scale > 0 with a zero point in [0, input_qmax] (127; 255 before it
was recorded) and the recorded input range is finite; physical tables, features and serving entries agree with the model config (rows, dims,
hotness, table references), and each precision is one its role can take (a table cannot be stored
in a layer-only precision, a logical table stored whole in one physical table has its precision).
`check_stored` compares the manifest with the weights file's header: a physical table's row width is
`Precision.bytes_per_row(dim)`, a layer's weight dtype is its codec's storage, so a hand-edited
manifest never reads int4 rows as fp16 or int8 weights as floats; `check_summary` recomputes the
summary numbers (bytes, compression) from the physical tables and stored tensors and refuses a
manifest that disagrees (manifest.json is not in its own sha256 map). The layer set is the model's. `validate_weights` runs on the loaded runtime: each physical table's
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

from lowprec.checkpoint.validate_serving import check_wiring
from lowprec.errors import InputError
from lowprec.jsonsafe import is_int
from lowprec.model.config import DLRMConfig
from lowprec.model.embedding import parse_spec
from lowprec.precision import Precision
from lowprec.quant.linear import ACT_QMAX, LEGACY_ACT_QMAX, activation_qparams
from lowprec.serve.layers import LAYER_CODECS
from lowprec.serve.tables import TABLE_CODECS

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


def _precision(value: Any, where: str, role: str) -> Precision:
    """Parse a precision string and check a `role` ("table" or "layer") can be stored in it."""
    p = Precision.parse(value, where)  # refuses non-strings too ("unknown precision")
    if p not in (TABLE_CODECS if role == "table" else LAYER_CODECS):
        raise _fail(where, f"a {role} cannot be stored in {p.value}")
    return p


def _int(value: Any, where: str, what: str, low: int = 1) -> int:
    if not is_int(value) or value < low:
        raise _fail(where, f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _qparams(name: str, spec: Any, where: str) -> None:
    if not isinstance(spec, dict):
        raise _fail(where, f"layer {name!r}: entry is not an object")
    p = _precision(spec.get("precision"), f"{where}: layer {name!r}", "layer")
    qp, rng, qmax = spec.get("input_qparams"), spec.get("input_range"), spec.get("input_qmax")
    # static or dynamic is said twice: a calibrated range without its qparams (or an int8 layer without
    # the key) served as dynamic in silence, unlike the exports beside it
    if p is Precision.INT8 and "input_qparams" not in spec:
        raise _fail(where, f"layer {name!r}: int8 layer without `input_qparams` (null for dynamic activation "
                           f"ranges); was manifest.json edited? Re-run `lowprec convert`")
    if rng is not None and qp is None:
        raise _fail(where, f"layer {name!r}: has a calibrated input range {rng!r} (static) but no activation "
                           f"qparams; was manifest.json edited? Re-run `lowprec convert`")
    qmax = LEGACY_ACT_QMAX if qmax is None else qmax  # (written before lowprec recorded it)
    if not is_int(qmax) or qmax not in (ACT_QMAX, LEGACY_ACT_QMAX):
        raise _fail(where, f"layer {name!r}: input_qmax {qmax!r} is not {ACT_QMAX} (or {LEGACY_ACT_QMAX}, older artifacts)")
    if qp is not None:
        ok = isinstance(qp, list) and len(qp) == 2 and all(isinstance(x, (int, float)) for x in qp)
        if not ok or not (math.isfinite(qp[0]) and qp[0] > 0 and qp[1] == int(qp[1]) and 0 <= qp[1] <= qmax):
            raise _fail(where, f"layer {name!r}: activation qparams {qp!r} are not [finite scale > 0, "
                               f"zero point in 0..{qmax}]")
        if qp[0] < torch.finfo(torch.float32).tiny or qp[0] > torch.finfo(torch.float32).max:
            raise _fail(where, f"layer {name!r}: activation scale {qp[0]!r} is outside float32's range")
    if rng is not None:
        ok = isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, (int, float)) for x in rng)
        if not ok or not all(math.isfinite(x) for x in rng) or rng[0] > rng[1]:
            raise _fail(where, f"layer {name!r}: input range {rng!r} is not a finite interval")
        if qp is not None:  # the qparams served are the range's (an edited zero point moved NE, exit 0)
            scale, zero = activation_qparams(rng[0], rng[1], qmax)
            if qp[1] != zero or abs(qp[0] - scale) > 1e-9 * scale:
                raise _fail(where, f"layer {name!r}: activation qparams {qp!r} are not those of its input range "
                                   f"{rng!r} ({[scale, zero]}): the manifest was edited")


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
    shapes = config.layer_shapes()
    if set(manifest["layers"]) != set(shapes):  # what the loader builds and inspect shows: every layer, once
        raise _fail(where, f"layers {sorted(manifest['layers'])} are not the model's {sorted(shapes)}")
    for name, spec in manifest["layers"].items():
        _qparams(name, spec, where)
    _check_tables(manifest, config, where)
    check_wiring(manifest, config, where)
    _check_summary(manifest, where)


def _check_summary(manifest: dict[str, Any], where: str) -> None:
    """The numbers `inspect`, the search and the reports show: typed, so a hand edit is refused here."""
    for key in ("embedding_bytes", "fp32_embedding_bytes", "layer_bytes"):
        _int(manifest.get(key), where, f"`{key}`", low=0)
    c = manifest.get("compression")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise _fail(where, f"`compression` must be a finite number > 0, got {c!r}")
    for key in ("lowprec_version", "torch_version", "fbgemm_version"):
        if not isinstance(manifest.get(key), str):
            raise _fail(where, f"`{key}` must be a string, got {manifest.get(key)!r}")
    for t in manifest["tables"]:
        name, sharing = t["name"], t.get("sharing")
        _int(t.get("bytes"), f"{where}: table {name!r}", "`bytes`", low=0)
        if sharing is not None and not (isinstance(sharing, dict) and isinstance(sharing.get("kind"), str)):
            raise _fail(where, f"table {name!r}: sharing {sharing!r} is not null or an object with a string `kind`")


def _check_tables(manifest: dict[str, Any], config: DLRMConfig, where: str) -> None:
    physical = {}
    for t in manifest["physical_tables"]:
        key = t.get("key")
        here = f"{where}: physical table {key!r}"
        if not isinstance(key, str):
            raise _fail(here, "the key must be a string")
        _int(t.get("rows"), here, "rows")
        _int(t.get("dim"), here, "dim")
        _precision(t.get("precision"), here, "table").bytes_per_row(t["dim"])  # dim: a multiple of 4
        physical[key] = t
    for i, f in enumerate(manifest["features"]):
        transform = f.get("transform")
        if not isinstance(f.get("table"), str) or f["table"] not in physical:
            raise _fail(where, f"feature {i} names physical table {f.get('table')!r}, which is not listed")
        if not isinstance(transform, dict) or not isinstance(transform.get("kind", ""), str):
            raise _fail(where, f"feature {i} must carry a transform object with a string `kind`")
    rows = {t.name: t.num_embeddings for t in config.tables}
    tiers = {f["table"] for f in manifest["features"] if f["transform"].get("kind") == "tier"}
    for t in manifest["tables"]:
        name = t.get("name")
        if not isinstance(name, str):
            raise _fail(where, f"table name {name!r} is not a string")
        p = _precision(t.get("precision"), f"{where}: table {name!r}", "table")
        if name in rows and t.get("rows") != rows[name]:
            raise _fail(where, f"table {name!r} lists {t.get('rows')!r} rows, the model config {rows[name]}")
        parts = t.get("physical")
        if t.get("exact") and isinstance(parts, list) and len(parts) == 1 and isinstance(parts[0], str) \
                and parts[0] in physical and parts[0] not in tiers:  # (a tier keeps its own precision)
            stored = Precision.parse(physical[parts[0]]["precision"])
            if stored != p:
                raise _fail(where, f"table {name!r} says {p.value} but its physical table {parts[0]!r} "
                                   f"is {stored.value}")
    listed = [t.get("name") for t in manifest["tables"]]
    if listed != config.table_names:  # what inspect, the search and the reports show: every table, once
        missing = [n for n in config.table_names if n not in listed]
        raise _fail(where, f"`tables` lists {len(listed)} tables, the model config {len(config.table_names)}"
                           + (f" (missing {missing[:5]})" if missing else " (names or order differ)"))
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
        # a dense table without post-training sharing is served by one identity feature, and one
        # with it never is (trained hash/QR/ROBE tables list no sharing and have their own transforms)
        dense = len(feats) == 1 and (feats[0].get("transform") or {}).get("kind") == "identity"
        sharing = manifest["tables"][config.table_names.index(tcfg.name)].get("sharing")
        if parse_spec(tcfg.embedding)[0] == "dense" and (sharing is None) != dense:
            raise _fail(here, f"lists sharing {sharing!r}, but it is served through "
                              f"{[(f.get('transform') or {}).get('kind') for f in feats]}")
        if dense:
            rows = physical[feats[0]["table"]]["rows"]
            if rows != tcfg.num_embeddings:
                raise _fail(here, f"served densely by {rows} rows, but the model's table has "
                                  f"{tcfg.num_embeddings}")
    _check_own_plan(manifest, where)  # (after the serving checks: their messages say more)


def _check_own_plan(manifest: dict[str, Any], where: str) -> None:
    """Each table as the manifest's own plan chose it (convert writes both from one choice): its
    precision, range method and sharing (none where sharing kept every row), and hot sharing, an
    approximation, never marked exact. A consistent edit of one of them alone is refused (QA 8b 3)."""
    from lowprec.plan import Plan

    if not isinstance(manifest.get("plan"), dict):
        return  # (validate_manifest's required keys name a missing plan)
    plan = Plan.from_json(manifest["plan"], f"{where}: its plan", tier_order=False)
    for t in manifest["tables"]:
        c, sharing = plan.table(str(t.get("name"))), t.get("sharing")
        said = (t.get("precision"), t.get("range_method"), sharing)
        if said[:2] != (c.precision.value, c.range_method) or (sharing is not None and sharing != c.sharing):
            raise _fail(where, f"table {t.get('name')!r} lists {said}, but the manifest's own plan chose "
                               f"{(c.precision.value, c.range_method, c.sharing)} for it; was manifest.json "
                               f"edited? Re-run `lowprec convert`")
        if isinstance(sharing, dict) and sharing.get("kind") == "hot" and t.get("exact"):
            raise _fail(where, f"table {t.get('name')!r} is marked exact, but hot sharing serves cold ids their "
                               f"bucket's row (an approximation); was manifest.json edited?")


_SAFETENSORS_DTYPE = {"int8": "I8", "float16": "F16", "float32": "F32"}  # torch dtype -> safetensors name


def check_stored(manifest: dict[str, Any], where: str, shapes: dict[str, tuple[list[int], str]]) -> None:
    """The manifest against the weights file's header (`shapes`: tensor name -> (shape, dtype));
    run after `validate_manifest`. Its summary numbers (bytes, compression) are then recomputed from
    what is stored (`check_summary`): manifest.json is not in its own sha256 map."""
    for t in manifest["physical_tables"]:
        key, p, d = t["key"], Precision.parse(t["precision"]), t["dim"]
        got = shapes.get(f"tables.{key}")
        if got is None:
            raise _fail(where, f"physical table {key!r}: the weights file has no tensor 'tables.{key}'")
        if got[0][1:] != [p.bytes_per_row(d)]:
            raise _fail(where, f"physical table {key!r} says {p.value} ({p.bytes_per_row(d)} bytes a row "
                               f"at dim {d}) but the weights file stores rows of {got[0][1:]} bytes")
        if got[0][:1] != [t["rows"]]:
            raise _fail(where, f"physical table {key!r} says {t['rows']} rows but the weights file stores "
                               f"{got[0][:1]}")
    layer_shapes = DLRMConfig.from_json(manifest["model"], where).layer_shapes()
    for name, spec in manifest["layers"].items():
        p = Precision.parse(spec["precision"])
        got = shapes.get(f"layers.{name}.weight")
        if got is None:
            raise _fail(where, f"layer {name!r}: the weights file has no tensor 'layers.{name}.weight'")
        n_in, n_out = layer_shapes[name]
        if tuple(got[0]) != (n_out, n_in):  # before the bytes they make up are compared
            raise _fail(where, f"layer {name!r}: weight of shape {tuple(got[0])}, the model config implies "
                               f"{(n_out, n_in)}")
        if got[1] != _SAFETENSORS_DTYPE[str(LAYER_CODECS[p].storage).removeprefix("torch.")]:
            raise _fail(where, f"layer {name!r} says {p.value} but its weight is stored as {got[1]}")


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _stored_bytes(shapes: dict[str, tuple[list[int], str]], name: str, where: str) -> int:
    if name not in shapes:
        raise _fail(where, f"{name} is not in the weights file")
    shape, dtype = shapes[name]
    return math.prod(shape) * _DTYPE_BYTES.get(dtype, 0)


def _buffer_names(value: Any, buffers: set[str]) -> set[str]:
    """The buffers a feature's transform spec names (a string or a list of strings in it)."""
    if isinstance(value, str):
        return {value} & buffers
    if isinstance(value, (list, tuple)):
        return set().union(*(_buffer_names(v, buffers) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_buffer_names(v, buffers) for v in value.values())) if value else set()
    return set()


def summary_numbers(manifest: dict[str, Any], shapes: dict[str, tuple[list[int], str]], where: str) -> dict[str, Any]:
    """The numbers `inspect` shows, computed from the physical tables (rows x the codec's bytes a row
    at their dim and precision) and the stored buffer and layer tensors, not read from the summary."""
    physical = {t["key"]: t["rows"] * Precision.parse(t["precision"]).bytes_per_row(t["dim"])
                for t in manifest["physical_tables"]}
    names = manifest.get("buffers") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(where, f"`buffers` must be a list of tensor names, got {names!r}")
    buffers = {n: _stored_bytes(shapes, f"buffers.{n}", where) for n in names}
    table_bytes = {}
    for t, s in zip(manifest["tables"], manifest["serving"]):
        feats = [manifest["features"][i] for g in s["groups"] for i in g]
        bufs = set().union(*(_buffer_names(f["transform"], set(buffers)) for f in feats)) if feats else set()
        keys = dict.fromkeys(f["table"] for f in feats)
        table_bytes[t["name"]] = sum(physical[k] for k in keys) + sum(buffers[b] for b in bufs)
    config = DLRMConfig.from_json(manifest["model"], where)
    embedding = sum(physical.values()) + sum(buffers.values())
    fp32 = config.dense_fp32_bytes()
    layers = {n: sum(_stored_bytes(shapes, k, where) for k in shapes if k.startswith(f"layers.{n}."))
              for n in manifest["layers"]}
    return {"physical": physical, "tables": table_bytes, "layers": layers, "embedding_bytes": embedding,
            "fp32_embedding_bytes": fp32, "compression": fp32 / embedding if embedding else float("nan"),
            "layer_bytes": sum(layers.values())}


def check_summary(manifest: dict[str, Any], where: str, shapes: dict[str, tuple[list[int], str]]) -> dict[str, Any]:
    """Refuse a manifest whose summary numbers disagree with `summary_numbers` (a hand edit: the
    manifest's sha256 map does not cover manifest.json); returns the computed numbers."""
    got = summary_numbers(manifest, shapes, where)
    bad = [f"physical table {t['key']!r} bytes {t.get('bytes')!r} (its rows hold {got['physical'][t['key']]})"
           for t in manifest["physical_tables"] if t.get("bytes") != got["physical"][t["key"]]]
    bad += [f"table {t['name']!r} bytes {t['bytes']!r} (its tables and buffers hold {got['tables'][t['name']]})"
            for t in manifest["tables"] if t["bytes"] != got["tables"][t["name"]]]
    bad += [f"layer {n!r} bytes {v.get('bytes')!r} (its stored tensors hold {got['layers'][n]})"
            for n, v in manifest["layers"].items() if "bytes" in v and v["bytes"] != got["layers"][n]]
    bad += [f"`{k}` {manifest[k]!r} (computed {got[k]})"
            for k in ("embedding_bytes", "fp32_embedding_bytes", "layer_bytes") if manifest[k] != got[k]]
    if not math.isclose(manifest["compression"], got["compression"], rel_tol=1e-9):
        bad.append(f"`compression` {manifest['compression']!r} (computed {got['compression']:.6g})")
    if bad:
        raise _fail(where, f"summary disagrees with what the artifact stores: {'; '.join(bad[:5])}"
                           f"{' ...' if len(bad) > 5 else ''}. Was manifest.json edited? Re-run `lowprec convert`")
    return got


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
    step = max(1, _CHECK_BYTES // width)  # bounded temporaries on a mapped table of any size and dim
    for a in range(0, rows.shape[0], step):
        block = rows[a:a + step]
        if precision in (Precision.FP32, Precision.FP16):
            dtype = torch.float32 if precision is Precision.FP32 else torch.float16
            _finite(block.contiguous().view(dtype), here, "the table")
        elif precision.is_integer:
            _finite(block[:, :4].contiguous().view(torch.float16), here, "a row scale/bias")


_CHECK_BYTES = 16 << 20  # of stored rows a block: isfinite's temporaries are ~1.25x that (was 1M rows: 320 MB at dim 64)


def check_layer_tensor(name: str, suffix: str, t: torch.Tensor, shape: tuple[int, int], where: str) -> None:
    """One stored tensor of a layer: finite; the weight of (out, in) = the model config's shape."""
    n_in, n_out = shape
    if suffix == "weight" and tuple(t.shape) != (n_out, n_in):
        raise _fail(where, f"layer {name!r}: weight of shape {tuple(t.shape)}, the model config "
                           f"implies {(n_out, n_in)}")
    if suffix != "weight" and tuple(t.shape) != (n_out,):
        raise _fail(where, f"layer {name!r}: {suffix} of shape {tuple(t.shape)}, expected ({n_out},)")
    _finite(t, where, f"layer {name!r} {suffix}")
