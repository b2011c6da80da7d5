"""The drift report's label-free part: the estimated and the measured NE gap on one chart (windows
labelled by date), the per-window label-free table, the per-table / per-layer attribution and the
history of each window's records (estimate first, labels later). Blocks and figures in the formats
of lowprec.drift.report, which calls `estimate_figure` and `estimate_blocks`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lowprec.drift.alarm import pct

TOP_PARTS = 8


def _nan(x: Any, scale: float = 100.0) -> float:
    return float("nan") if x is None else x * scale


def estimate_figure(d: Any, out: Path) -> dict[str, str]:
    """estimate.png: estimated gap with its interval, measured gap with its bootstrap CI, by date."""
    if not d.estimates:
        return {}
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = d.estimates
    measured = {r["window"]: r for r in d.windows}
    xs = list(range(len(rows)))
    fig = Figure(figsize=(10, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.fill_between(xs, [_nan(r["est_lo"]) for r in rows], [_nan(r["est_hi"]) for r in rows], alpha=0.25,
                    color="tab:blue", label="estimate interval (where the labelled gap should fall)")
    ax.plot(xs, [_nan(r["est_gap"]) for r in rows], "o-", color="tab:blue", ms=3,
            label="estimated NE gap ΣKL/ΣH (no labels)")
    mx = [i for i, r in enumerate(rows) if r["window"] in measured and measured[r["window"]]["ne_gap"] is not None]
    m = [measured[rows[i]["window"]] for i in mx]
    if mx:
        y = [_nan(r["ne_gap"]) for r in m]
        err = [[yy - _nan(r["ne_gap_lo"]) for yy, r in zip(y, m)], [_nan(r["ne_gap_hi"]) - yy for yy, r in zip(y, m)]]
        ax.errorbar(mx, y, yerr=err, fmt="s", color="tab:orange", ms=3, capsize=2,
                    label="measured NE gap (labels) with bootstrap CI")
    for i, r in enumerate(rows):
        if r["est_alarm"]:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.12, lw=0)
        if r["window"] not in measured:
            ax.axvspan(i - 0.5, i + 0.5, color="0.5", alpha=0.08, lw=0)
    ax.axhline(0, color="k", lw=0.5)
    step = max(1, len(rows) // 16)
    ax.set_xticks(xs[::step])
    ax.set_xticklabels([str(r["label"] or r["window"]) for r in rows][::step], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("NE_cand / NE_ref - 1 (%)")
    ax.set_title("estimated vs measured NE gap (red: estimate alarm; grey: labels pending)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "estimate.png", dpi=100)
    return {"estimate": "estimate.png"}


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _labels(r: dict[str, Any]) -> str:
    return "pending" if not r["labelled"] else "filled later" if r["filled_run_id"] is not None else "present"


def estimate_blocks(d: Any, figs: dict[str, str]) -> list[tuple]:
    if not d.estimates:
        return []
    t = d.config.estimate
    measured = {r["window"]: r for r in d.windows}
    head = ["window", "date", "labels", "estimated gap [interval]", "measured gap [CI]", "inside",
            "shift vs baseline", "Kendall τ", "|Δp| p50 / p99", "PSI", "estimate"]
    body = []
    for r in d.estimates:
        m = measured.get(r["window"])
        gap = None if m is None else m["ne_gap"]
        inside = "-" if gap is None or r["est_lo"] is None else ("yes" if r["est_lo"] <= gap <= r["est_hi"] else "no")
        body.append([r["window"], r["label"], _labels(r), f"{pct(r['est_gap'], 3)} [{pct(r['est_lo'], 3)}, "
                     f"{pct(r['est_hi'], 3)}]", "-" if m is None else f"{pct(gap, 3)} [{pct(m['ne_gap_lo'], 3)}, "
                     f"{pct(m['ne_gap_hi'], 3)}]", inside, pct(r["est_shift"], 3), _f(r["kendall_tau"]),
                     f"{r['abs_p50'] or 0:.2g} / {r['abs_p99'] or 0:.2g}", _f(r["psi"]),
                     "ALARM" if r["est_alarm"] else "ok"])
    notes = [f"window {r['window']} ({r['label']}): {r['est_reason']}" + "".join(f" | {w}" for w in r["est_warnings"])
             for r in d.estimates if r["est_alarm"] or r["est_warnings"]]
    img = [("img", figs["estimate"], "estimated and measured NE gap per window")] if "estimate" in figs else []
    return [("h2", "Before the labels: the label-free estimate"),
            ("p", "If the float reference is calibrated, the candidate's expected log-loss increase on a row is "
                  "KL(Bernoulli(p_ref) || Bernoulli(p_cand)); the estimated relative NE gap is ΣKL / ΣH(p_ref), "
                  "computed when the window is scored, before any label. Its interval is where the labelled gap "
                  "of the same rows should fall (label noise if labels ~ Bernoulli(p_ref), plus the estimate's "
                  "row-sampling noise). Rule (the [estimate] thresholds, apart from the labelled ones): alarm when "
                  f"the estimate grew more than {pct(t.gap_allowance, 3)} over the baseline window's by more than "
                  f"{t.z:g} standard errors, or lies beyond {pct(t.gap_limit, 3)} net of {t.z:g} standard errors. "
                  "docs/drift.md says when the estimate is biased (a miscalibrated float reference)."),
            *img, ("table", head, body), ("h3", "Estimate alarms and warnings"), ("ul", notes or ["none"]),
            *_attribution_blocks(d), *_history_blocks(d)]


def _attribution_blocks(d: Any) -> list[tuple]:
    if not d.attribution:
        return []
    latest = max(a["window"] for a in d.attribution)
    first = min(a["window"] for a in d.attribution)
    by = {(a["window"], a["part"]): a for a in d.attribution}
    parts = [a for a in d.attribution if a["window"] == latest and a["part"].startswith(("table:", "layer:"))]
    parts.sort(key=lambda a: -(a["kl"] or 0))
    head = ["part", f"mean KL, window {first}", f"mean KL, window {latest}", "change", f"share (window {latest})"]
    body = []
    for a in parts[:TOP_PARTS] + [by[(latest, p)] for p in ("tables:all", "layers:all", "candidate") if (latest, p) in by]:
        b = by.get((first, a["part"]))
        change = "n/a" if b is None or not b["kl"] else f"x{a['kl'] / b['kl']:.2f}"
        body.append([a["part"], "n/a" if b is None else f"{b['kl']:.3g}", f"{a['kl']:.3g}", change,
                     "n/a" if a["share"] is None else f"{a['share']:.1%}"])
    rows = by.get((latest, "candidate"), {}).get("rows")
    return [("h3", "Which table or layer moved (label-free attribution)"),
            ("p", f"The float reference with ONE part taken from the candidate (a table's pooled embeddings, or an "
                  f"MLP layer's module), on a fixed subsample of {rows} rows of the window: the mean KL that part "
                  f"alone causes. The artifact records no per-table error, so it is measured here. Top "
                  f"{TOP_PARTS} parts of the latest window, against the first window.")
            , ("table", head, body)]


def _history_blocks(d: Any) -> list[tuple]:
    if not d.events:
        return []
    head = ["window", "run", "recorded", "record", "decision"]
    body = [[e["window"], e["run_id"], e["recorded"], "label-free estimate" if e["kind"] == "estimate" else
             "labelled metrics", e["reason"]] for e in d.events[-40:]]
    return [("h3", "History: each window's label-free record, then its labelled one (latest 40)"),
            ("table", head, body)]
