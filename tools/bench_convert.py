"""Conversion benchmark: row-wise quantizers side by side, and `lowprec convert` of whole models.

    python tools/bench_convert.py [--rows 500000] [--dim 64] [--model-scales 0.02,0.05,0.1]

1. Quantizers (one table, in one process, interleaved per repeat): FBGEMM's own ops
   (FloatToFused8BitRowwiseQuantized, FloatToFusedNBitRowwiseQuantizedSBHalf), ATen's
   embedding_bag_4bit_prepack without and with its L2-greedy `optimized_qparams` (on the first
   --aten-rows rows only: it runs at ~MB/s) and lowprec's `fused_rows` ('minmax' and the 'l2' range
   search) at 8/4/2 bits. GB/s of fp32 input per repeat, and the reconstruction MSE as the TBE
   would read the bytes (on all rows, and on the first --aten-rows rows that every method saw).
   The methods, the tables and the decoders are tools/bench_quantize.py's (imported, not copied).
2. Peak RSS per quantizer: one subprocess per method runs it once on the same table (VmHWM reset
   to the current RSS once the table exists, so the growth is the quantizer's own: its output and
   temporaries).
3. `lowprec convert` of whole float models (Criteo-Kaggle cardinalities x --model-scales, dim
   --model-dim, random init) to an int4 artifact, one subprocess per conversion, sizes interleaved
   per repeat: GB/s of the fp32 model and peak memory (VmHWM, and sampled peaks of anonymous and
   file-backed resident memory) against the model size and its largest table.
Writes reports/bench_convert.json (see --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
import bench_quantize as bq  # noqa: E402

TOOL = "bench_convert.py"
METHODS = ("fbgemm_int8", "fbgemm_nbit4", "fbgemm_nbit2", "aten_4bit", "aten_4bit_opt",
           "lowprec_minmax8", "lowprec_minmax4", "lowprec_minmax2", "lowprec_l2_8", "lowprec_l2_4", "lowprec_l2_2")
RSS_METHODS = ("fbgemm_int8", "fbgemm_nbit4", "aten_4bit_opt", "lowprec_minmax8", "lowprec_minmax4",
               "lowprec_l2_8", "lowprec_l2_4")


# ---------------------------------------------------------------------------------------------
# 1. quantizers side by side


def quantizers(args: argparse.Namespace) -> dict[str, Any]:
    x = bq.make_table(args.table, args.rows, args.dim)
    small = x[: args.aten_rows].contiguous()
    fns, decoders, inputs = {}, {}, {}
    for name in args.methods:
        inp = small if name == "aten_4bit_opt" else x
        fns[name], decoders[name] = bq.run_method(name, inp)
        inputs[name] = inp
    times = bc.interleaved(fns, args.repeats, warmup=1, min_seconds=0.0, block_seconds=0.0, max_calls=1,
                           rewarm=False)
    out: dict[str, Any] = {}
    for name in args.methods:
        inp = inputs[name]
        err = (decoders[name](fns[name]()) - inp).square_()
        out[name] = {
            "description": bq.METHODS[name][1], "bits": bq.METHODS[name][0], "rows": int(inp.shape[0]),
            "seconds": times[name], "gbs": bc.spread([inp.numel() * 4 / t / 1e9 for t in times[name]]),
            "mse": float(err.mean()), "mse_first_rows": float(err[: args.aten_rows].mean()),
        }
    for name, r in out.items():  # paired speed vs FBGEMM at the same bits, and vs ATen optimized
        bits = r["bits"]
        ref = {8: "fbgemm_int8", 4: "fbgemm_nbit4", 2: "fbgemm_nbit2"}[bits]
        gbs = [inputs[name].numel() * 4 / t for t in times[name]]
        if ref in times:
            gref = [inputs[ref].numel() * 4 / t for t in times[ref]]
            r["speed_vs_fbgemm"] = bc.paired_ratio(gbs, gref)
            r["mse_vs_fbgemm"] = r["mse_first_rows"] / out[ref]["mse_first_rows"]
        if "aten_4bit_opt" in times:
            gopt = [inputs["aten_4bit_opt"].numel() * 4 / t for t in times["aten_4bit_opt"]]
            r["speed_vs_aten_opt"] = bc.paired_ratio(gbs, gopt)
            if bits == 4:
                r["mse_vs_aten_opt"] = r["mse_first_rows"] / out["aten_4bit_opt"]["mse_first_rows"]
        print(f"  {name:16s} {bc.fmt_spread(r['gbs'], 1, 3)} GB/s  mse {r['mse']:.4g}", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------
# 2. peak RSS per quantizer (one process each)


def child_quantize(args: argparse.Namespace) -> dict[str, Any]:
    """One quantizer call on bench_quantize's table, peak RSS growth over the table alone.

    VmHWM is reset to the current RSS once the table exists (/proc/self/clear_refs), so the peak
    counts neither the table's own construction temporaries nor the later error computation."""
    bc.set_threads(args.threads)
    x = bq.make_table(args.table, args.rows, args.dim)
    if args.method == "aten_4bit_opt":
        x = x[: args.aten_rows].contiguous()
    fn, _ = bq.run_method(args.method, x)
    bq.run_method(args.method, x[:64].contiguous())[0]()  # loads the code paths (file-backed pages)
    exact = bc.settle_memory()
    base = bc.vm_status()
    with bc.RssSampler() as sampler:
        out = fn()
    end = bc.vm_status()
    return {"method": args.method, "rows": int(x.shape[0]), "base_mb": base["VmRSS"], "hwm_mb": end["VmHWM"],
            "growth_mb": (end["VmHWM"] if exact else sampler.peaks["VmRSS"]) - base["VmRSS"],
            "anon_growth_mb": sampler.peaks["RssAnon"] - base["RssAnon"], "exact_peak": exact,
            "output_mb": out.numel() * out.element_size() / 2**20, "table_mb": x.numel() * 4 / 2**20}


