"""Benchmark row-wise embedding quantizers: throughput, reconstruction error and peak memory.

Owns the side-by-side comparison behind reports/quantize.md: FBGEMM's own quantize ops, ATen's
embedding_bag_4bit_prepack (with and without its L2-greedy `optimized_qparams`) and lowprec's
`fused_rows` (min/max and L2 search) at 8/4/2 bits, and the fp16 and fp8 table handlers
(`lowprec.serve.tables.table_codec`), on a Gaussian table and a trained-like heavy-tailed one
(Student-t(3) values times a log-normal per-row scale). A second, errors-only sweep compares every
table precision (fp32, fp16, fp8, int8, int4, int2, min/max) on Gaussian tables of decreasing
magnitude: fp8 has no per-row scale, so its error depends on the values' size, the others' does not.

Measured per method, each in its own subprocess (so peak RSS is its own):
  GB/s   = fp32 input bytes / wall seconds per call (median of --repeats, after one warm-up call)
  MSE    = mean (x_hat - x)^2, x_hat decoded the way the inference TBE reads the bytes
  RSS    = VmHWM (peak resident set) of the process, and its growth over the table alone
The slow ATen optimized path runs on the first --aten-rows rows only (normalised to GB/s); every
method's MSE is also reported on those same rows, so error ratios compare like with like.

Usage: .venv/bin/python tools/bench_quantize.py [--rows 1000000] [--dim 64] [--out reports/quantize.md]
       .venv/bin/python tools/bench_quantize.py --precisions-only --out reports/quantize.md   # only the
           table-precision error sweep (seconds): replaces its marked block in the report
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _table_precisions import precision_errors, precisions_md, replace_block  # noqa: E402

# name -> (bits, description); the worker knows how to run and decode each
METHODS = {
    "fbgemm_int8": (8, "fbgemm FloatToFused8BitRowwiseQuantized"),
    "fbgemm_nbit8": (8, "fbgemm FloatToFusedNBitRowwiseQuantizedSBHalf(8)"),
    "fbgemm_nbit4": (4, "fbgemm FloatToFusedNBitRowwiseQuantizedSBHalf(4)"),
    "fbgemm_nbit2": (2, "fbgemm FloatToFusedNBitRowwiseQuantizedSBHalf(2)"),
    "aten_4bit": (4, "ATen embedding_bag_4bit_prepack(optimized_qparams=False)"),
    "aten_4bit_opt": (4, "ATen embedding_bag_4bit_prepack(optimized_qparams=True)"),
    "lowprec_minmax8": (8, "lowprec fused_rows(bits=8, 'minmax')"),
    "lowprec_minmax4": (4, "lowprec fused_rows(bits=4, 'minmax')"),
    "lowprec_minmax2": (2, "lowprec fused_rows(bits=2, 'minmax')"),
    "lowprec_l2_8": (8, "lowprec fused_rows(bits=8, 'l2')"),
    "lowprec_l2_4": (4, "lowprec fused_rows(bits=4, 'l2')"),
    "lowprec_l2_2": (2, "lowprec fused_rows(bits=2, 'l2')"),
    "lowprec_l2_4_1t": (4, "lowprec fused_rows(bits=4, 'l2'), 1 thread"),
    "lowprec_fp16": (16, "lowprec table_codec(fp16)"),
    "lowprec_fp8": (8, "lowprec table_codec(fp8): HFP8 1-4-3, bias 7, no scale"),
}
TABLES = ("gauss", "heavy")
NOTES = [
    "- Bytes: every lowprec row is what `IntNBitTableBatchedEmbeddingBagsCodegen` reads: "
    "`[fp16 scale | fp16 bias | codes]`, codes packed low bits first, rows unpadded on CPU "
    "(row_alignment 1; 16 on CUDA). FBGEMM's ops write `[codes | scale | bias]`; lowprec min/max "
    "equals them byte for byte after moving (scale, bias) to the front "
    "(tests/quant/test_rowwise.py). x_hat = code * scale + bias.",
    "- int8 min/max follows FBGEMM's own TBE recipe (`fbgemm_gpu.tbe.utils.quantize.quantize_embs`): "
    "FloatToFused8BitRowwiseQuantized codes (from fp32 scale/bias), scale/bias cast to fp16. "
    "FloatToFusedNBitRowwiseQuantizedSBHalf(8) instead rounds scale/bias to fp16 before coding "
    "(its row shows the difference).",
    "- fp16 and fp8 rows go through the table handlers the converter uses (`table_codec(P).encode`, "
    "decoded with `.decode`, which is what the TBE's lookup returns); 'vs min/max' compares fp8 with "
    "int8 min/max (the same 8 bits a value; int8 adds 4 bytes of scale/bias per row).",
    "- lowprec l2: per row, the best of a small grid of clipping ranges [min + aR, max - cR], then two "
    "over-relaxed least-squares (Lloyd) steps on (scale, bias), all with the fp16 values stored; "
    "near-ties with min/max re-scored exactly, so no row is worse than min/max. See "
    "`lowprec/quant/range_search.py`.",
    "- ATen's optimized path is a greedy L2 walk (200 bins, up to 16% of the range) run "
    "row by row in one thread; lowprec uses torch's intra-op threads (the 1-thread row is the "
    "like-for-like comparison). At these table sizes (>= 2**25 values) the l2 search runs its "
    "error passes through torch.compile (backend 'auto'); the one-off compile happens in the "
    "untimed warm-up call and is part of the RSS growth. The machine is shared with other "
    "jobs (load average above): wall-clock numbers move with the load, MB per CPU-second much less.",
]


def make_table(kind: str, rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """gauss: N(0, 1). heavy: Student-t(3) * exp(N(0, 0.5^2)) per-row scale * 0.05 (trained-like)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(rows, dim)
    for i in range(0, rows, 65536):  # in chunks, so generating never peaks above the table
        part = out[i : i + 65536]
        torch.randn(part.shape, generator=g, out=part)
        if kind == "heavy":
            chi2 = sum(torch.randn(part.shape, generator=g).square_() for _ in range(3)) / 3
            part.div_(chi2.sqrt_()).mul_(torch.randn(part.shape[0], 1, generator=g).mul_(0.5).exp_()).mul_(0.05)
    return out


