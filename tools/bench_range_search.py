"""The L2 range search's backends side by side: the C kernel vs the torch backends it replaces.

`fused_rows(x, bits, "l2")` runs the search in the C kernel ("native", the default where it builds;
`range_search_native`; the kernel also runs the min/max guard and writes the fused rows' headers),
or with eager torch ops (5 passes over the rows per candidate: memory-bound) or with
torch.compile'd passes (one fused pass per candidate grid / refinement step), the guard then in
torch (`range_guard`). Before the kernel, "auto" meant eager below 2**25 values and compiled above.
This times the backends on the same rows, interleaved (after one warm-up call each, which pays the
one-off build or compile), as GB/s of fp32 input through the whole `fused_rows` (row ranges,
search, min/max guard, fused rows), and compares what they choose: the share of rows with the same
(scale, bias) as eager, and the total squared error of each against eager's and FBGEMM's min/max.

    .venv/bin/python tools/bench_range_search.py --rows 500000 --repeats 5

`--against COMMIT` adds that commit's `fused_rows` (backend "auto") as the first variant, the
reference of the ratios: its `lowprec/` is extracted with `git archive` into a temporary directory
as the package `lowprec_at_COMMIT` (imports renamed), so before and after run interleaved in one
process on the same rows:

    .venv/bin/python tools/bench_range_search.py --backends native --against affdb44 --dim 64,128

`--parts` instead profiles where the native path's time goes, per part: the kernel alone with one
candidate and no refinement (reading the rows, their ranges, one error pass, the codes), with all
candidates, with the refinement steps (the whole search), with the min/max guard (its exact
re-scoring of near-ties) and the fp16 headers, then all of `fused_rows`; CPU ms, median [min-max].
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
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


def fused_rows_at(commit: str, work: Path):
    """`fused_rows` of `commit`'s lowprec/, extracted under `work` as package lowprec_at_COMMIT."""
    repo = Path(__file__).resolve().parents[1]
    name = "lowprec_at_" + re.sub(r"\W", "_", commit)
    tar = subprocess.run(["git", "-C", str(repo), "archive", commit, "lowprec"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(work)], input=tar.stdout, check=True)
    (work / "lowprec").rename(work / name)
    for f in (work / name).rglob("*.py"):
        f.write_text(re.sub(r"\b(from|import) lowprec\b", rf"\1 {name}", f.read_text()))
    sys.path.insert(0, str(work))
    return importlib.import_module(f"{name}.quant.rowwise").fused_rows


def bench(rows: int, dim: int, bits: int, repeats: int, backends: list[str], before: tuple | None = None,
          threads: int = 1) -> dict:
    """Interleaved GB/s of the backends (and of `before` = (label, fused_rows), first), errors, agreement."""
    torch.set_num_threads(threads)
    x = table(rows, dim)
    gb = x.numel() * 4 / 1e9
    base = RangeSearchConfig.for_bits(bits, dim)
    cfgs = {b: RangeSearchConfig(base.candidates, backend=b) for b in backends}
    calls = {b: (lambda rows, cfg=cfg: fused_rows(rows, bits, "l2", config=cfg)) for b, cfg in cfgs.items()}
    if before is not None:
        calls = {before[0]: lambda rows: before[1](rows, bits, "l2"), **calls}
        backends = list(calls)
    warm = {}
    for b, call in calls.items():
        t = time.perf_counter()
        call(x[:4096])
        warm[b] = time.perf_counter() - t
    wall = {b: [] for b in calls}
    cpu = {b: [] for b in calls}
    out = {}
    for _ in range(repeats):
        for b, call in calls.items():
            out.pop(b, None)  # freed before the call, as convert frees each chunk's rows before the next
            w, c = time.perf_counter(), time.process_time()
            out[b] = call(x)
            cpu[b].append(gb / (time.process_time() - c))
            wall[b].append(gb / (time.perf_counter() - w))
    err = {b: (fused_to_float(o, bits, dim) - x).double().square().sum().item() for b, o in out.items()}
    err["minmax"] = (fused_to_float(fused_rows(x, bits), bits, dim) - x).double().square().sum().item()
    ref = out[backends[0]]
    same = {b: (o[:, :4] == ref[:, :4]).all(1).double().mean().item() for b, o in out.items()}
    identical = {b: torch.equal(o, ref) for b, o in out.items()}
    return {"rows": rows, "dim": dim, "bits": bits, "gb": gb, "warm_s": warm,
            "gbs_cpu": cpu, "gbs_wall": wall, "err": err, "same_qparams": same, "identical": identical}


