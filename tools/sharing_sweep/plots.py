"""The sweep's figures from the JSON: accuracy vs table bytes per data set (one panel per precision,
AUC and NE), and the lookup-time box plot of the exact vs aligned ROBE speed test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sharing_sweep.common import AUC_TOL, METHODS, find_run


def points(ds: dict[str, Any], prec: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """method -> sorted [(bytes, auc, ne, ratio)] at one precision ('float' = the float model,
    at the bytes of its fp32 artifact)."""
    out: dict[str, list] = {}
    dense = find_run(ds, "dense-s0")
    for r in ds["runs"]:
        if r["group"] != "sweep":
            continue
        v = r["float"] if prec == "float" and "float" in r else r["variants"].get("fp32" if prec == "float" else prec)
        if v is None or (prec == "float" and r["method"] == "hot"):
            continue
        b = r["variants"]["fp32" if prec == "float" else prec]["embedding_bytes"]
        out.setdefault(r["method"], []).append((b, v["auc"], v["ne"], r["ratio"]))
    for m in list(out):
        if m not in ("dense",) and dense is not None:
            dv = dense["float"] if prec == "float" else dense["variants"].get(prec)
            if dv is not None:
                b = dense["variants"]["fp32" if prec == "float" else prec]["embedding_bytes"]
                out[m].append((b, dv["auc"], dv["ne"], 1))
        out[m].sort(key=lambda t: -t[0])
    return out


def _panel(ax: Any, ds: dict[str, Any], pts: dict[str, list], prec: str, row: int, col: int) -> None:
    """One panel: every method's (bytes, AUC or NE) curve at one precision, dense and references."""
    metric, idx = (("AUC", 1), ("NE", 2))[row]
    dense = find_run(ds, "dense-s0")
    for m, p in pts.items():
        if m == "dense":
            continue
        label, colour, _ = METHODS[m]
        ax.plot([x[0] for x in p], [x[idx] for x in p], "o-", color=colour, label=label, ms=4)
        for x in p:
            if x[3] != 1:
                ax.annotate(f"{x[3]:g}x", (x[0], x[idx]), fontsize=6, color=colour,
                            xytext=(2, 2), textcoords="offset points")
    if "dense" in pts:
        ax.plot([pts["dense"][0][0]], [pts["dense"][0][idx]], "*", color="black", ms=11,
                label=f"dense {prec if prec != 'float' else 'fp32'}")
    noemb = find_run(ds, "noemb")
    if noemb is not None:
        ax.axhline(noemb["float"]["auc" if idx == 1 else "ne"], color="grey", lw=1, ls=":",
                   label=METHODS["noemb"][0])
    if dense is not None:
        ref = dense["float"]["auc" if idx == 1 else "ne"]
        ax.axhline(ref, color="black", lw=0.8, ls="--")
        if idx == 1:
            ax.axhspan(ref - AUC_TOL, ref, color="grey", alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    if row == 0:
        ax.set_title(f"{'float model (fp32)' if prec == 'float' else prec + ' artifact'}")
    if row == 1:
        ax.set_xlabel("embedding table bytes (inspect: embedding_bytes)")
    if col == 0:
        ax.set_ylabel(metric + (" (higher is better)" if idx == 1 else " (lower is better)"))


def plot_dataset(name: str, ds: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precs = ("float", "fp16", "int8", "int4")
    fig, axes = plt.subplots(2, 4, figsize=(17, 8), sharex=True, sharey="row")
    for col, prec in enumerate(precs):
        pts = points(ds, prec)
        for row in range(2):
            _panel(axes[row][col], ds, pts, prec, row, col)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab if not lab.startswith("dense") else "dense (same precision)", h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(5, len(handles)), fontsize=8)
    fig.suptitle(f"{name}: accuracy vs table bytes; dashed = dense fp32 float model, grey band = AUC within "
                 f"{AUC_TOL} of it; labels = parameter-reduction ratio; ROBE exact: float panel = the exact "
                 "model in torch, artifact panels = its aligned projection", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speed(speed: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(speed["ms_per_call"])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.boxplot([speed["ms_per_call"][n]["rounds"] for n in names], orientation="horizontal",
               tick_labels=names)
    ax.set_xscale("log")
    ax.set_xlabel(f"ms per call (batch {speed['batch']}, {speed['tables']} ROBE tables, "
                  f"{speed['rounds']} rounds x {speed['calls_per_round']} calls, 1 thread)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
