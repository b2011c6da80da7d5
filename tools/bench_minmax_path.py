"""Min/max conversion through FBGEMM's quantize ops vs the bare ops, interleaved in one run.

For int8/int4/int2 on one convert chunk (default 1M rows x 64 fp32 = 256 MB, uniform +-0.1), each
repeat times, in a fresh order: FBGEMM's bare op on the whole chunk (what a caller of the op gets:
a fresh [codes | scale | bias] tensor); the bare op over 1 MB blocks (the torch-op path's blocks;
the op's compute alone, each block's output recycled by malloc); the same plus the NaN read of
each block right after its op by numpy's max, and by the native check
(`fbgemm_minmax_native.first_non_finite_row`) (what any path that refuses NaN must add: FBGEMM's
ops skip NaN silently); lowprec's path `fused_rows(x, bits)` (int4/int2: FBGEMM's routine called
from C on 32 KB blocks straight into the artifact rows, checked in L1; int8: the torch-op path);
the torch-op path (`fbgemm_minmax.torch_op_rows`: op on 1 MB blocks, rearranged, native check;
int8's path, and int4/int2's where FBGEMM's routine is not found); and the path as it was before
(`_previous`: the torch-op path with numpy's check, which is also what runs without a C
compiler). Wall time and the thread's CPU time (time.thread_time, less disturbed by other
processes on a loaded machine) are reported as GB/s of fp32 input, with the median and the range
of the per-repeat ratios to the bare op on the chunk. Everything runs on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_minmax_path.py --repeats 21 --out reports/minmax_path.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine, machine_line  # noqa: E402

from lowprec.quant import fbgemm_minmax, fbgemm_minmax_native  # noqa: E402
from lowprec.quant.rowwise import fused_rows  # noqa: E402


def _previous(x: torch.Tensor, bits: int) -> torch.Tensor | None:
    """fbgemm_minmax_rows before this change (and without a C compiler now): FBGEMM's torch op on
    1 MB blocks, each rearranged in cache, NaN/Inf found by numpy's max of each block."""
    rows, dim = x.shape
    flat = fbgemm_minmax.huge_empty(rows * (4 + dim * bits // 8))
    out = fbgemm_minmax._Rows(flat.numpy(), rows, dim, bits)
    xn = x.numpy()
    step = max(1, fbgemm_minmax._FBGEMM_BLOCK // dim)
    place = out.int8_block if bits == 8 else out.nbit_block
    for i, block in zip(range(0, rows, step), x.split(step)):
        place(block, i)
        if not math.isfinite(np.maximum.reduce(xn[i : i + step], axis=None)):
            return None
    if not fbgemm_minmax._finite_fp16_pairs(out.sb):
        return None
    return flat.view(rows, out.width)


def _each(op, blocks, read=None) -> None:
    for b in blocks:  # each output dropped before the next: malloc recycles it
        op(b)
        if read is not None:  # the NaN read the path needs (FBGEMM's ops skip NaN), from cache
            read(b)


def _calls(x: torch.Tensor, bits: int) -> dict:
    op = (lambda t: torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(t)) if bits == 8 else \
        (lambda t: torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(t, bits))
    step = max(1, fbgemm_minmax._FBGEMM_BLOCK // x.shape[1])
    return {
        "op_chunk": lambda: op(x),
        "op_blocks": lambda: _each(op, x.split(step)),
        "op_read": lambda: _each(op, x.split(step), read=lambda b: np.maximum.reduce(b.numpy(), axis=None)),
        "op_check": lambda: _each(op, x.split(step), read=fbgemm_minmax_native.first_non_finite_row),
        "path": lambda: fused_rows(x, bits),
        "torch_path": lambda: fbgemm_minmax.torch_op_rows(x, bits),
        "previous": lambda: _previous(x, bits),
    }


def bench(rows: int, dim: int, repeats: int) -> dict:
    import fbgemm_gpu  # noqa: F401

    torch.set_num_threads(1)
    x = torch.empty(rows, dim).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    gb = x.numel() * 4 / 1e9
    out, rng = {}, random.Random(0)
    for bits in (8, 4, 2):
        calls = _calls(x, bits)
        assert fbgemm_minmax_native.fbgemm_routine() is not None, "the native kernel did not build"
        expected = calls["previous"]()
        assert torch.equal(calls["path"](), expected) and torch.equal(calls["torch_path"](), expected)
        wall = {k: [] for k in calls}
        cpu = {k: [] for k in calls}
        order = list(calls)
        for _ in range(repeats):
            rng.shuffle(order)  # interleaved: every repeat runs each once, in a fresh order
            for name in order:
                f = calls[name]
                w, c = time.perf_counter(), time.thread_time()
                f()
                cpu[name].append(time.thread_time() - c)
                wall[name].append(time.perf_counter() - w)
        out[bits] = {"gbs_wall": {k: [gb / t for t in v] for k, v in wall.items()},
                     "gbs_cpu": {k: [gb / t for t in v] for k, v in cpu.items()}}
    return {"rows": rows, "dim": dim, "repeats": repeats, "bits": out}


def _ratio(a: list[float], b: list[float]) -> str:
    r = sorted(x / y for x, y in zip(a, b))
    return f"{statistics.median(r):.2f}x [{r[0]:.2f}-{r[-1]:.2f}]"


def render(res: dict, cmd: str, load: tuple[float, float]) -> str:
    lines = [f"Command: `{cmd}`", "", machine_line(machine(1)),
             f"1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end; "
             f"{res['rows']:,} x {res['dim']} fp32 ({res['rows'] * res['dim'] * 4 / 1e6:.0f} MB), "
             f"{res['repeats']} interleaved repeats, one thread.", "",
             "| bits | clock | op on chunk GB/s | op on blocks GB/s | op + NaN read GB/s | op + native check GB/s "
             "| path GB/s | torch-op path GB/s | previous GB/s | path / op on chunk | torch-op path / op on chunk "
             "| previous / op on chunk | op + NaN read / op on chunk | op + native check / op on chunk |",
             "|" + " --- |" * 14]
    for bits, r in res["bits"].items():
        for clock in ("cpu", "wall"):
            g = r[f"gbs_{clock}"]
            med = {k: statistics.median(v) for k, v in g.items()}
            gbs = " | ".join(f"{med[k]:.2f}" for k in ("op_chunk", "op_blocks", "op_read", "op_check", "path",
                                                       "torch_path", "previous"))
            ratios = " | ".join(_ratio(g[k], g["op_chunk"]) for k in ("path", "torch_path", "previous", "op_read",
                                                                      "op_check"))
            lines.append(f"| {bits} | {clock} | {gbs} | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=None, help="JSON with every repeat (the table goes to stdout)")
    args = ap.parse_args()
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cmd = f"{env}.venv/bin/python tools/bench_minmax_path.py " + " ".join(sys.argv[1:])
    start = os.getloadavg()[0]
    res = bench(args.rows, args.dim, args.repeats)
    text = render(res, cmd, (start, os.getloadavg()[0]))
    if args.out:
        Path(args.out).write_text(json.dumps({**res, "table": text}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
