"""Min/max conversion through FBGEMM's quantize ops vs the bare ops, interleaved in one run.

For int8/int4/int2 on one convert chunk (default 1M rows x 64 fp32 = 256 MB, uniform +-0.1), each
repeat times, in a fresh order: FBGEMM's bare op on the whole chunk (what a caller of the op gets:
a fresh [codes | scale | bias] tensor); the bare op over the same 1 MB blocks the path uses (the
op's compute alone, each block's output recycled by malloc); the same plus the NaN read of each
block right after its op (what any path that refuses NaN must add: FBGEMM's ops skip NaN
silently); lowprec's path `fused_rows(x, bits)` (the op, the rearrangement to [fp16 scale | fp16
bias | codes], the NaN/Inf and fp16-range checks); and the path as it was before (`_previous`,
kept here to compare against). Wall time and the thread's CPU time (time.thread_time, less
disturbed by other processes on a loaded machine) are reported as GB/s of fp32 input, with the
median and the range of the per-repeat ratios to the bare op on the chunk.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_minmax_path.py --repeats 11 --out reports/minmax_path.json
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

from lowprec.quant import fbgemm_minmax  # noqa: E402
from lowprec.quant.rowwise import fused_rows  # noqa: E402


def _previous(x: torch.Tensor, bits: int) -> torch.Tensor | None:
    """fbgemm_minmax_rows before this change: the (scale, bias) words gathered per block and placed
    with one strided copy over the whole output at the end; int8 codes by a 2-D numpy copy."""
    rows, dim = x.shape
    width = 4 + dim * bits // 8
    flat = fbgemm_minmax.huge_empty((rows + 1) * width)  # one spare row: the last row's word
    words = flat.numpy().view(np.int32).reshape(rows + 1, width // 4)
    sb = np.empty(rows, dtype=np.int32)
    xn = x.numpy()
    step = max(1, fbgemm_minmax._FBGEMM_BLOCK // dim)
    for i in range(0, rows, step):
        block = x[i : i + step]
        if bits == 8:
            q = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(block)
            n = q.shape[0]
            words[i : i + n, 1:] = q.numpy()[:, :dim].view(np.int32)
            sb[i : i + n] = q[:, dim:].view(torch.float32).to(torch.float16).numpy().view(np.int32)[:, 0]
        else:
            q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(block, bits).numpy()
            n = q.shape[0]
            words.reshape(-1).view(np.uint8)[4 + i * width : 4 + (i + n) * width] = q.reshape(-1)
            sb[i : i + n] = q.view(np.int32)[:, -1]
        if not math.isfinite(np.maximum.reduce(xn[i : i + step], axis=None)):
            return None
    if not fbgemm_minmax._finite_fp16_pairs(sb):
        return None
    words[:rows, 0] = sb
    return flat[: rows * width].view(rows, width)


def _each(op, blocks, read: bool = False) -> None:
    for b in blocks:  # each output dropped before the next: malloc recycles it
        op(b)
        if read:  # the NaN read the path needs (FBGEMM's ops skip NaN), from cache
            np.maximum.reduce(b.numpy(), axis=None)


def _calls(x: torch.Tensor, bits: int) -> dict:
    op = (lambda t: torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(t)) if bits == 8 else \
        (lambda t: torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(t, bits))
    step = max(1, fbgemm_minmax._FBGEMM_BLOCK // x.shape[1])
    return {
        "op_chunk": lambda: op(x),
        "op_blocks": lambda: _each(op, x.split(step)),
        "op_read": lambda: _each(op, x.split(step), read=True),
        "path": lambda: fused_rows(x, bits),
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
        assert torch.equal(calls["path"](), calls["previous"]())  # same bytes
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
             "| bits | clock | op on chunk GB/s | op on blocks GB/s | op + NaN read GB/s | path GB/s | "
             "previous GB/s | path / op on chunk | previous / op on chunk | op + NaN read / op on chunk |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for bits, r in res["bits"].items():
        for clock in ("cpu", "wall"):
            g = r[f"gbs_{clock}"]
            med = {k: statistics.median(v) for k, v in g.items()}
            lines.append(f"| {bits} | {clock} | {med['op_chunk']:.2f} | {med['op_blocks']:.2f} | "
                         f"{med['op_read']:.2f} | {med['path']:.2f} | {med['previous']:.2f} | "
                         f"{_ratio(g['path'], g['op_chunk'])} | {_ratio(g['previous'], g['op_chunk'])} | "
                         f"{_ratio(g['op_read'], g['op_chunk'])} |")
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