def quantizer_rss(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for name in args.rss_methods:
        res = bc.run_child([sys.executable, __file__, "--child", "quantize", "--method", name,
                               "--table", args.table, "--rows", str(args.rows), "--dim", str(args.dim),
                               "--aten-rows", str(args.aten_rows), "--threads", str(args.threads)])
        out[name] = res
    return out


# ---------------------------------------------------------------------------------------------
# 3. whole-model conversion


def _model_config(scale: float, dim: int):
    from lowprec.data.synth import DENSE_NAMES, KAGGLE_CARDINALITIES, SPARSE_NAMES
    from lowprec.model.config import DLRMConfig, TableConfig

    tables = tuple(TableConfig(n, max(2, int(round(c * scale)))) for n, c in zip(SPARSE_NAMES, KAGGLE_CARDINALITIES))
    return DLRMConfig(len(DENSE_NAMES), tables, dim, (512, 256, dim), (512, 256), tuple(DENSE_NAMES))


def build_model(scale: float, dim: int, model_dir: Path) -> None:
    """A random-init float DLRM written as `lowprec train` would write it."""
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.model.dlrm import DLRM

    torch.manual_seed(0)
    save_float_model(DLRM(_model_config(scale, dim)), model_dir)


def child_convert(args: argparse.Namespace) -> dict[str, Any]:
    from lowprec.checkpoint.convert import convert
    from lowprec.plan import Plan
    from lowprec.precision import Precision

    bc.set_threads(args.threads)
    bc.settle_memory()  # VmHWM from here on: the work's peak, not the imports'
    base = bc.vm_status()
    plan = Plan.uniform(Precision.parse(args.precision), None, args.range_method)
    with bc.RssSampler() as sampler:
        t0 = time.perf_counter()
        manifest = convert(args.model_dir, plan, args.artifact)
        seconds = time.perf_counter() - t0
    end = bc.vm_status()
    return {"seconds": seconds, "base": base, "end": end, "peaks": sampler.peaks, "hwm": end["VmHWM"],
            "embedding_bytes": manifest["embedding_bytes"], "fp32_embedding_bytes": manifest["fp32_embedding_bytes"]}


def model_conversion(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    sizes = []
    for scale in args.model_scales:
        cfg = _model_config(scale, args.model_dim)
        model_dir = tmp / f"model-{scale}"
        build_model(scale, args.model_dim, model_dir)
        layer_bytes = sum(4 * (i * o + o) for i, o in cfg.layer_shapes().values())
        sizes.append({"scale": scale, "model_dir": model_dir, "rows": sum(t.num_embeddings for t in cfg.tables),
                      "largest_table_rows": max(t.num_embeddings for t in cfg.tables),
                      "model_mb": (sum(t.num_embeddings for t in cfg.tables) * args.model_dim * 4 + layer_bytes) / 2**20,
                      "file_mb": (model_dir / "model.safetensors").stat().st_size / 2**20,
                      "largest_table_mb": max(t.num_embeddings for t in cfg.tables) * args.model_dim * 4 / 2**20,
                      "runs": []})
    for r in range(args.model_repeats):
        for s in (sizes if r % 2 == 0 else sizes[::-1]):
            out = tmp / f"artifact-{s['scale']}-{r}"
            res = bc.run_child([sys.executable, __file__, "--child", "convert", "--model-dir", str(s["model_dir"]),
                                   "--artifact", str(out), "--precision", args.model_precision,
                                   "--range-method", args.model_range_method, "--threads", str(args.threads)])
            s["runs"].append(res)
            for f in out.iterdir():
                f.unlink()
            out.rmdir()
    for s in sizes:
        runs = s.pop("runs")
        s.pop("model_dir")
        s["seconds"] = bc.spread([x["seconds"] for x in runs])
        s["gbs"] = bc.spread([s["model_mb"] * 2**20 / x["seconds"] / 1e9 for x in runs])
        s["hwm_mb"] = bc.spread([x["hwm"] for x in runs])
        s["hwm_growth_mb"] = bc.spread([x["hwm"] - x["base"]["VmRSS"] for x in runs])
        s["anon_growth_mb"] = bc.spread([x["peaks"]["RssAnon"] - x["base"]["RssAnon"] for x in runs])
        s["file_peak_mb"] = bc.spread([x["peaks"]["RssFile"] - x["base"]["RssFile"] for x in runs])
        s["base_mb"] = runs[0]["base"]["VmRSS"]
        s["artifact_mb"] = runs[0]["embedding_bytes"] / 2**20
        print(f"  convert scale {s['scale']}: {s['model_mb']:.0f} MB model, {bc.fmt_spread(s['gbs'], 1, 2)} GB/s, "
              f"anon growth {s['anon_growth_mb']['median']:.0f} MB (largest table {s['largest_table_mb']:.0f} MB)",
              file=sys.stderr)
    return sizes


# ---------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--table", choices=bq.TABLES, default="heavy",
                   help="bench_quantize's table kind (heavy: Student-t(3) x log-normal row scale, trained-like)")
    p.add_argument("--aten-rows", type=int, default=20_000)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rss-methods", default=",".join(RSS_METHODS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model-scales", default="0.02,0.05,0.1")
    p.add_argument("--model-dim", type=int, default=64)
    p.add_argument("--model-precision", default="int4")
    p.add_argument("--model-range-method", default="minmax", choices=("minmax", "l2"))
    p.add_argument("--model-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=str(bc.REPORTS / "bench_convert.json"))
    # child modes
    p.add_argument("--child", choices=("convert", "quantize"), help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--artifact", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--range-method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.rows, args.dim, args.aten_rows, args.repeats = 2000, 16, 200, 2
        args.rss_methods, args.model_scales, args.model_dim, args.model_repeats = "lowprec_l2_4", "0.0005", 16, 1
    args.methods = [m for m in args.methods.split(",") if m]
    args.rss_methods = [m for m in args.rss_methods.split(",") if m]
    args.model_scales = [float(x) for x in str(args.model_scales).split(",") if x]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        res = child_convert(args) if args.child == "convert" else child_quantize(args)
        print(json.dumps(res))
        return res
    threads = bc.set_threads(args.threads)
    result: dict[str, Any] = {
        "tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
        "settings": {k: v for k, v in vars(args).items() if k != "out" and v is not None},
    }
    result["quantizers"] = quantizers(args)
    result["quantizer_rss"] = quantizer_rss(args)
    with tempfile.TemporaryDirectory(prefix="lowprec-bench-convert-") as tmp:
        result["models"] = model_conversion(args, Path(tmp))
    bc.write_json(args.out, result)
    return result


# ---------------------------------------------------------------------------------------------
# report


def figures(result: dict[str, Any], out_dir: Path) -> list[str]:
    plt = bc.plt()
    q = result["quantizers"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(q)
    med = [q[n]["gbs"]["median"] for n in names]
    err = [[m - q[n]["gbs"]["min"] for m, n in zip(med, names)], [q[n]["gbs"]["max"] - m for m, n in zip(med, names)]]
    a1.bar(range(len(names)), med, yerr=err, capsize=2, color=["C0" if n.startswith("fbgemm") else "C1" if n.startswith("aten") else "C2" for n in names])
    a1.set_yscale("log")
    a1.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    a1.set_ylabel("GB/s of fp32 input (log)")
    a1.set_title("Row-wise quantizers: throughput")
    four = [n for n in names if q[n]["bits"] == 4]
    a2.bar(range(len(four)), [q[n]["mse_first_rows"] for n in four])
    a2.set_xticks(range(len(four)), four, rotation=45, ha="right", fontsize=7)
    a2.set_ylabel(f"int4 MSE (first {result['settings']['aten_rows']:,} rows)")
    a2.set_title("int4 reconstruction error")
    fig.tight_layout()
    fig.savefig(out_dir / "bench_convert_quantizers.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    m = result["models"]
    x = [s["model_mb"] for s in m]
    ax.plot(x, x, "k--", lw=1, label="model size (fp32)")
    ax.plot(x, [2 * v for v in x], "k:", lw=1, label="2 x model")
    ax.plot(x, [s["largest_table_mb"] for s in m], "C1-o", label="largest table (fp32)")
    ax.plot(x, [s["anon_growth_mb"]["median"] for s in m], "C2-s", label="convert: peak anon growth")
    ax.plot(x, [s["hwm_growth_mb"]["median"] for s in m], "C3-^", label="convert: peak RSS growth (VmHWM)")
    ax.set_xlabel("float model size, MB")
    ax.set_ylabel("MB")
    ax.set_title("lowprec convert: memory vs model size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "bench_convert_memory.png", dpi=110)
    plt.close(fig)
    return ["bench_convert_quantizers.png", "bench_convert_memory.png"]


def render(result: dict[str, Any], out_dir: Path) -> list[str]:
    figs = figures(result, out_dir)
    s, q, rss = result["settings"], result["quantizers"], result["quantizer_rss"]
    md = ["## b. Conversion: row-wise quantizers and whole-model `lowprec convert`", "",
          f"Quantizers on one {s['rows']:,} x {s['dim']} fp32 table ({s['table']} values: "
          f"`tools/bench_quantize.py`'s table, methods and decoders), ATen's optimized prepack on the "
          f"first {s['aten_rows']:,} rows; {s['repeats']} interleaved repeats after one warm-up call. "
          "Speed ratios are paired per repeat, median [min-max]; MSE ratios are on the rows every "
          "method saw. Peak RSS: one process per method, VmHWM (peak resident set) and its growth over "
          f"the process holding the {s['rows'] * s['dim'] * 4 / 2**20:.0f} MB float table (peak reset once the "
          "table exists: the growth is the quantizer's output plus its temporaries).", ""]
    rows = []
    for n, r in q.items():
        rr = rss.get(n)
        rows.append([r["description"], r["bits"], f"{r['rows']:,}", bc.fmt_spread(r["gbs"], 1, 3),
                     bc.fmt_ratio(r["speed_vs_fbgemm"]) if "speed_vs_fbgemm" in r else "",
                     bc.fmt_ratio(r["speed_vs_aten_opt"], 0) if "speed_vs_aten_opt" in r else "",
                     f"{r['mse']:.4g}", f"{r['mse_vs_fbgemm']:.3f}" if "mse_vs_fbgemm" in r else "",
                     f"{r['mse_vs_aten_opt']:.3f}" if "mse_vs_aten_opt" in r else "",
                     f"{rr['hwm_mb']:.0f} (+{rr['growth_mb']:.0f}, output {rr['output_mb']:.0f})" if rr else "not measured"])
    md += bc.md_table(["method", "bits", "rows", "GB/s fp32 in", "speed vs FBGEMM same bits",
                       "speed vs ATen optimized", "MSE", "MSE vs FBGEMM", "MSE vs ATen opt",
                       "peak RSS MB (+growth, of which output)"], rows)
    md += [f"![quantizers]({figs[0]})", ""]
    m = result["models"]
    md += [f"**Whole-model `lowprec convert`** to {s['model_precision']} ({s['model_range_method']} ranges), "
           f"float DLRMs of the Kaggle cardinalities x scale at dim {s['model_dim']} (random init), "
           f"one process per conversion, {s['model_repeats']} repeats with the sizes interleaved. "
           "Peak memory growth over the process after imports: VmHWM (includes pages of the "
           "memory-mapped model file that were read), and the sampled peak of anonymous memory "
           "(what convert allocates):", ""]
    rows = [[s_["scale"], f"{s_['rows']:,}", f"{s_['model_mb']:.0f}", f"{s_['largest_table_mb']:.0f}",
             bc.fmt_spread(s_["seconds"], 1, 2), bc.fmt_spread(s_["gbs"], 1, 3),
             bc.fmt_spread(s_["anon_growth_mb"], 1, 0), bc.fmt_spread(s_["hwm_growth_mb"], 1, 0),
             f"{s_['anon_growth_mb']['median'] / s_['model_mb']:.2f}",
             f"{s_['anon_growth_mb']['median'] / s_['largest_table_mb']:.2f}",
             f"{s_['artifact_mb']:.0f}"] for s_ in m]
    md += bc.md_table(["scale", "rows", "model MB (fp32)", "largest table MB", "seconds", "GB/s of model",
                       "peak anon growth MB", "peak RSS growth MB", "anon growth / model",
                       "anon growth / largest table", "artifact tables MB"], rows)
    md += [f"![convert memory]({figs[1]})", ""]
    md += meaning(result)
    return md


def meaning(result: dict[str, Any]) -> list[str]:
    q, m = result["quantizers"], result["models"]
    md = ["**What it means.**", ""]
    if {"lowprec_l2_4", "aten_4bit_opt", "fbgemm_nbit4"} <= set(q):
        l2 = q["lowprec_l2_4"]
        md.append(f"- Range search: lowprec's int4 L2 search reaches {l2['mse_vs_aten_opt']:.3f}x the error of ATen's "
                  f"greedy `optimized_qparams` ({l2['mse_vs_fbgemm']:.3f}x FBGEMM's min/max) at "
                  f"{l2['speed_vs_aten_opt']['median']:.0f}x its speed. It is still "
                  f"{1 / l2['speed_vs_fbgemm']['median']:.0f}x slower than FBGEMM's min/max op: a one-time cost of "
                  f"~{1 / l2['gbs']['median']:.0f} s per GB of fp32 table, paid by `lowprec convert`, not at serving time.")
    mm = [k for k in ("lowprec_minmax8", "lowprec_minmax4", "lowprec_minmax2") if k in q and "speed_vs_fbgemm" in q[k]]
    if mm:
        sp = [q[k]["speed_vs_fbgemm"]["median"] for k in mm]
        md.append(f"- lowprec's min/max path writes the same codes as FBGEMM's ops (MSE ratio 1.000; bit-exact in "
                  f"tests/quant) at {min(sp):.2f}-{max(sp):.2f}x their speed: calling FBGEMM's op and moving "
                  "(scale, bias) to the row front would make min/max conversion several times faster.")
    if m:
        big = m[-1]
        md.append(f"- Whole-model convert: peak anonymous memory is "
                  f"{big['anon_growth_mb']['median'] / big['largest_table_mb']:.2f}x the largest table "
                  f"({big['anon_growth_mb']['median'] / big['model_mb']:.2f}x the model at the largest size): convert "
                  "streams table by table. Before commit e488c9c it was 2.7x the largest table: the table module "
                  "was built with a random init before the checkpoint was copied in, the NaN check built a full "
                  "mask, and the writer copied rows into a bytes object; now the module is built on the meta "
                  "device and loaded with `assign=True`, the check runs in row chunks and the spool writes the "
                  "tensor's buffer. Peak RSS (VmHWM) is higher because it counts the pages of the memory-mapped "
                  f"model.safetensors that were read (file-backed, ~{big['file_peak_mb']['median']:.0f} MB at the "
                  f"largest size, reclaimable by the kernel). Throughput is {bc.fmt_spread(big['gbs'], 1, 2)} GB/s of "
                  "model, including hashing the model and the artifact.")
    return md + [""]


if __name__ == "__main__":
    main()
