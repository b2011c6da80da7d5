"""The table config of `import --format torchrec-quant`, checked key by key before anything is read by it.

The config (`--export torchrec`'s config.json is one) says what the rows alone do not: each table's
data type, the features it serves, its rows; and each layer's activation qparams. Read loosely, it
imported wrong models silently: `"feature_names": "cat_2"` matched as a substring, a table whose
`feature_names` named no dataset feature was matched by its name instead, `num_embeddings: "10131"`
passed `int()`, `hotness: 0` and `dense_in_features: 14` contradicting the tensors were ignored, a
layer `precision: "fp8"` was ignored, and a missing `layers` key turned calibrated int8 layers into
dynamic ones. Here every key lowprec reads is type-checked (InputError naming the file, the table
or layer and the key); values that are redundant with the tensors or the dataset (hotness,
dense_in_features, dense_names, the arch sizes, a layer's precision, a table's weight_dtype/precision) must
agree with them. Keys lowprec does not read are left alone (TorchRec configs carry more).
"""

from __future__ import annotations

from typing import Any

from lowprec.errors import InputError
from lowprec.jsonsafe import is_int
from lowprec.plan import RANGE_METHODS
from lowprec.serve.torchrec_export import DATA_TYPES, PRECISIONS, ROW_ALIGNMENT

LAYER_PRECISIONS = ("fp32", "fp16", "int8")


def _int(where: str, what: str, x: Any, low: int = 1) -> int:
    if not is_int(x) or x < low:
        raise InputError(f"{where}: {what} is {x!r}; it must be an integer >= {low} (a JSON number without "
                         f"a fraction, not a string)")
    return x


def check_row_alignment(cfg: dict[str, Any], where: str) -> int:
    """The EBC's row_alignment in bytes (TorchRec's DEFAULT_ROW_ALIGNMENT, 16, when absent)."""
    return _int(where, "row_alignment", cfg.get("row_alignment", ROW_ALIGNMENT))


def check_tables(cfg: dict[str, Any], features: list[str], where: str) -> None:
    """Types of every table's keys; feature_names, when given, a list of dataset features."""
    seen: set[str] = set()
    for i, t in enumerate(cfg["tables"]):
        if not isinstance(t, dict):
            raise InputError(f"{where}: tables[{i}] is {type(t).__name__}; expected an object {{name, "
                             f"feature_names, num_embeddings, embedding_dim, data_type}}")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}: tables[{i}] has name {name!r}; every table needs a name (a string)")
        if name in seen:
            raise InputError(f"{where}: table {name!r} is listed twice")
        seen.add(name)
        at = f"table {name!r}"
        _int(where, f"{at} num_embeddings", t.get("num_embeddings"))
        _int(where, f"{at} embedding_dim", t.get("embedding_dim"), low=0)  # 0: refused naming the dims
        if t.get("data_type") not in PRECISIONS:
            raise InputError(f"{where}: {at} has data_type {t.get('data_type')!r}; lowprec imports {sorted(PRECISIONS)}")
        precision = PRECISIONS[t["data_type"]]
        for key, want in (("precision", precision), ("weight_dtype", DATA_TYPES[precision][1])):
            if key in t and t[key] != want:
                raise InputError(f"{where}: {at} has {key} {t[key]!r} but data_type {t['data_type']!r}, "
                                 f"which is {key} {want!r}")
        if "hotness" in t:
            _int(where, f"{at} hotness", t["hotness"])
        if t.get("range_method") not in (None,) + RANGE_METHODS:
            raise InputError(f"{where}: {at} has range_method {t['range_method']!r}; expected one of {RANGE_METHODS}")
        if "feature_names" in t:
            names = t["feature_names"]
            if not isinstance(names, list) or not names or not all(isinstance(f, str) for f in names):
                raise InputError(f"{where}: {at} has feature_names {names!r}; expected a non-empty list of "
                                 f"feature names (strings), e.g. [{name.removeprefix('t_')!r}]")


def check_feature_names(tables: list[dict[str, Any]], features: list[str], where: str) -> None:
    """Every listed feature is the dataset's (after the tables serving none were refused as such):
    one a table lists beside the features it serves would be dropped silently."""
    for t in tables:
        unknown = [f for f in t.get("feature_names", []) if f not in features]
        if unknown:
            raise InputError(f"{where}: table {t['name']!r} lists feature_names {unknown}, which are not features "
                             f"of the dataset (its features: {features[:30]})")


