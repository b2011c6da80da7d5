"""The L2 range search's two backends side by side: eager torch ops vs the torch.compile'd passes.

`fused_rows(x, bits, "l2")` runs its error passes eagerly (5 passes over the rows per candidate:
memory-bound) or as torch.compile'd kernels (one fused pass per candidate grid / refinement step);
"auto" compiles for tables of >= 2**25 values, i.e. every 256 MB chunk convert streams. This times
both on the same rows, interleaved (after one warm-up call that pays the one-off compile), and
compares what they choose: the share of rows with the same (scale, bias), and the total squared
error of each against FBGEMM's min/max.

    .venv/bin/python tools/bench_range_search.py --rows 500000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine, machine_line  # noqa: E402

from lowprec.quant.range_search import RangeSearchConfig  # noqa: E402
from lowprec.quant.rowwise import fused_rows, fused_to_float  # noqa: E402


def table(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Gaussian rows with per-row spread (as bench_quantize's tables)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=g) * torch.rand(rows, 1, generator=g)


def bench(rows: int, dim: int, bits: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    x = table(rows, dim)
    gb = x.numel() * 4 / 1e9
    base = RangeSearchConfig.for_bits(bits, dim)
    cfgs = {b: RangeSearchConfig(base.candidates, backend=b) for b in ("eager", "compile")}
    t = time.perf_counter()
    fused_rows(x[:4096], bits, "l2", config=cfgs["compile"])
    compile_s = time.perf_counter() - t
    wall = {b: [] for b in cfgs}
    cpu = {b: [] for b in cfgs}
    out = {}
    for _ in range(repeats):
        for b, cfg in cfgs.items():
            w, c = time.perf_counter(), time.thread_time()
            out[b] = fused_rows(x, bits, "l2", config=cfg)
            cpu[b].append(gb / (time.thread_time() - c))
            wall[b].append(gb / (time.perf_counter() - w))
    err = {b: (fused_to_float(o, bits, dim) - x).double().square().sum().item() for b, o in out.items()}
    err["minmax"] = (fused_to_float(fused_rows(x, bits), bits, dim) - x).double().square().sum().item()
    same = (out["eager"][:, :4] == out["compile"][:, :4]).all(1).double().mean().item()
    return {"rows": rows, "dim": dim, "bits": bits, "gb": gb, "compile_s": compile_s,
            "gbs_cpu": cpu, "gbs_wall": wall, "err": err, "same_qparams": same}


def render(results: list[dict], cmd: str, load: tuple[float, float], repeats: int) -> str:
    lines = [f"Command: `{cmd}`", "", machine_line(machine(1)),
             f"1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end; {repeats} interleaved "
             "repeats after a warm-up; one thread; GB/s of fp32 input, median [min-max].", "",
             "| bits | rows x dim | clock | eager GB/s | compiled GB/s | compiled / eager | "
             "MSE eager / min-max | MSE compiled / eager | rows with the same (scale, bias) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def med(v: list[float]) -> str:
        return f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]"

    for r in results:
        for clock in ("cpu", "wall"):
            g = r[f"gbs_{clock}"]
            ratio = sorted(c / e for c, e in zip(g["compile"], g["eager"]))
            e = r["err"]
            lines.append(f"| {r['bits']} | {r['rows']:,} x {r['dim']} | {clock} | {med(g['eager'])} | "
                         f"{med(g['compile'])} | {statistics.median(ratio):.2f}x [{ratio[0]:.2f}-{ratio[-1]:.2f}] | "
                         f"{e['eager'] / e['minmax']:.4f} | {e['compile'] / e['eager']:.7f} | "
                         f"{100 * r['same_qparams']:.3f}% |")
    lines.append("")
    lines.append("One-off compile (first call, torch's cache as found): " +
                 ", ".join(f"{r['bits']}-bit {r['compile_s']:.0f} s" for r in results))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--bits", default="4,2")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cmd = "python tools/bench_range_search.py " + " ".join(sys.argv[1:])
    start = os.getloadavg()[0]
    results = [bench(args.rows, args.dim, int(b), args.repeats) for b in args.bits.split(",")]
    print(render(results, cmd, (start, os.getloadavg()[0]), args.repeats))


if __name__ == "__main__":
    main()