def decode_codes_last(out: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Rows laid out [codes | fp16 scale | fp16 bias] (FBGEMM NBit ops and ATen prepack)."""
    nbytes = dim * bits // 8
    sb = out[:, nbytes : nbytes + 4].contiguous().view(torch.float16).float()
    per = 8 // bits
    codes = torch.stack([(out[:, :nbytes] >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], -1)
    return codes.reshape(out.shape[0], dim).float() * sb[:, :1] + sb[:, 1:]


def run_method(name: str, x: torch.Tensor):
    """(callable producing the bytes, decoder bytes -> float32 as the TBE would read them)."""
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    from lowprec.quant.rowwise import fused_rows, fused_to_float

    bits, dim = METHODS[name][0], x.shape[1]
    if name == "fbgemm_int8":  # TBE recipe: fp32 scale/bias cast to fp16 (fbgemm_gpu quantize_embs)
        def dec8(o):
            sb = o[:, dim:].contiguous().view(torch.float32).half().float()
            return o[:, :dim].float() * sb[:, :1] + sb[:, 1:]
        return (lambda: torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(x)), dec8
    if name.startswith("fbgemm_nbit"):
        return (lambda: torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(x, bits)), (
            lambda o: decode_codes_last(o, bits, dim))
    if name.startswith("aten_4bit"):
        opt = name.endswith("opt")
        return (lambda: torch.ops.quantized.embedding_bag_4bit_prepack(x, opt)), (
            lambda o: decode_codes_last(o, 4, dim))
    if name in ("lowprec_fp16", "lowprec_fp8"):
        from lowprec.precision import Precision
        from lowprec.serve.tables import table_codec

        codec = table_codec(Precision(name.removeprefix("lowprec_")))
        return (lambda: codec.encode(x)), (lambda o: codec.decode(o, dim))
    method = "l2" if "_l2_" in name else "minmax"  # lowprec_l2_4_1t: same call, 1 torch thread
    return (lambda: fused_rows(x, bits, method)), (lambda o: fused_to_float(o, bits, dim))


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """Run one method on one table in this process; print one JSON line."""
    if args.threads or args.method.endswith("_1t"):
        torch.set_num_threads(1 if args.method.endswith("_1t") else args.threads)
    rows = args.aten_rows if args.method == "aten_4bit_opt" else args.rows
    x = make_table(args.table, args.rows, args.dim)[:rows].contiguous()
    fn, decode = run_method(args.method, x)
    base_hwm = vm_hwm_mb()
    out = fn()  # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    hwm = vm_hwm_mb()  # before decoding for the MSE, which needs two more tables' worth
    err = (decode(out) - x).square_()
    gbs = [x.numel() * 4 / t / 1e9 for t in times]
    print(json.dumps({
        "method": args.method, "table": args.table, "rows": rows, "gbs": gbs,
        "gb_per_cpu_s": statistics.median(x.numel() * 4 / c / 1e9 for c in cpu),
        "mse": err.mean().item(), "mse_shared": err[: args.aten_rows].mean().item(),
        "hwm_mb": hwm, "hwm_growth_mb": hwm - base_hwm,
        "threads": torch.get_num_threads(),
    }))


def sweep_worker(args: argparse.Namespace) -> None:
    """int4 MSE of lowprec l2 and min/max vs ATen optimized over embedding dims, and every table
    precision's error over value magnitudes (errors only)."""
    import fbgemm_gpu  # noqa: F401

    from lowprec.quant.rowwise import fused_rows, fused_to_float

    res = []
    for dim in (16, 32, 64, 128, 256):
        for table in TABLES:
            x = make_table(table, args.sweep_rows, dim, seed=1)
            aten = decode_codes_last(torch.ops.quantized.embedding_bag_4bit_prepack(x, True), 4, dim)
            mse = {m: (fused_to_float(fused_rows(x, 4, m), 4, dim) - x).square().mean().item() for m in ("minmax", "l2")}
            res.append({"dim": dim, "table": table, "aten": (aten - x).square().mean().item(), **mse})
    precisions = precision_errors(make_table("gauss", args.sweep_rows, args.dim, seed=2))
    print(json.dumps({"dims": res, "precisions": precisions}))


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import importlib.metadata as md

    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
        "torch": torch.__version__, "fbgemm": md.version("fbgemm-gpu-cpu"),
        "threads": str(torch.get_num_threads()), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def spawn(args: argparse.Namespace, *extra: str) -> str:
    cmd = [sys.executable, os.path.abspath(__file__), "--rows", str(args.rows), "--dim", str(args.dim), "--repeats",
           str(args.repeats), "--aten-rows", str(args.aten_rows), "--sweep-rows", str(args.sweep_rows),
           "--threads", str(args.threads), *extra]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Row:
    method: str
    table: str
    rows: int
    gbs: list[float]
    gb_per_cpu_s: float
    mse: float
    mse_shared: float
    hwm_mb: float
    hwm_growth_mb: float
    threads: int


def fmt_gbs(gbs: list[float]) -> str:
    med = statistics.median(gbs)
    return f"{med:.3f} [{min(gbs):.3f}-{max(gbs):.3f}]" if med >= 0.1 else f"{med * 1000:.1f} MB/s [{min(gbs) * 1000:.1f}-{max(gbs) * 1000:.1f}]"


def table_md(rows: list[Row], table: str) -> list[str]:
    by = {r.method: r for r in rows if r.table == table}
    minmax = {b: by[f"lowprec_minmax{b}"].mse_shared for b in (8, 4, 2)}  # fp16: no min/max row
    aten = by["aten_4bit_opt"]
    out = [f"### {table} table", "",
           "| method | bits | rows timed | GB/s fp32 in, median [min-max] | GB per CPU-s | MSE (all rows) | "
           f"MSE (first {aten.rows:,} rows) | vs min/max | vs ATen opt | speed vs ATen opt | peak RSS MB (+growth) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (bits, desc) in METHODS.items():
        r = by[name]
        speed = statistics.median(r.gbs) / statistics.median(aten.gbs)
        vs_aten = f"{r.mse_shared / aten.mse_shared:.4f}" if bits == 4 else ""
        vs_minmax = f"{r.mse_shared / minmax[bits]:.4f}" if bits in minmax else ""
        out.append(f"| {desc} | {bits} | {r.rows:,} | {fmt_gbs(r.gbs)} | {r.gb_per_cpu_s:.3f} | {r.mse:.4g} | {r.mse_shared:.4g} | "
                   f"{vs_minmax} | {vs_aten} | {speed:.0f}x | {r.hwm_mb:.0f} (+{r.hwm_growth_mb:.0f}) |")
    return out + [""]


def sweep_md(sweep: list[dict]) -> list[str]:
    out = ["### int4 error across embedding dims (lowprec l2 vs ATen optimized, same rows)", "",
           "| dim | table | ATen opt / min-max | lowprec l2 / min-max | lowprec l2 / ATen opt |", "|---|---|---|---|---|"]
    for s in sweep["dims"]:
        out.append(f"| {s['dim']} | {s['table']} | {s['aten'] / s['minmax']:.4f} | {s['l2'] / s['minmax']:.4f} | {s['l2'] / s['aten']:.4f} |")
    return out + [""]


def headline(rows: list[Row]) -> list[str]:
    out = []
    for table in TABLES:
        by = {r.method: r for r in rows if r.table == table}
        l2, one, aten = by["lowprec_l2_4"], by["lowprec_l2_4_1t"], by["aten_4bit_opt"]
        med = {k: statistics.median(r.gbs) for k, r in (("l2", l2), ("one", one), ("aten", aten))}
        out.append(
            f"- **{table}, int4**: lowprec l2 MSE / ATen optimized MSE = **{l2.mse_shared / aten.mse_shared:.4f}** "
            f"(same {aten.rows:,} rows); wall-clock throughput **{med['l2'] / med['aten']:.0f}x** ATen's "
            f"({med['l2'] * 1000:.0f} vs {med['aten'] * 1000:.1f} MB/s), {med['one'] / med['aten']:.0f}x with "
            f"1 thread ({med['one'] * 1000:.0f} MB/s); per CPU-second **{one.gb_per_cpu_s / aten.gb_per_cpu_s:.0f}x** "
            f"(1 thread, {one.gb_per_cpu_s * 1000:.0f} vs {aten.gb_per_cpu_s * 1000:.1f} MB per CPU-s; "
            "the load-independent comparison, ATen's search being single-threaded).")
    return out


def full_report(args: argparse.Namespace, command: str) -> list[str]:
    """Every method on both tables, each in its own process, then the error sweeps: the whole report."""
    load0 = os.getloadavg()
    rows = []
    for table in TABLES:
        for name in METHODS:
            rows.append(Row(**json.loads(spawn(args, "--worker", "--method", name, "--table", table))))
            print(f"  {table:5s} {name:16s} {fmt_gbs(rows[-1].gbs)} GB/s  mse {rows[-1].mse:.4g}", file=sys.stderr)
    sweep = json.loads(spawn(args, "--sweep"))
    m = machine()
    m["threads"] = str(rows[0].threads)
    load = f"{load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    return ["# Row-wise quantization benchmark", "", "```", command, "```", "",
            f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, fbgemm-gpu-cpu {m['fbgemm']}, "
            f"python {m['python']}, {m['threads']} torch threads per worker (OMP_WAIT_POLICY="
            f"{args.omp_wait_policy or 'unset'}); {m['date']}; 1-min load average {load}.",
            f"Tables: {args.rows:,} x {args.dim} fp32 (ATen optimized: first {args.aten_rows:,} rows); "
            f"{args.repeats} timed calls after one warm-up, each method in its own process.", "",
            "## Headline", "", *headline(rows), "", *NOTES, "", "## Results", "",
            *table_md(rows, "gauss"), *table_md(rows, "heavy"), *sweep_md(sweep),
            *precisions_md(sweep["precisions"], args.sweep_rows, args.dim)]


def precisions_only(args: argparse.Namespace, command: str) -> list[str]:
    """Only the table-precision error sweep (errors only, in this process): its block of the report."""
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    m = machine()
    partial = (f"Measured on its own: `{command}` ({m['date']}, {m['cpu']}, 1-min load average "
               f"{os.getloadavg()[0]:.2f}); errors only, which the machine's load does not move. The sections "
               "above come from the full run recorded at the top of this file; fp16 and fp8 rows join their "
               "throughput/RSS tables at the next full run (`.venv/bin/python tools/bench_quantize.py "
               "--out reports/quantize.md`: 30 worker processes, over 15 min on a busy 2-core machine, "
               "whose wall-clock columns a busy machine would distort).")
    errors = precision_errors(make_table("gauss", args.sweep_rows, args.dim, seed=2))
    return precisions_md(errors, args.sweep_rows, args.dim, partial)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--aten-rows", type=int, default=50_000)
    p.add_argument("--sweep-rows", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch default)")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY for the workers ('' keeps the environment's): on a shared machine "
                   "OpenMP's default spin-waiting collapses multi-threaded ops when another process holds a core")
    p.add_argument("--out", default=None, help="write the Markdown report here")
    p.add_argument("--precisions-only", action="store_true",
                   help="run only the table-precision error sweep and replace its block in --out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=sorted(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--table", choices=TABLES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.sweep:
        return sweep_worker(args)
    interp = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    command = shlex.join([interp, sys.argv[0], *sys.argv[1:]]) + "   # from the repository root"
    md = precisions_only(args, command.split("   #")[0]) if args.precisions_only else full_report(args, command)
    text = "\n".join(md)
    print(text)
    if args.out and args.precisions_only:
        replace_block(args.out, md)
    elif args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
