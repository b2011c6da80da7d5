"""`lowprec convert`, `lowprec inspect`, `lowprec compare`."""

from __future__ import annotations


import click

from lowprec.cli import emit_json, say_warning
from lowprec.cli._common import data_option, fmt, json_option, progress_bar, smaller


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Float model directory.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Plan JSON (from `lowprec search`).")
@click.option("--precision", help="Shortcut: one precision (fp32|fp16|fp8|int8|int4|int2) for every table.")
@click.option("--layer-precision", help="With --precision: one precision (fp32|fp16|int8) for every MLP layer (default fp32).")
@click.option("--range-method", type=click.Choice(["minmax", "l2"]), default="minmax", show_default=True,
              help="With --precision: row range of integer tables (min/max or L2-optimal clipping).")
@click.option("--calibration", "calib_path", type=click.Path(dir_okay=False), help="CALIB.json from `lowprec calibrate`.")
@click.option("--out", required=True, type=click.Path(), help="Artifact directory to write (atomically).")
@click.option("--export", type=click.Choice(["torchscript", "torchrec"]), multiple=True,
              help="Also write a TorchScript module (every serving form) and/or the files TorchRec's "
                   "quantized EBC + DLRM load (dense tables; docs/torchrec.md). Repeatable.")
@click.option("--allow-calibration-mismatch", is_flag=True,
              help="Use a --calibration measured on another model (refused by default).")
@json_option
def convert(model_dir, plan_path, precision, layer_precision, range_method, calib_path, out, export,
            allow_calibration_mismatch, as_json):
    """Quantize a float model into a verified FBGEMM artifact (weights.safetensors + manifest.json)."""
    from lowprec.checkpoint.convert import convert as run_convert
    from lowprec.checkpoint.float_model import read_float_config
    from lowprec.errors import InputError
    from lowprec.calibrate import load_calibration
    from lowprec.plan import Plan
    from lowprec.precision import Precision

    from lowprec.fileio import claim_output

    if (plan_path is None) == (precision is None):
        raise InputError("give exactly one of --plan PLAN.json or --precision P")
    if plan_path and (layer_precision or range_method != "minmax"):
        raise InputError("--layer-precision and --range-method go with --precision; with --plan the plan sets "
                         "every layer's precision and every table's range method")
    claim_output(out, "artifact", [p for p in (model_dir, plan_path, calib_path) if p])
    if plan_path:
        plan = Plan.load(plan_path)
    else:
        layers = Precision.parse(layer_precision, "--layer-precision") if layer_precision else None
        if layers is not None and layers not in Precision.for_layers():
            raise InputError(f"--layer-precision {layers.value}: layers take "
                             f"{', '.join(p.value for p in Precision.for_layers())}")
        plan = Plan.uniform(Precision.parse(precision, "--precision"), layers, range_method)
    calibration = load_calibration(calib_path) if calib_path else None
    config, _ = read_float_config(model_dir)
    if "torchrec" in export:  # refuse before writing anything
        from lowprec.serve.torchrec_export import check_plan

        check_plan(config, plan, "--export torchrec")
    with progress_bar(len(config.tables), "convert", unit="tables") as update:
        from lowprec.serve.export import add_torchscript

        manifest = run_convert(model_dir, plan, out, calibration, progress=update,
                               allow_calibration_mismatch=allow_calibration_mismatch,
                               finish=add_torchscript if "torchscript" in export else None)
    if "torchrec" in export:
        from lowprec.serve.torchrec_export import export_torchrec

        export_torchrec(out)
    from lowprec.precision import slow_lookup_warnings

    for w in slow_lookup_warnings(_slow_lookups(manifest)):
        say_warning(w)
    if as_json:
        emit_json(_summary(manifest, out))
    else:
        click.echo(f"wrote {out}: tables {_human(manifest['embedding_bytes'])} "
                   f"(fp32 {_human(manifest['fp32_embedding_bytes'])}, "
                   f"{smaller(manifest['compression'])})")


