"""A tampered or corrupt artifact is refused with exit 2 naming the place, before it serves.

Each case edits a real converted artifact (the manifest, or the weights with the manifest's sha256
updated so the hash check passes) and checks `lowprec eval` exits 2 with a message naming the
manifest entry at fault; before, each of these loaded and served (or raised a traceback)."""

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from helpers import trained_tiny, resign_manifest
from lowprec.calibrate import CalibConfig, calibrate, save_calibration
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.cli import main
from lowprec.errors import InputError
from lowprec.fileio import sha256_file
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.train import TrainConfig


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    ds, model = trained_tiny(root, TrainConfig(windows=(0,), epochs=1), windows=2, rows=400)
    calib = calibrate(model, ds, CalibConfig((0,)))
    save_calibration(calib, root / "calib.json", sha256_file(root / "model" / "model.safetensors"))
    return root, calib


def fresh(made, tmp_path, precision=Precision.INT8):
    """An artifact at `precision` (layers fp32 when the tables are fp32, else int8 with qparams)."""
    root, calib = made
    out = tmp_path / "art"
    layers = Precision.FP32 if precision is Precision.FP32 else Precision.INT8
    convert(root / "model", Plan.uniform(precision, layers), out, calib)
    return out


def edit_manifest(art, fn):
    m = json.loads((art / "manifest.json").read_text())
    fn(m)
    (art / "manifest.json").write_text(json.dumps(resign_manifest(m)))


def edit_weights(art, fn):
    tensors = load_file(str(art / "weights.safetensors"))
    fn(tensors)
    save_file(tensors, str(art / "weights.safetensors"))
    edit_manifest(art, lambda m: m["files"].__setitem__("weights.safetensors", sha256_file(art / "weights.safetensors")))


def refused(made, art, *needles):
    root, _ = made
    r = CliRunner().invoke(main, ["eval", "--model", str(art), "--data", str(root / "data"), "--windows", "1"])
    assert r.exit_code == 2, r.output
    for n in needles:
        assert n in r.output, r.output
    return r.output


