"""Min/max conversion through FBGEMM's quantize ops vs the bare ops, interleaved in one run.

For int8/int4/int2 on one convert chunk (default 1M rows x 64 fp32 = 256 MB, uniform +-0.1), each
repeat times, in turn: FBGEMM's bare op on the whole chunk (what a caller of the op gets: a fresh
[codes | scale | bias] tensor); the bare op over the same 1 MB blocks the path uses (the op's
compute alone, its output recycled by malloc); lowprec's path `fused_rows(x, bits)` (the op, the
rearrangement to [fp16 scale | fp16 bias | codes], the NaN/Inf and fp16-range checks); and the
path as it was before (`_previous`, kept here to compare against). Wall time and the thread's CPU
time (time.thread_time, less disturbed by other processes on a loaded machine) are reported as
GB/s of fp32 input, with the median and the range of the per-repeat ratios path / op.

    .venv/bin/python tools/bench_minmax_path.py --repeats 9 --out reports/minmax_path.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine, machine_line  # noqa: E402

from lowprec.quant import fbgemm_minmax  # noqa: E402
from lowprec.quant.rowwise import fused_rows  # noqa: E402


def _previous(x: torch.Tensor, bits: int) -> torch.Tensor | None:
    """fbgemm_minmax_rows before this change: 4 MB blocks, aminmax pass first, torch copies."""
    rows, dim = x.shape
    cb = dim * bits // 8
    width = 4 + cb
    step = max(1, (1 << 20) // dim)
    flat = torch.empty((rows + 1) * width, dtype=torch.uint8)
    words = flat.view(torch.int32).view(rows + 1, width // 4)
    for i in range(0, rows, step):
        block = x[i : i + step]
        n = block.shape[0]
        lo, hi = torch.aminmax(block)
        if not (-30000.0 < float(lo) and float(hi) < 30000.0):
            return None
        if bits == 8:
            q = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(block)
            words[i : i + n, 1:] = q[:, :dim].view(torch.int32)
            sb = torch.empty((n, 2), dtype=torch.float16).copy_(q[:, dim:].view(torch.float32))
            words[i : i + n, 0] = sb.view(torch.int32)[:, 0]
        else:
            q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(block, bits)
            flat[4 + i * width : 4 + (i + n) * width] = q.view(-1)
            words[i : i + n, 0] = q.view(torch.int32)[:, -1]
    return flat[: rows * width].view(rows, width)


def _calls(x: torch.Tensor, bits: int) -> dict:
    op = (lambda t: torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(t)) if bits == 8 else \
        (lambda t: torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(t, bits))
    step = max(1, fbgemm_minmax._FBGEMM_BLOCK // x.shape[1])
    return {
        "op_chunk": lambda: op(x),
        "op_blocks": lambda: [op(x[i : i + step]) for i in range(0, x.shape[0], step)],
        "path": lambda: fused_rows(x, bits),
        "previous": lambda: _previous(x, bits),
    }


def bench(rows: int, dim: int, repeats: int) -> dict:
    import fbgemm_gpu  # noqa: F401

    torch.set_num_threads(1)
    x = torch.empty(rows, dim).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    gb = x.numel() * 4 / 1e9
    out = {}
    for bits in (8, 4, 2):
        calls = _calls(x, bits)
        assert torch.equal(calls["path"](), calls["previous"]())  # same bytes
        wall = {k: [] for k in calls}
        cpu = {k: [] for k in calls}
        for _ in range(repeats):
            for name, f in calls.items():  # interleaved: every repeat runs each once
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
             "| bits | clock | op on chunk GB/s | op on blocks GB/s | path GB/s | previous GB/s | "
             "path / op on chunk | path / op on blocks | previous / op on chunk |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for bits, r in res["bits"].items():
        for clock in ("cpu", "wall"):
            g = r[f"gbs_{clock}"]
            med = {k: statistics.median(v) for k, v in g.items()}
            lines.append(f"| {bits} | {clock} | {med['op_chunk']:.2f} | {med['op_blocks']:.2f} | "
                         f"{med['path']:.2f} | {med['previous']:.2f} | {_ratio(g['path'], g['op_chunk'])} | "
                         f"{_ratio(g['path'], g['op_blocks'])} | {_ratio(g['previous'], g['op_chunk'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=None, help="JSON with every repeat (the table goes to stdout)")
    args = ap.parse_args()
    cmd = "python tools/bench_minmax_path.py " + " ".join(sys.argv[1:])
    start = os.getloadavg()[0]
    res = bench(args.rows, args.dim, args.repeats)
    text = render(res, cmd, (start, os.getloadavg()[0]))
    if args.out:
        Path(args.out).write_text(json.dumps({**res, "table": text}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