def check_hotness(owners: dict[str, dict], hotness: dict[str, int], where: str) -> None:
    """A table's hotness, when given, is its dataset feature's (the slots the id matrix gives it)."""
    for f, t in owners.items():
        if "hotness" in t and t["hotness"] != hotness[f]:
            raise InputError(f"{where}: table {t['name']!r} has hotness {t['hotness']} but dataset feature "
                             f"{f!r} has {hotness[f]} ids a row")


def check_arch(cfg: dict[str, Any], dense_names: list[str], dim: int, bottom: list[int], top: list[int],
               where: str, tensors: str) -> None:
    """The config's DLRM sizes, where given, are the tensors' (bottom widths, top widths + [1]), and
    its dense_names the dataset's."""
    if "dense_names" in cfg and cfg["dense_names"] != list(dense_names):
        raise InputError(f"{where}: dense_names is {cfg['dense_names']!r}, but the dataset's dense features "
                         f"are {list(dense_names)}")
    dense_in = len(dense_names)
    for key, want in (("dense_in_features", dense_in), ("embedding_dim", dim),
                      ("dense_arch_layer_sizes", bottom), ("over_arch_layer_sizes", top)):
        if key not in cfg:
            continue
        got = cfg[key]
        ok = got == want and (is_int(got) if isinstance(want, int) else
                              isinstance(got, list) and all(is_int(x) for x in got))
        if not ok:
            raise InputError(f"{where}: {key} is {got!r}, but the weights in {tensors} (and the dataset's "
                             f"{dense_in} dense features) make it {want!r}")


def check_layers(cfg: dict[str, Any], modules: dict[str, str], where: str) -> dict[str, Any]:
    """`layers`: one entry per layer module found in the weights (TorchRec path -> lowprec name);
    returns module -> entry. Precision and qparams are checked against the tensors by `check_layer`."""
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        raise InputError(f"{where}: 'layers' is {'missing' if layers is None else type(layers).__name__}; "
                         f"expected a list with one {{module, precision, input_qparams}} per layer "
                         f"({sorted(modules)}): an int8 layer's calibrated input_qparams live there")
    out: dict[str, Any] = {}
    for i, x in enumerate(layers):
        module = x.get("module") if isinstance(x, dict) else None
        if module not in modules:
            raise InputError(f"{where}: layers[{i}] has module {module!r}; the weights hold {sorted(modules)}")
        if module in out:
            raise InputError(f"{where}: layer {module} is listed twice in layers")
        if "name" in x and x["name"] != modules[module]:
            raise InputError(f"{where}: layer {module} has name {x['name']!r}; lowprec calls it {modules[module]!r}")
        if "precision" in x and x["precision"] not in LAYER_PRECISIONS:
            raise InputError(f"{where}: layer {module} has precision {x['precision']!r}; layers are "
                             f"{list(LAYER_PRECISIONS)}")
        qp = x.get("input_qparams")
        if qp is not None and not (isinstance(qp, list) and len(qp) == 2 and isinstance(qp[0], (int, float))
                                   and not isinstance(qp[0], bool) and is_int(qp[1])):
            raise InputError(f"{where}: layer {module} has input_qparams {qp!r}; expected null or "
                             f"[scale, zero_point] (a number and an integer)")
        qmax = x.get("input_qmax")
        if qmax is not None and (not is_int(qmax) or qmax not in (127, 255)):
            raise InputError(f"{where}: layer {module} has input_qmax {qmax!r}; expected null, 127 (lowprec's int8 "
                             f"layers) or 255 (exports of older lowprecs)")
        out[module] = x
    missing = sorted(set(modules) - set(out))
    if missing:
        raise InputError(f"{where}: layers lists no entry for {missing}; give each layer its module, "
                         f"precision and input_qparams (null unless a calibrated int8 layer)")
    return out


def check_layer(entry: dict[str, Any], module: str, precision: str, where: str, tensors: str) -> None:
    """A layer's config entry agrees with its tensors' precision (qparams only on int8)."""
    if "precision" in entry and entry["precision"] != precision:
        raise InputError(f"{where}: layer {module} has precision {entry['precision']!r}, but its tensors in "
                         f"{tensors} are {precision}")
    if entry.get("input_qparams") is not None and precision != "int8":
        raise InputError(f"{where}: layer {module} has input_qparams but is {precision} in {tensors}; only int8 "
                         f"layers take them")