def parts(rows: int, dim: int, bits: int, repeats: int) -> list[str]:
    """Per-part CPU time of the native path (see the module docstring): table rows."""
    from lowprec.quant import range_search_native

    torch.set_num_threads(1)
    x = table(rows, dim)
    full = RangeSearchConfig.for_bits(bits, dim)
    steps = {"kernel: read, row ranges, 1 candidate, codes": (((0.0, 0.0),), 0, False),
             f"kernel: + all {len(full.candidates)} candidates": (full.candidates, 0, False),
             f"kernel: + {full.refine_steps} refinement steps (the search)":
                 (full.candidates, full.refine_steps, False),
             "kernel: + min/max guard, fp16 headers": (full.candidates, full.refine_steps, True)}
    out = tuple(torch.empty(rows, 1) for _ in range(4))
    fused = torch.empty(rows, 4 + dim * bits // 8, dtype=torch.uint8)
    spent: dict[str, list[float]] = {k: [] for k in [*steps, "fused_rows(x, bits, 'l2'), all of it"]}
    fused_rows(x[:4096], bits, "l2")
    for _ in range(repeats):
        for k, (cands, n, guard) in steps.items():
            c = time.thread_time()
            range_search_native.search(x, None, None, cands, bits, n, full.relaxation, out, fused[:, 4:], guard,
                                       fused[:, :4] if guard else None)
            spent[k].append(time.thread_time() - c)
        c = time.thread_time()
        fused_rows(x, bits, "l2")
        spent["fused_rows(x, bits, 'l2'), all of it"].append(time.thread_time() - c)
    gb = x.numel() * 4 / 1e9
    return [f"| {bits} | {rows:,} x {dim} | {k} | {1e3 * statistics.median(v):.0f} [{1e3 * min(v):.0f}-"
            f"{1e3 * max(v):.0f}] | {gb / statistics.median(v):.2f} |" for k, v in spent.items()]


def render(results: list[dict], cmd: str, load: tuple[float, float], repeats: int, threads: int = 1) -> str:
    backends = list(results[0]["gbs_cpu"])
    ref = backends[0]
    lines = [f"Command: `{cmd}`", "", machine_line(machine(threads)),
             f"1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end; {repeats} interleaved "
             f"repeats after a warm-up; {'one thread' if threads == 1 else f'{threads} torch threads'}; GB/s of fp32 input through `fused_rows(x, bits, 'l2')`, "
             "median [min-max] (cpu: GB per CPU-second of the whole process, every thread); ratios are per repeat.", "",
             "| bits | rows x dim | clock | " + " | ".join(f"{b} GB/s" for b in backends) + " | " +
             " | ".join(f"{b} / {ref}" for b in backends[1:]) + " | MSE " + ref + " / min-max | " +
             " | ".join(f"MSE {b} / {ref}" for b in backends[1:]) + " | " +
             " | ".join(f"same (scale, bias) {b} as {ref}" for b in backends[1:]) + " |",
             "| " + " | ".join(["---"] * (5 + 3 * (len(backends) - 1) + 1)) + " |"]

    def med(v: list[float]) -> str:
        return f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]"

    for r in results:
        e = r["err"]
        for clock in ("cpu", "wall"):
            g = r[f"gbs_{clock}"]
            ratios = []
            for b in backends[1:]:
                q = sorted(c / o for c, o in zip(g[b], g[ref]))
                ratios.append(f"{statistics.median(q):.2f}x [{q[0]:.2f}-{q[-1]:.2f}]")
            lines.append(f"| {r['bits']} | {r['rows']:,} x {r['dim']} | {clock} | " +
                         " | ".join(med(g[b]) for b in backends) + " | " + " | ".join(ratios) +
                         f" | {e[ref] / e['minmax']:.4f} | " +
                         " | ".join(f"{e[b] / e[ref]:.7f}" for b in backends[1:]) + " | " +
                         " | ".join(f"{100 * r['same_qparams'][b]:.3f}%" for b in backends[1:]) + " |")
    lines.append("")
    lines.append("First call on 4096 rows (pays the kernel build / torch.compile, caches as found): " + "; ".join(
        f"{r['bits']}-bit D={r['dim']}: " + ", ".join(f"{b} {s:.1f} s" for b, s in r["warm_s"].items())
        for r in results))
    lines.append(f"Fused rows byte for byte those of {ref}: " + "; ".join(
        f"{r['bits']}-bit D={r['dim']}: " +
        ", ".join(f"{b} {'yes' if r['identical'][b] else 'no'}" for b in backends[1:])
        for r in results))
    lines.append("Total squared error (float64, of the dequantized rows): " + "; ".join(
        f"{r['bits']}-bit D={r['dim']}: " + ", ".join(f"{b} {v:.6e}" for b, v in r["err"].items())
        for r in results))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", default="64", help="comma-separated dims")
    ap.add_argument("--bits", default="4,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", default="eager,compile,native",
                    help="comma-separated; the first is the reference of the ratios")
    ap.add_argument("--against", metavar="COMMIT", help="add COMMIT's fused_rows (auto) as the reference")
    ap.add_argument("--parts", action="store_true", help="profile the native path per part instead")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (the native kernel splits rows over them; the others are one-threaded)")
    args = ap.parse_args()
    cmd = "python tools/bench_range_search.py " + " ".join(sys.argv[1:])
    start = os.getloadavg()[0]
    if args.parts:
        table_rows = [r for d in args.dim.split(",") for b in args.bits.split(",")
                      for r in parts(args.rows * 64 // int(d), int(d), int(b), args.repeats)]
        print("\n".join([f"Command: `{cmd}`", "", machine_line(machine(1)),
                         f"1-min load average {start:.1f} at start, {os.getloadavg()[0]:.1f} at end; CPU ms of one "
                         "thread, median [min-max] over the repeats.", "",
                         "| bits | rows x dim | part (cumulative) | CPU ms | GB/s |", "| --- | --- | --- | --- | --- |",
                         *table_rows]))
        return
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory() as work:
        before = (f"at {args.against}", fused_rows_at(args.against, Path(work))) if args.against else None
        results = [bench(args.rows * 64 // int(d), int(d), int(b), args.repeats, backends, before, args.threads)
                   for d in args.dim.split(",") for b in args.bits.split(",")]
    print(render(results, cmd, (start, os.getloadavg()[0]), args.repeats, args.threads))


if __name__ == "__main__":
    main()
