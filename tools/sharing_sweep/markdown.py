"""Markdown building blocks of the report: number and byte formats, paragraphs, tables, recorded
commands shortened to $D/$W/$BIG, the per-run rows of a group and the per-method breakdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sharing_sweep.common import AUC_TOL, METHODS, find_run


def fmt(x: Any, d: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.{d}f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def paras(lines: list[str]) -> list[str]:
    """TEXT paragraphs as Markdown: a blank line after each one that is not a list item."""
    out: list[str] = []
    for line in lines:
        out.append(line)
        if not line.startswith("- "):
            out.append("")
    return out


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def short_cmd(c: str, ds: dict[str, Any]) -> str:
    """A recorded command with the data directory as $D, the work directory as $W and the
    compressed-table flags of the synthetic set as $BIG(SPEC)."""
    root = str(Path(ds["data"]).parents[1])
    c = c.replace(ds["data"], "$D").replace(root, "$W")
    parts = c.split(" --table-embedding ")
    if ds["big"] and len(parts) > 1:
        spec = parts[1].split("=", 1)[1].split(" ")[0]
        tail = parts[-1].split(" ", 1)[1] if " " in parts[-1] else ""
        c = f"{parts[0]} $BIG({spec}) {tail}"
    return c.strip()


def fmt_delong(v: dict[str, Any]) -> str:
    dl = v.get("vs_dense")
    if not dl:
        return "-"
    return f"{dl['diff']:+.4f} (p={dl['p']:.2g})"


def run_rows(ds: dict[str, Any], group: str) -> list[str]:
    lines: list[str] = []
    header = ["model", "variant", "table bytes", "compression", "AUC", "ΔAUC vs dense (DeLong p)", "NE",
              "max abs Δp vs float", "command"]
    rows = []
    for r in ds["runs"]:
        if r["group"] != group:
            continue
        base = " ; ".join(short_cmd(c, ds) for c in r["commands"][:1]) if r["method"] != "hot" else \
            "calibrate + convert --plan (see below)"
        if "float" in r:
            v = r["float"]
            fp = r["variants"]["fp32"] if "fp32" in r["variants"] else None
            rows.append([r["id"], "float", fmt_bytes(fp["embedding_bytes"]) if fp else "-",
                         f"{fp['compression']:.1f}x" if fp else "-", fmt(v["auc"]),
                         fmt_delong(v), fmt(v["ne"]), "-", f"`{base}`"])
        for prec, v in r["variants"].items():
            note = "" if v["exact"] else " (approx. form)"
            rows.append([r["id"], prec + note, fmt_bytes(v["embedding_bytes"]), f"{v['compression']:.1f}x",
                         fmt(v["auc"]), fmt_delong(v), fmt(v["ne"]),
                         fmt(v.get("max_abs_dprob_vs_float"), 5),
                         f"`{short_cmd(v['commands'][0], ds)}`"])
    lines += md_table(header, rows)
    return lines


def breakdown(ds: dict[str, Any]) -> list[list[str]]:
    """Per method and precision: the ratios whose AUC stays within AUC_TOL of the dense fp32
    float model, and those that drop further (with their AUC drop)."""
    d_auc = find_run(ds, "dense-s0")["float"]["auc"]
    rows = []
    for m in ("hash", "qr", "robe", "robe_exact", "hot"):
        for prec in ("float", "fp16", "int8", "int4"):
            if m == "hot" and prec == "float":
                continue
            pts = sorted((r for r in ds["runs"] if r["group"] == "sweep" and r["method"] == m),
                         key=lambda r: r["ratio"])
            held, broke = [], []
            for r in pts:
                v = r["float"] if prec == "float" else r["variants"].get(prec)
                if v is None:
                    continue
                comp = r["variants"]["fp32" if prec == "float" else prec]["compression"]
                text = f"{r['ratio']:g}x ({comp:.0f}x bytes, ΔAUC {v['auc'] - d_auc:+.4f})"
                (held if d_auc - v["auc"] <= AUC_TOL else broke).append(text)
            if held or broke:
                rows.append([METHODS[m][0], prec, ", ".join(held) or "none", ", ".join(broke) or "none"])
    return rows