def test_untouched_artifact_loads(made, tmp_path):
    root, _ = made
    r = CliRunner().invoke(main, ["eval", "--model", str(fresh(made, tmp_path)), "--data", str(root / "data"),
                                  "--windows", "1"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("qp", [[float("nan"), 3], [0.0, 3], [-0.1, 3], [0.01, 300], [1e300, 0], [None, 2]])
def test_bad_activation_qparams(made, tmp_path, qp):
    art = fresh(made, tmp_path)
    edit_manifest(art, lambda m: m["layers"]["top.0"].__setitem__("input_qparams", qp))
    refused(made, art, "layer 'top.0'", "activation")


def test_activation_qparams_other_than_the_input_ranges_are_refused(made, tmp_path):
    """A zero point edited to 0 (or a scale to 1.0) served other numbers with exit 0."""
    art = fresh(made, tmp_path)
    edit_manifest(art, lambda m: m["layers"]["top.0"]["input_qparams"].__setitem__(1, 0))
    refused(made, art, "layer 'top.0'", "are not those of its input range")


def test_nan_input_range(made, tmp_path):
    art = fresh(made, tmp_path)
    edit_manifest(art, lambda m: m["layers"]["bottom.0"].__setitem__("input_range", [float("nan"), 1.0]))
    refused(made, art, "layer 'bottom.0'", "input range")


@pytest.mark.parametrize("precision,key", [(Precision.FP32, "tables.t0"), (Precision.FP16, "tables.t1"),
                                           (Precision.INT4, "tables.t2"), (Precision.FP32, "layers.top.1.weight"),
                                           (Precision.INT8, "layers.bottom.0.bias")])
def test_nan_weights(made, tmp_path, precision, key):
    art = fresh(made, tmp_path, precision)

    def poison(t):
        x = t[key]
        if x.dtype == torch.uint8:  # a table: the row's first value, or an int row's fp16 scale
            dtype = torch.float32 if precision is Precision.FP32 else torch.float16
            nan = torch.tensor([float("nan")], dtype=dtype).view(torch.uint8)
            x[3, : nan.numel()] = nan
        else:
            x.view(-1)[0] = float("nan")
    edit_weights(art, poison)
    refused(made, art, "NaN or infinite", key.split(".")[1] if key.startswith("tables") else "layer")


def test_rows_and_dims_that_disagree_with_the_weights(made, tmp_path):
    art = fresh(made, tmp_path)
    edit_manifest(art, lambda m: m["physical_tables"][0].__setitem__("rows", 49))
    refused(made, art, "table 't0'", "49 rows")
    art = fresh(made, tmp_path)
    edit_manifest(art, lambda m: m["physical_tables"][1].__setitem__("dim", 12))
    refused(made, art, "physical table 't1'")
    art = fresh(made, tmp_path)
    edit_manifest(art, lambda m: m["tables"][2].__setitem__("rows", 9))
    refused(made, art, "table 't2'")
    art = fresh(made, tmp_path)
    edit_weights(art, lambda t: t.__setitem__("layers.top.0.weight", t["layers.top.0.weight"][:, :-1].clone()))
    refused(made, art, "layer 'top.0'", "shape")


@pytest.mark.parametrize("name", ["../secret.txt", "../missing.txt", "/etc/passwd", "/nonexistent", "sub/../../x", "..",
                                  "C:/x", "a\\..\\..\\x"])
def test_file_names_outside_the_artifact_refused_without_revealing_existence(made, tmp_path, name):
    art = fresh(made, tmp_path)
    (tmp_path / "secret.txt").write_text("not yours")
    edit_manifest(art, lambda m: m["files"].__setitem__(name, "0" * 64))
    out = refused(made, art, "not a relative path inside the artifact")
    # the same words whether or not the file exists (it is never opened)
    assert "missing (listed" not in out and "sha256 does not match" not in out


def test_corrupt_precision_strings(made, tmp_path):
    for edit in (lambda m: m["physical_tables"][0].__setitem__("precision", "int3"),
                 lambda m: m["layers"]["top.0"].__setitem__("precision", 7),
                 lambda m: m["tables"][1].__setitem__("precision", None)):
        art = fresh(made, tmp_path)
        edit_manifest(art, edit)
        refused(made, art, "unknown precision")


@pytest.mark.parametrize("lo,hi", [(-1e300, 1.0), (0.0, 1e300), (float("nan"), 1.0), (0.0, float("inf"))])
def test_calibration_ranges_refused_at_convert(made, tmp_path, lo, hi):
    root, _ = made
    calib = json.loads((root / "calib.json").read_text())
    calib["layers"]["top.0"]["min"], calib["layers"]["top.0"]["max"] = lo, hi
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(calib))
    for side in root.glob("calib.counts*.safetensors"):  # the row counts beside it, by the name calib.json gives
        (tmp_path / side.name).write_bytes(side.read_bytes())
    r = CliRunner().invoke(main, ["convert", "--model", str(root / "model"), "--precision", "int8",
                                  "--layer-precision", "int8", "--calibration", str(path), "--out", str(tmp_path / "a")])
    # NaN/inf are refused when calib.json is read, +-1e300 when the layer is encoded: both name the layer
    assert r.exit_code == 2 and "layer 'top.0'" in r.output, r.output
    assert "calibration range" in r.output or "finite numbers" in r.output, r.output
    assert not (tmp_path / "a").exists()
    with pytest.raises(InputError):
        load_artifact(tmp_path / "a")


# -- plans that keep every row; convert commits only what its loader accepts (QA 2, item 1)

def _plan(tables, layers=None):
    return Plan.from_json({"format": "lowprec-plan", "version": 1, "tables": tables, "layers": layers or {}},
                          "PLAN.json")


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("sharing, served", [
    ({"kind": "hot", "ratio": 1}, None),    # ceil(8 / 1) >= 8: every row kept
    ({"kind": "hot", "ratio": 1.1}, None),  # ceil(8 / 1.1) = 8
    ({"kind": "tiered", "tiers": [[1, "fp16"]]}, "tiered"),  # the cold tier is empty
    ({"kind": "tiered", "tiers": [[0.999999999999, "fp16"]], "order": "rank"}, "tiered"),
    ({"kind": "tiered", "tiers": [[0.5, "fp16"], [0.5, "int8"]]}, "tiered"),
])
def test_sharing_that_keeps_every_row_converts_to_an_artifact_that_loads(made, tmp_path, sharing, served):
    """Each of these wrote (exit 0) an artifact every loader refused, replacing the one at --out."""
    root, calib = made
    out = fresh(made, tmp_path)  # a good artifact at --out
    with pytest.warns(UserWarning, match="'t2'"):
        m = convert(root / "model", _plan({"t2": {"precision": "int4", "sharing": sharing}, "*": {"precision": "int8"}}),
                    out, calib)
    table = next(t for t in m["tables"] if t["name"] == "t2")
    assert (table["sharing"] or {}).get("kind") == served  # the manifest says what is served
    runtime, _ = load_artifact(out)
    assert _cli("inspect", out).exit_code == 0
    r = _cli("eval", "--model", out, "--data", root / "data", "--windows", "1")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("table, sharing, said", [
    ("t2", {"kind": "tiered", "tiers": [[0.01, "fp16"]]},  # 0.08 of 8 rows: 0
     r"'t2': tier 0 \(share 0.01, fp16\) holds none of its 8 rows .*rank directory .*plain int4 table"),
    ("t0", {"kind": "tiered", "tiers": [[0.5, "fp16"], [0.001, "int8"]]},  # 25 rows, then 25.05 -> 25: 0
     r"'t0': tier 1 \(share 0.001, int8\) holds none of its 50 rows .*drop the empty tier"),
    ("t2", {"kind": "tiered", "tiers": [[0.01, "fp16"]], "order": "rank"},
     r"'t2': tier 0 .*holds none of its 8 rows .*rank map \(4 bytes a row\) for nothing"),
])
def test_an_empty_upper_tier_is_said_like_an_empty_cold_tier(made, tmp_path, table, sharing, said):
    """QA 3b item 2: a tier whose share rounds to 0 rows was converted silently, though its table pays
    an id map for it (an empty cold tier was already said)."""
    root, calib = made
    with pytest.warns(UserWarning, match=said):
        convert(root / "model", _plan({table: {"precision": "int4", "sharing": sharing}, "*": {"precision": "int8"}}),
                tmp_path / "a", calib)
    load_artifact(tmp_path / "a")


def test_tiers_that_store_more_than_fp32_are_said(made, tmp_path):
    """QA 3b item 3: 999 tiers of 0.001 made a table larger than at fp32 (each id-order tier pays a
    rank directory) with no word; t0 (50 rows of 16) in 9 fp32 tiers of 5 rows over an fp32 cold
    tier was said at convert. Such a plan is refused when read now (QA 7 item 2: each tier must be
    more precise than the next colder one), which bounds a table's tiers by its precisions."""
    root, calib = made
    sharing = {"kind": "tiered", "tiers": [[0.1, "fp32"]] * 9}
    with pytest.raises(InputError, match=r"'t0': tier 0 \(fp32\) is as precise as tier 1 \(fp32\)"):
        _plan({"t0": {"precision": "fp32", "sharing": sharing}, "*": {"precision": "int8"}})
    # a layout the rule takes can still store more than fp32: nearly every row at fp32 plus a rank map
    ranked = {"kind": "tiered", "tiers": [[0.98, "fp32"]], "order": "rank"}
    with pytest.warns(UserWarning, match=r"'t0': with .* it stores [\d,]+ bytes, more than the same table at fp32 "
                                         r"\(3,200 bytes\)"):
        m = convert(root / "model", _plan({"t0": {"precision": "int2", "sharing": ranked}, "*": {"precision": "int8"}}),
                    tmp_path / "a", calib)
    assert next(t for t in m["tables"] if t["name"] == "t0")["bytes"] > 3200
    with warnings.catch_warnings():  # a few tiers that save memory say nothing
        warnings.simplefilter("error")
        convert(root / "model", _plan({"t0": {"precision": "int4", "sharing": {"kind": "tiered", "tiers": [[0.1, "fp16"]]}},
                                       "*": {"precision": "int8"}}), tmp_path / "b", calib)


def test_a_non_finite_hot_ratio_is_refused_when_the_plan_is_read():
    with pytest.raises(InputError, match=r"PLAN.json: table 't2': .*finite ratio"):
        _plan({"t2": {"precision": "int4", "sharing": {"kind": "hot", "ratio": float("inf")}}})


def test_convert_refuses_what_its_own_loader_would_refuse_and_keeps_out(made, tmp_path, monkeypatch):
    """The loader's checks run on the temporary artifact before it replaces --out: a disagreement is
    exit 2 naming the plan, never the temporary path, and the artifact at --out stays as it was."""
    import lowprec.checkpoint.validate as validate

    root, _ = made
    out = fresh(made, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1, "tables": {"*": {"precision": "int4"}}}))

    def refuse(manifest, where):
        raise InputError(f"{where}: table 't1': injected refusal")
    monkeypatch.setattr(validate, "_check_summary", refuse)  # what validate_manifest runs last
    for export in ([], ["--export", "torchscript"]):
        r = _cli("convert", "--model", root / "model", "--plan", plan, "--out", out, *export)
        assert r.exit_code == 2, r.output
        assert str(plan) in r.output and "table 't1': injected refusal" in r.output, r.output
        assert ".tmp" not in r.output, r.output
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- hand edits of the serving wiring, the layers' qparams and the stored tensors (QA 2, items 2, 4, 5)

