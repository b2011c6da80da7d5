"""Accuracy of every table precision (fp32, fp16, fp8, int8, int4, int2; min/max) by the magnitude
of the values, for reports/quantize.md (tools/bench_quantize.py). fp8 (FBGEMM's HFP8: 1 sign, 4
exponent, 3 mantissa bits, bias 7) has no per-row scale, so its relative error depends on the
values' size; the row-wise integer precisions rescale every row and fp16's range is wide.

Each precision goes through its handler (`lowprec.serve.tables.table_codec(P)`: `encode`, then
`decode`, which is what the TBE's lookup returns; lowprec is imported lazily, so the benchmark's
worker processes, which import this module, start as before). The report block is marked so that
`bench_quantize.py --precisions-only` can replace it in an existing report.
"""

from __future__ import annotations

import os

import torch

SCALES = (1.0, 0.05, 1e-2, 1e-3, 1e-4)  # the precision sweep's value magnitudes (std of N(0, s^2))
PRECISIONS_BEGIN = "<!-- table precisions: begin (tools/bench_quantize.py --precisions-only rewrites this block) -->"
PRECISIONS_END = "<!-- table precisions: end -->"


def precision_errors(base: torch.Tensor) -> list[dict]:
    """Per value magnitude s: MSE / mean(x^2) of every table precision's handler on `base` * s
    (`base`: N(0, 1) rows)."""
    from lowprec.precision import Precision
    from lowprec.serve.tables import table_codec

    dim = base.shape[1]
    out = []
    for s in SCALES:
        x = base * s
        power = x.square().mean().item()
        rel = {p.value: (table_codec(p).decode(table_codec(p).encode(x), dim) - x).square().mean().item() / power
               for p in Precision}
        out.append({"scale": s, "relative_mse": rel})
    return out


def precisions_md(precisions: list[dict], rows: int, dim: int, partial: str | None = None) -> list[str]:
    """Accuracy of every table precision, relative to the values' power, over value magnitudes, as a
    marked block that `--precisions-only` can replace in an existing report."""
    from lowprec.precision import Precision

    scales = [s["scale"] for s in precisions]
    out = [PRECISIONS_BEGIN, "### Table precisions on accuracy, by value magnitude", ""]
    out += [partial, ""] if partial else []
    out += [f"MSE / mean(x^2) of each table precision's handler (`table_codec(P).encode`, then `.decode`), "
            f"{rows:,} x {dim} rows of N(0, s^2). For scale: lowprec initialises table rows U(+-0.1/sqrt(D)) "
            "(std 0.014 at D = 16, 0.007 at D = 64) and rows training seldom updates stay near that; "
            "DLRM's reference init U(+-1/sqrt(n)) gives std ~6e-4 for a 1M-row table; the heavy table "
            "above has a median |x| of ~0.04.", "",
            f"| precision | bytes a row (D={dim}) | " + " | ".join(f"s = {s:g}" for s in scales) + " |",
            "|---|---|" + "---|" * len(scales)]
    for p in Precision:
        errs = [s["relative_mse"][p.value] for s in precisions]
        out.append(f"| {p.value} | {p.bytes_per_row(dim)} | " + " | ".join(f"{e:.3g}" for e in errs) + " |")
    return out + ["", fp8_sentence(precisions), "", PRECISIONS_END, ""]


def fp8_sentence(precisions: list[dict]) -> str:
    """What fp8 does to small-magnitude tables against fp16 and int8, from the sweep's numbers."""
    by = {s["scale"]: s["relative_mse"] for s in precisions}
    big, *small = sorted(by, reverse=True)[:1] + sorted(by, reverse=True)[-3:]
    shrink = ", ".join(f"{by[s]['fp8']:.2g} at s = {s:g}" for s in small)
    int8 = " / ".join(f"{by[s]['int8']:.2g}" for s in small)
    return (f"**fp8 (HFP8 1-4-3, bias 7, no per-row scale)** holds a fixed relative error while values sit in "
            f"its normal range (MSE / mean x^2 = {by[big]['fp8']:.2g} at s = {big:g}, against int8's "
            f"{by[big]['int8']:.2g} and fp16's {by[big]['fp16']:.2g}), but on small-magnitude tables it runs "
            f"out of exponent: {shrink} (every value rounded to zero), where int8's per-row scale keeps "
            f"{int8} and fp16 stays at "
            f"{max(by[s]['fp16'] for s in small):.1g} or below.")


def replace_block(path: str, block: list[str]) -> None:
    """Put the precision block into an existing report: in place of the old block, else at the end."""
    text = open(path).read() if os.path.exists(path) else ""
    new = "\n".join(block)
    if PRECISIONS_BEGIN in text and PRECISIONS_END in text:
        head, rest = text.split(PRECISIONS_BEGIN, 1)
        text = head + new.rstrip("\n") + rest.split(PRECISIONS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