def _summary(manifest: dict, path: str, numbers: dict | None = None) -> dict:
    """What convert --json and inspect show; `numbers` (lowprec.checkpoint.validate.check_summary):
    the bytes and compression recomputed from the stored tensors, shown instead of the manifest's."""
    if numbers is not None:
        manifest = manifest | {k: numbers[k] for k in ("embedding_bytes", "fp32_embedding_bytes", "compression",
                                                      "layer_bytes")}
        manifest["tables"] = [t | {"bytes": numbers["tables"][t["name"]]} for t in manifest["tables"]]
        manifest["physical_tables"] = [t | {"bytes": numbers["physical"][t["key"]]} for t in manifest["physical_tables"]]
    physical = {p["key"]: p for p in manifest["physical_tables"]}
    tables = [{k: t[k] for k in ("name", "rows", "precision", "sharing", "bytes")} |
              {"dim": manifest["model"]["embedding_dim"]} for t in manifest["tables"]]
    readers: dict[str, int] = {}  # physical table -> logical tables reading it (ROBE's one array: all of them)
    for entry in manifest["tables"]:
        for key in entry["physical"]:
            readers[key] = readers.get(key, 0) + 1
    trained = {t["name"]: t.get("embedding", "dense") for t in manifest["model"]["tables"]}
    for t, entry in zip(tables, manifest["tables"]):
        t["embedding"] = trained.get(t["name"], "dense")  # trained sharing (hash/QR/ROBE), beside post-training `sharing`
        t["exact"] = entry.get("exact", True) is not False  # False: a projection of the float table is served
        shared = max(readers[k] for k in entry["physical"])
        if shared > 1:  # its bytes count an array other tables read too
            t["shared_with"] = shared - 1
        if (t["sharing"] or {}).get("kind") == "tiered":  # each tier's own table and precision
            t["tiers"] = [{k: physical[key][k] for k in ("key", "rows", "precision", "bytes")}
                          for key in entry["physical"]]
            if t["sharing"].get("order") == "rank":  # id -> rank, for a feature pipeline that sends ranks
                t["rank_map"] = f"weights.safetensors:buffers.{t['name']}.rank"
    return {
        "artifact": str(path),
        "format_version": manifest["version"],
        "tables": tables,
        "layers": {n: {"precision": v["precision"], "static": v.get("input_qparams") is not None}
                   for n, v in manifest["layers"].items()},
        "embedding_bytes": manifest["embedding_bytes"],
        "fp32_embedding_bytes": manifest["fp32_embedding_bytes"],
        "compression": manifest["compression"],
        "layer_bytes": manifest["layer_bytes"],
        "versions": {k: manifest[k] for k in ("lowprec_version", "torch_version", "fbgemm_version")},
    }


@click.command()
@click.argument("artifact", type=click.Path())
@json_option
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check (faster on huge artifacts).")
def inspect(artifact, as_json, no_verify):
    """Show an artifact's tables (rows, dim, precision, bytes), layers and compression."""
    from pathlib import Path

    from lowprec.checkpoint.artifact import check_loads, read_manifest
    from lowprec.errors import InputError

    from lowprec.serve.shard_plan import load_shard_plan

    manifest = read_manifest(artifact, verify=not no_verify)  # validated as the loader does (layer set, ...)
    numbers = check_loads(Path(artifact), manifest)  # what the loader builds, from the mapping (also with --no-verify)
    try:  # a field of the wrong type is bad input
        s = _summary(manifest, artifact, numbers)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(f"{artifact}/manifest.json: malformed ({exc!r})") from exc
    plan = load_shard_plan(artifact, manifest)
    if plan is not None:
        s["shard_plan"] = plan.to_json()
    _show(s, as_json)
    if plan is not None and not as_json:
        from lowprec.cli.shard import describe_plan

        click.echo(f"shard plan ({plan.world_size} ranks):")
        for line in describe_plan(plan):
            click.echo(f"  {line}")


def _show(s: dict, as_json: bool) -> None:
    if as_json:
        emit_json(s)
        return
    click.echo(f"{'table':<16} {'rows':>10} {'dim':>4} {'precision':>9} {'sharing':>14} {'bytes':>11}")
    notes = set()
    for t in s["tables"]:
        sharing = t["sharing"]["kind"] if t["sharing"] else t["embedding"].partition(":")[0]
        sharing = "-" if sharing == "dense" else sharing + ("*" if not t["exact"] else "")
        shared = f" (+{t['shared_with']})" if t.get("shared_with") else ""
        if not t["exact"]:
            notes.add("*")
        if shared:
            notes.add("+")
        click.echo(f"{t['name']:<16} {t['rows']:>10} {t['dim']:>4} {t['precision']:>9} {sharing:>14} "
                   f"{_human(t['bytes']):>11}{shared}")
        for tier in t.get("tiers", ()):
            click.echo(f"  {tier['key']:<14} {tier['rows']:>10} {'':>4} {tier['precision']:>9} {'':>14} "
                       f"{_human(tier['bytes']):>11}")
    for name, v in s["layers"].items():
        click.echo(f"layer {name:<10} {v['precision']:>5}{' (static)' if v['static'] else ''}")
    if "*" in notes:
        click.echo("* served as an approximation of the float table (post-training sharing, or ROBE trained "
                   "without align=1)")
    if "+" in notes:
        click.echo("(+N) its bytes are an array N other tables read too, counted once in the embedding bytes")
    click.echo(f"embedding bytes {_human(s['embedding_bytes'])}, fp32 {_human(s['fp32_embedding_bytes'])}, "
               f"compression {s['compression']:.2f}x")