@pytest.fixture(scope="module")
def mixed(made, tmp_path_factory):
    """int8 static layers; t0 hot-shared, t1 tiered by id (rank directories), t2 tiered by rank."""
    root, calib = made
    out = tmp_path_factory.mktemp("mixed") / "art"
    convert(root / "model", _plan({
        "t0": {"precision": "int4", "sharing": {"kind": "hot", "ratio": 4}},
        "t1": {"precision": "int4", "sharing": {"kind": "tiered", "tiers": [[0.2, "fp16"], [0.3, "int8"]]}},
        "t2": {"precision": "int4", "sharing": {"kind": "tiered", "tiers": [[0.25, "fp16"]], "order": "rank"}}},
        {"*": {"precision": "int8"}}), out, calib)
    return out


def _feats(m, kind, rank=None):
    return [f["transform"] for f in m["features"] if f["transform"]["kind"] == kind
            and (rank is None or ("rank" in f["transform"]) == rank)]


def _bounds(m):
    for t in _feats(m, "tier", rank=True):
        t["bounds"][1] += 1


def _serving(m, name):
    return next(s for s in m["serving"] if s["name"] == name)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["features"][0].__setitem__("table", m["features"][1]["table"]), "is read by no feature"),
    (lambda m: _feats(m, "hot_hash")[0].__setitem__("buckets", 10 ** 6), "'hot_hash' of table 't0' addresses"),
    (_bounds, "'tier' of table 't2' addresses"),
    (lambda m: _feats(m, "tier", rank=False)[0].__setitem__("tier", 1), "not distinct tiers"),
    (lambda m: _feats(m, "tier", rank=False)[1].__setitem__("tier", 0), "not distinct tiers"),
    (lambda m: [t["buffers"].reverse() for t in _feats(m, "tier", rank=False)], "tier 0 holds"),
    (lambda m: _serving(m, "t1")["groups"].append(_serving(m, "t1")["groups"][-1]), "listed twice"),
    (lambda m: _serving(m, "t1").__setitem__("groups", [sum(_serving(m, "t1")["groups"], [])]), "wide"),
    (lambda m: m["serving"][0].__setitem__("groups", m["serving"][1]["groups"]), "listed twice"),
    (lambda m: m["layers"]["top.0"].__setitem__("input_qparams", None), "layer 'top.0'"),
    (lambda m: m["layers"]["top.0"].pop("input_qparams"), "layer 'top.0'"),
])
def test_hand_edited_serving_is_refused_by_inspect_and_the_loader(made, mixed, tmp_path, edit, words):
    """Each edit passed `inspect`; the loader then crashed in FBGEMM (exit 4), or served other scores."""
    import shutil

    art = tmp_path / "art"
    shutil.copytree(mixed, art)
    assert _cli("inspect", art).exit_code == 0
    edit_manifest(art, edit)
    for verify in ([], ["--no-verify"]):
        r = _cli("inspect", art, *verify)
        assert r.exit_code == 2 and words in r.output and "manifest.json" in r.output, r.output
    refused(made, art, words, "manifest.json")


