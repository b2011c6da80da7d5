"""The search report: sensitivity per item, the bytes-vs-NE frontier, the plan, validation, cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from lowprec.report import Doc, save_figure
from lowprec.search.accept import pct
from lowprec.search.run import SearchResult
from lowprec.search.solver import Budget, predicted, solve


def _sensitivity_figure(result: SearchResult, directory: Path) -> str:
    items = list(result.items)
    fig, ax = plt.subplots(figsize=(10, max(3, 0.28 * len(items))))
    labels = sorted({o.key.split("|", 1)[1] for opts in result.items.values() for o in opts
                     if not o.is_float_baseline})
    # one colour and marker per option (a precision, or a precision with sharing): tab10 repeated
    # its colours past ten options (fp16 and int8 with hot sharing both blue)
    cmap, markers = plt.get_cmap("tab20"), "os^Dv<>P"
    for j, label in enumerate(labels):
        ys, xs = [], []
        for i, item in enumerate(items):
            for o in result.items[item]:
                if o.key.split("|", 1)[1] == label:
                    ys.append(i)
                    xs.append(100 * result.sensitivity[o.key].d_ne)
        ax.scatter(xs, ys, label=label, color=cmap(j % 20), marker=markers[(j // 20 + j) % len(markers)], s=18)
    ax.set_yticks(range(len(items)), items, fontsize=7)
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.axvline(100 * result.plan.info.budgets.max_ne_increase, color="red", ls="--", lw=1,
               label="NE budget")
    ax.set_xlabel("NE increase vs float, % (each option alone, calibration windows)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside, not over, the points
    ax.grid(alpha=0.3)
    return save_figure(fig, directory, "sensitivity.png")


def frontier(result: SearchResult, points: int = 16) -> list[tuple[float, int, float]]:
    """(NE budget, bytes, predicted NE) of the MILP optimum for a sweep of NE budgets (AUC free)."""
    b = result.plan.info.budgets
    out = []
    for k in range(points):
        ne = b.max_ne_increase * (10 ** (-2 + 3 * k / (points - 1)))
        try:
            chosen = solve(result.items, result.sensitivity, Budget(ne, 1.0, b.memory_bytes))
        except Exception:  # infeasible memory budget at this point
            continue
        out.append((ne, sum(o.bytes for o in chosen.values()), predicted(chosen, result.sensitivity).d_ne))
    return out


def _frontier_figure(result: SearchResult, summary: dict[str, Any], directory: Path) -> str:
    pts = frontier(result)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if pts:
        ax.plot([100 * p[2] for p in pts], [p[1] for p in pts], "o-", ms=3, label="MILP frontier (predicted)")
    for r in result.rounds:
        v = r["validated"]
        ax.errorbar(100 * v["ne_increase"], r["bytes"],
                    xerr=[[100 * (v["ne_increase"] - v["ne_increase_ci"][0])],
                          [100 * (v["ne_increase_ci"][1] - v["ne_increase"])]],
                    fmt="s", color="green" if r["fits"] else "red", ms=6,
                    label=f"round {r['round']} ({'accepted' if r['fits'] else 'rejected'})")
    ax.axvline(100 * result.plan.info.budgets.max_ne_increase, color="red", ls="--", lw=1)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("log")
    ax.set_xlabel("NE increase vs float, %")
    ax.set_ylabel("table + layer bytes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, directory, "frontier.png")


def _validation(doc: Doc, title: str, v: Any, fits: dict[str, bool]) -> None:
    doc.heading(title)
    doc.table(["metric", "float", "plan", "change", "95% interval"], [
        ["NE", v.float_ne, v.plan_ne, f"{100 * v.ne_increase:+.4f}%",
         f"[{100 * v.ne_increase_ci[0]:+.4f}%, {100 * v.ne_increase_ci[1]:+.4f}%]"],
        ["AUC", v.float_auc, v.plan_auc, f"{-v.auc_drop:+.5f}",
         f"[{-v.auc_drop_ci[1]:+.5f}, {-v.auc_drop_ci[0]:+.5f}]"],
    ])
    doc.para(f"Budget holds for the point estimate: {'yes' if fits['point'] else 'no'}; for the whole "
             f"interval: {'yes' if fits['interval'] else 'no'}.")


def _ci(v: dict[str, Any], key: str, scale: float) -> str:
    lo, hi = v[f"{key}_ci"]
    digits, unit = (4, "%") if scale == 100 else (5, "")
    return f"{scale * v[key]:+.{digits}f}{unit} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def write_report(result: SearchResult, summary: dict[str, Any], directory: Path) -> Path:
    doc = Doc("lowprec search report")
    info = result.plan.info
    b = info.budgets
    doc.para(f"Budgets: NE increase <= {pct(b.max_ne_increase)}, AUC drop <= {b.max_auc_drop:g}"
             + (f", memory <= {b.memory_bytes:,} bytes" if b.memory_bytes is not None else "")
             + f". Calibration windows {list(info.windows.calibration)}, evaluation windows "
               f"{list(info.windows.evaluation)}.")
    doc.para(f"Result: {summary['total_bytes']:,} bytes (tables {summary['table_bytes']:,}, layers "
             f"{summary['layer_bytes']:,}) vs {summary['fp32_bytes']:,} in fp32: "
             f"{summary['total_compression']:.2f}x smaller (tables alone {summary['compression']:.2f}x, as "
             f"`inspect` reports them). {result.evaluations} evaluations "
             f"({sum(len(v) - 1 for v in result.items.values())} sensitivity + {len(result.rounds)} "
             f"validation), {result.seconds:.1f} s wall time.")
    if result.message:
        doc.para(f"Warning: {result.message}")
    for w in summary.get("warnings", []):
        doc.para(f"Warning: {w}")
    v = result.validation
    if v is not None:
        _validation(doc, "Validated on the evaluation windows (used to select the plan)", v, summary["validated_fits"])
    else:
        doc.para("No quantized plan validated within the budgets; the plan keeps every item in fp32.")
    if result.test is not None:
        _validation(doc, f"Test windows {list(info.windows.test)} (never seen by the search)", result.test,
                    summary["tested_fits"])
    doc.heading("Chosen plan")
    cost = result.cost
    if cost:
        fp32_us = sum(cost[opts[0].key] for opts in result.items.values())
        doc.para(f"Predicted, as the solver adds it up (each item's marginal time on the calibration batch, "
                 f"summed; a call's fixed costs are not in it): {info.predicted_latency_us:,.0f} us against "
                 f"{fp32_us:,.0f} us in fp32. Fastest: the quickest option of the item, whatever its bytes or loss.")
    whole = info.measured_latency_us
    if whole:
        speedup = info.whole_speedup or {}
        doc.para("Timed whole (each plan converted in full and called on the calibration batches, side by side; "
                 "a uniform plan replaces the searched one when it is >= 3% faster, paired per repeat, and "
                 "validates): " + ", ".join(f"{name} {us:,.0f} us" for name, us in whole.items()) + " a call"
                 + ("; paired, " + ", ".join(f"{name} ran {r:.2f}x the searched plan's speed"
                                             for name, r in speedup.items()) if speedup else "") + "."
                 + (" The paired ratio (the median of per-repeat ratios, each repeat timing both plans back to "
                    "back) is what is judged: on a loaded machine the medians of the separate timings can point "
                    "the other way." if speedup else ""))
    rows = []
    for item, o in result.chosen.items():
        s = result.sensitivity[o.key]
        row = [item, o.key.split("|", 1)[1], o.bytes, result.items[item][0].bytes,
               f"{100 * s.d_ne:+.4f}%", f"{s.d_auc:+.5f}"]
        if cost:
            fast = min(result.items[item], key=lambda x: cost[x.key])
            row += [f"{cost[o.key]:,.1f}", f"{cost[result.items[item][0].key]:,.1f}",
                    f"{fast.key.split('|', 1)[1]} {cost[fast.key]:,.1f}"]
        rows.append(row)
    doc.table(["item", "choice", "bytes", "fp32 bytes", "NE alone", "AUC drop alone"]
              + (["us", "fp32 us", "fastest (us)"] if cost else []), rows)
    doc.heading("Sensitivity")
    doc.figure(_sensitivity_figure(result, directory), "NE increase of each option alone")
    doc.heading("Frontier")
    doc.figure(_frontier_figure(result, summary, directory),
               "Bytes vs NE increase: MILP optimum per NE budget (predicted), and validated plans")
    doc.heading("Validation rounds")
    doc.para(f"Acceptance rule: {info.accept or 'point'} "
             + ("(the upper ends of the two-sided 95% intervals must fit the budget: one-sided 97.5% confidence "
                "for NE increase and AUC drop each)." if info.accept == "interval"
                else "(the point estimates must fit the budget; the intervals are reported, not used)."))
    doc.table(["round", "bytes", "predicted NE", "validated NE [95% CI]", "validated AUC drop [95% CI]",
               "accepted", "why"],
              [[r["round"], r["bytes"], f"{100 * r['predicted']['d_ne']:+.4f}%",
                _ci(r["validated"], "ne_increase", 100),
                _ci(r["validated"], "auc_drop", 1), "yes" if r["fits"] else "no",
                "; ".join(filter(None, [r.get("timed_whole"), r.get("verdict", {}).get("reason", "")]))]
               for r in result.rounds])
    return doc.write(directory)