@click.command()
@click.option("--reference", required=True, type=click.Path(), help="Float model directory.")
@click.option("--candidate", required=True, type=click.Path(), help="Quantized artifact (or another model).")
@data_option
@click.option("--windows", required=True, help="Windows to compare on: `3`, `0-4`, `5,7,9`, `all` or `label:A..B`.")
@click.option("--threshold-db", default=20.0, show_default=True, help="SQNR below this marks a tap as broken.")
@click.option("--max-rows", default=50_000, show_default=True, type=click.IntRange(min=1),
              help="Rows of the windows run through both models, layer by layer, in whole batches of 4,096: "
                   "stops at the first batch end at or past N.")
@click.option("--allow-unrelated-candidate", is_flag=True,
              help="Compare a candidate artifact not converted from --reference (refused by default).")
@json_option
def compare(reference, candidate, data_dir, windows, threshold_db, max_rows, allow_unrelated_candidate, as_json):
    """Numeric debugger: SQNR of every table and layer output, float vs quantized.

    Runs data-parallel under torchrun (or `lowprec --nproc N compare ...`): same numbers, rank 0 prints."""
    from pathlib import Path

    from lowprec import distributed as dist

    from lowprec.checkpoint.load import load_model, model_kind
    from lowprec.data.dataset import Dataset
    from lowprec.data.windows import select_windows
    from lowprec.checkpoint.float_model import weights_sha256
    from lowprec.provenance import check_converted_from, check_same_float
    from lowprec.debugger import compare as run_compare
    from lowprec.train import check_compatible

    ds = Dataset(data_dir)
    chosen = select_windows(windows, ds.meta)
    ref, ref_cfg, _ = load_model(reference)
    cand, cand_cfg, cand_info = load_model(candidate)
    kinds = (model_kind(reference), model_kind(candidate))
    if not allow_unrelated_candidate and kinds == ("float", "artifact"):
        check_converted_from(reference, weights_sha256(Path(reference)), candidate,
                             cand_info, "--allow-unrelated-candidate")
    elif not allow_unrelated_candidate and kinds == ("float", "float"):  # (as drift: a copy of it is fine)
        check_same_float(reference, weights_sha256(Path(reference)), candidate, weights_sha256(Path(candidate)),
                         "--allow-unrelated-candidate")
    check_compatible(ref_cfg, ds.meta, reference)
    check_compatible(cand_cfg, ds.meta, candidate)
    dist.check_same([reference, candidate, data_dir])
    with progress_bar(max_rows, "compare") as update:
        result = run_compare(ref, cand, ds, chosen, threshold_db, max_rows, progress=update)
    if not dist.is_main():
        return
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"{'tap':<24} {'SQNR dB':>8} {'max |err|':>10}")
    for t in result.taps:
        mark = "  <-- below threshold" if t["name"] == result.first_below else ""
        click.echo(f"{t['name']:<24} {fmt(t['sqnr_db'], 1):>8} {t['max_abs_err']:>10.3g}{mark}")
    click.echo(f"first tap below {threshold_db} dB: {result.first_below or 'none'} ({result.rows} rows)")


COMMANDS = [convert, inspect, compare]


def _slow_lookups(manifest: dict) -> dict:
    """Each logical table -> the slowest-looking-up precision among the physical tables it reads (a
    tier or a shared array at fp8 makes the table's lookups slow): warnings count tables a user named,
    not physical pieces such as `robe.shared`."""
    from lowprec.precision import SLOW_LOOKUP, Precision

    physical = {t["key"]: Precision.parse(t["precision"]) for t in manifest["physical_tables"]}
    out = {}
    for entry in manifest["serving"]:
        used = {physical[manifest["features"][i]["table"]] for g in entry["groups"] for i in g}
        slow = [p for p in SLOW_LOOKUP if p in used]
        if slow:
            out[entry["name"]] = slow[0]
    return out