def test_a_missing_table_tensor_is_refused_by_inspect(made, tmp_path):
    art = fresh(made, tmp_path)
    edit_weights(art, lambda t: t.pop("tables.t0"))
    for verify in ([], ["--no-verify"]):
        r = _cli("inspect", art, *verify)
        assert r.exit_code == 2 and "no tensor 'tables.t0'" in r.output, r.output
    refused(made, art, "no tensor 'tables.t0'")


def _dup_first(t, key):
    t[key][1] = t[key][0]


def _negate_first(t, key):
    t[key][0] = -5


def _past_the_end(t, key):
    t[key][-1] = 2 ** 31 - 1


@pytest.mark.parametrize("key", ["buffers.t0.hot_ids", "buffers.t2.rank"])
@pytest.mark.parametrize("edit", [_dup_first, _negate_first, _past_the_end])
def test_re_signed_hot_ids_and_rank_maps_that_would_serve_other_rows_are_refused(made, mixed, tmp_path, key, edit):
    """A hot-id list edited to hold a duplicate, a negative or a past-the-end id, or a rank map that
    gives two ids one rank, with the manifest's sha256 updated: each loaded and served other rows'
    numbers (QA 3b, item 1); now inspect and the loader refuse it, naming the buffer."""
    import shutil

    art = tmp_path / "art"
    shutil.copytree(mixed, art)
    assert key in load_file(str(art / "weights.safetensors"))
    edit_weights(art, lambda t: edit(t, key))
    name = key.removeprefix("buffers.")
    r = _cli("inspect", art)
    assert r.exit_code == 2 and name in r.output and "manifest.json" in r.output, r.output
    refused(made, art, name)
