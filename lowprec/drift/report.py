"""The drift report, regenerated from the database on every run: report.md + index.html + PNG figures.

The content is built once as a list of blocks (heading, paragraph, image, table, list) and rendered
twice, to Markdown and to standalone HTML (figures by relative path, no external assets), so the two
never disagree. Figures use matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch): both models' NE/AUC/calibration per window, the paired NE gap with its bootstrap
band and the CUSUM, the label-free estimate beside the measured gap (lowprec.drift.report_labelfree), the float model's staleness, the clipping rates, the tiered tables' traffic per tier (lowprec.drift.report_tiers). The directory is replaced
atomically; a directory that is not a drift report is never replaced.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowprec.drift.alarm import DriftConfig, pct
from lowprec.drift.report_labelfree import estimate_blocks, estimate_figure
from lowprec.drift.report_tiers import tier_blocks, tier_figure
from lowprec.errors import InputError
from lowprec.fileio import atomic_dir

MARKER = ".lowprec-drift-report"
Block = tuple


@dataclass
class ReportData:
    windows: list[dict[str, Any]]
    clipping: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    recalibrations: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    meta: dict[str, str]
    config: DriftConfig
    db: str
    bayes_auc: dict[int, float] = field(default_factory=dict)  # per window, when the data knows its truth
    estimates: list[dict[str, Any]] = field(default_factory=list)  # label-free records (report_labelfree)
    attribution: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    tier_shares: list[dict[str, Any]] = field(default_factory=list)  # tiered tables (report_tiers)
    recal_tiers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the latest run's notes (revised labels, thresholds, ...)


def gather(store: Any, config: DriftConfig) -> ReportData:
    meta = {k: store.meta(k) or "" for k in ("reference", "reference_sha256", "candidate",
                                            "candidate_sha256", "baseline_window", "expected_gap",
                                            "tier_layout")}
    return ReportData(store.windows(), store.clipping(), store.table_errors(), store.recalibrations(),
                      store.runs(), meta, config, str(store.path), estimates=store.labelfree(),
                      attribution=store.attributions(), events=store.events(),
                      tier_shares=store.tier_shares(), recal_tiers=store.recal_tier_shares())


def check_report_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise InputError(f"--report {out} exists and is not a lowprec drift report; refusing to replace it")


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(row: dict[str, Any], key: str) -> str:
    return f"{pct(row[key])} [{pct(row[key + '_lo'])}, {pct(row[key + '_hi'])}]"


def write_report(out: Path, d: ReportData) -> None:
    check_report_dir(out)
    with atomic_dir(out, "drift-report") as tmp:
        figs = draw_figures(d, tmp)
        blocks = build_blocks(d, figs)
        (tmp / "report.md").write_text(to_markdown(blocks))
        (tmp / "index.html").write_text(to_html(blocks))
        (tmp / MARKER).write_text("written by lowprec drift; replaced on every run\n")


# ----------------------------------------------------------------------------- figures

def _axes_alarm(ax, xs: list[int], alarms: list[int]) -> None:
    for w in alarms:
        ax.axvspan(w - 0.5, w + 0.5, color="tab:red", alpha=0.12, lw=0)
    ax.set_xticks(xs if len(xs) <= 24 else xs[:: max(1, len(xs) // 12)])
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _col(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [float("nan") if r[key] is None else r[key] * scale for r in rows]


def _fig_metrics(d: ReportData, xs: list[int], alarms: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 8))
    for i, (key, title) in enumerate((("ne", "NE"), ("auc", "AUC"), ("calibration", "calibration"))):
        ax = fig.add_subplot(3, 1, i + 1)
        ax.plot(xs, _col(d.windows, f"ref_{key}"), "o-", label="reference (float)")
        ax.plot(xs, _col(d.windows, f"cand_{key}"), "s--", label="candidate (quantized)")
        ax.set_ylabel(title)
        _axes_alarm(ax, xs, alarms)
    fig.axes[0].legend(loc="best")
    fig.axes[0].set_title("both models per window (red: quantization alarm)")
    fig.axes[-1].set_xlabel("window")
    _save(fig, path)


def _fig_gap(d: ReportData, xs: list[int], alarms: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    t, rows = d.config.alarm, d.windows
    fig = Figure(figsize=(9, 6))
    ax = fig.add_subplot(2, 1, 1)
    ax.fill_between(xs, _col(rows, "ne_gap_lo", 100), _col(rows, "ne_gap_hi", 100), alpha=0.3,
                    label="bootstrap CI")
    ax.plot(xs, _col(rows, "ne_gap", 100), "o-", label="NE_cand / NE_ref - 1")
    centre = float(d.meta.get("expected_gap") or 0.0)  # limits sit around the validated gap
    for y, style in ((t.ne_gap_limit, "r--"), (t.ne_gap_allowance, "y:")):
        for sign in ((1, -1) if t.two_sided else (1,)):
            ax.plot([xs[0], xs[-1]], [100 * (centre + sign * y)] * 2, style)
    ax.axhline(0, color="k", lw=0.5)
    if centre:
        ax.axhline(100 * centre, color="g", lw=1, label="validated gap of the plan")
    ax.set_ylabel("NE gap (%)")
    ax.legend(loc="best")
    _axes_alarm(ax, xs, alarms)
    ax = fig.add_subplot(2, 1, 2)
    ax.plot(xs, _col(rows, "cusum_up"), "o-", label="CUSUM up (worse)")
    ax.plot(xs, _col(rows, "cusum_down"), "s--", label="CUSUM down (diverging)")
    ax.axhline(t.cusum_h, color="r", ls="--", label="h")
    ax.set_ylabel("CUSUM")
    ax.set_xlabel("window")
    ax.legend(loc="best")
    _axes_alarm(ax, xs, alarms)
    _save(fig, path)


def _fig_staleness(d: ReportData, xs: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, _col(d.windows, "stale_ne", 100), "o-", label="float NE vs baseline (%)")
    ax.plot(xs, _col(d.windows, "stale_calibration", 100), "s--", label="float calibration vs baseline (%)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"model staleness ({_baseline(d)})")
    ax.set_xlabel("window")
    ax.legend(loc="best")
    _axes_alarm(ax, xs, [])
    _save(fig, path)


def _fig_clipping(d: ReportData, xs: list[int], alarms: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for layer in sorted({c["layer"] for c in d.clipping}):
        pts = [(c["window"], 100 * (c["clip_rate"] or 0.0)) for c in d.clipping if c["layer"] == layer]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=layer)
    ax.set_ylabel("inputs clipped (%)")
    ax.set_xlabel("window")
    ax.legend(loc="best")
    _axes_alarm(ax, xs, alarms)
    _save(fig, path)


def draw_figures(d: ReportData, out: Path) -> dict[str, str]:
    """Write the PNGs into `out`; returns name -> relative path."""
    if not d.windows:
        return estimate_figure(d, out)
    xs = [r["window"] for r in d.windows]
    alarms = [r["window"] for r in d.windows if r["alarm"]]
    _fig_metrics(d, xs, alarms, out / "metrics.png")
    _fig_gap(d, xs, alarms, out / "gap.png")
    _fig_staleness(d, xs, out / "staleness.png")
    figs = {"metrics": "metrics.png", "gap": "gap.png", "staleness": "staleness.png", **estimate_figure(d, out),
            **tier_figure(d, out)}
    if d.clipping:
        _fig_clipping(d, xs, alarms, out / "clipping.png")
        figs["clipping"] = "clipping.png"
    return figs


# ----------------------------------------------------------------------------- content

def _summary(d: ReportData) -> list[Block]:
    rows, m, t = d.windows, d.meta, d.config.alarm
    alarms = [r for r in rows if r["alarm"]]
    est = {e["window"]: e for e in d.estimates if e["est_alarm"]}  # an estimate alarm exits 1 too
    labels = {**{e["window"]: e["label"] for e in d.estimates}, **{r["window"]: r["label"] for r in rows}}
    either = sorted({r["window"] for r in alarms} | set(est))

    def kind(w: int) -> str:
        return "" if w not in est else ", by both rules" if w in {r["window"] for r in alarms} else \
            ", by the label-free estimate"
    latest = max(labels) if labels else None
    state = "no window recorded" if latest is None else \
        f"latest window {latest} ({labels[latest]}): {'ALARM' + kind(latest) if latest in either else 'healthy'}"
    first = f"first alarm: window {either[0]} ({labels[either[0]]}{kind(either[0])})" if either else "no alarm"
    return [
        ("h1", "lowprec drift report"),
        ("p", f"Reference (float) `{m['reference']}` (sha256 {m['reference_sha256'][:12]}), candidate "
              f"`{m['candidate']}` (sha256 {m['candidate_sha256'][:12]}). Database `{d.db}`; generated "
              f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}."),
        ("p", f"{len(rows)} windows recorded, {len(alarms)} in alarm"
              f"{f', {len(est)} in estimate alarm' if est else ''}; {first}; {state}."),
        *([("h3", "Notes from the latest run"), ("ul", d.notes)] if d.notes else []),
        *([("p", f"Label-free: {len(d.estimates)} windows estimated, "
                 f"{sum(not e['labelled'] for e in d.estimates)} still awaiting their labels, "
                 f"{sum(bool(e['est_alarm']) for e in d.estimates)} in estimate alarm (see 'Before the labels').")]
          if d.estimates else []),
        ("p", f"Rule: alarm when the NE gap's {100 * d.config.bootstrap.confidence:g}% CI{_minus(d)} lies beyond "
              f"{'±' if t.two_sided else '+'}{100 * t.ne_gap_limit:.2f}%, or the CUSUM of (gap - "
              f"{100 * t.ne_gap_allowance:.2f}%)/se exceeds h={t.cusum_h:g}, or AUC drops by more than "
              f"{t.auc_drop_limit:g} (DeLong p < {t.auc_alpha:g}), or the calibration gap's CI lies "
              f"beyond ±{100 * t.calibration_gap_limit:.2f}%. Windows with fewer than {t.min_positives} "
              f"positive or {t.min_negatives} negative labels raise no label-based alarm. Staleness of "
              f"the float model is reported apart and never raises the quantization alarm (docs/drift.md)."),
    ]


def _minus(d: ReportData) -> str:
    """The validated gap the rule subtracts first, said where the limits are stated."""
    e = float(d.meta.get("expected_gap") or 0.0)
    return f", after subtracting the plan's validated gap {pct(e)}," if e else ""


def _models_section(d: ReportData, figs: dict[str, str]) -> list[Block]:
    head = ["window", "label", "rows", "NE ref", "NE cand", "AUC ref", "AUC cand", "calib ref", "calib cand"]
    body = [[r["window"], r["label"], r["rows"], _f(r["ref_ne"]), _f(r["cand_ne"]), _f(r["ref_auc"]),
             _f(r["cand_auc"]), _f(r["ref_calibration"], 3), _f(r["cand_calibration"], 3)] for r in d.windows]
    img = [("img", figs["metrics"], "NE, AUC and calibration of both models")] if "metrics" in figs else []
    return [("h2", "Both models per window"), *img, ("table", head, body), *_bayes_line(d)]


def _bayes_line(d: ReportData) -> list[Block]:
    rows = [r for r in d.windows if r["window"] in d.bayes_auc and r["ref_auc"] is not None]
    return [("p", "Bayes-optimal AUC (the data's true click probabilities) and the float model's gap to it: "
                  + "; ".join(f"window {r['window']} {_f(d.bayes_auc[r['window']])} (gap "
                              f"{_f(d.bayes_auc[r['window']] - r['ref_auc'])})" for r in rows))] if rows else []


def _gap_section(d: ReportData, figs: dict[str, str]) -> list[Block]:
    head = ["window", "NE gap [CI]", "ΔAUC (DeLong p drop)", "calibration gap [CI]", "PSI",
            "CUSUM up/down", "decision"]
    body = [[r["window"], _ci(r, "ne_gap"), f"{_f(r['auc_diff'])} (p={_f(r['auc_p_drop'], 3)})",
             _ci(r, "cal_gap"), _f(r["psi"], 3), f"{_f(r['cusum_up'], 1)} / {_f(r['cusum_down'], 1)}",
             "ALARM" if r["alarm"] else "ok"] for r in d.windows]
    notes = [f"window {r['window']}: {r['reason']}" + "".join(f" | warning: {w}" for w in r["warnings"])
             for r in d.windows if r["alarm"] or r["warnings"]]
    img = [("img", figs["gap"], "paired NE gap with bootstrap interval, and CUSUM")] if "gap" in figs else []
    return [("h2", "Paired gap: candidate vs reference"), *img, ("table", head, body),
            ("h3", "Alarms and warnings"), ("ul", notes or ["none"])]


def _staleness_section(d: ReportData, figs: dict[str, str]) -> list[Block]:
    head = ["window", "NE ref", "NE vs baseline", "calib ref", "calib vs baseline", "note"]
    body = [[r["window"], _f(r["ref_ne"]), pct(r["stale_ne"], 1), _f(r["ref_calibration"], 3),
             pct(r["stale_calibration"], 1), "; ".join(r["staleness"]) or "-"] for r in d.windows]
    img = [("img", figs["staleness"], "float model staleness")] if "staleness" in figs else []
    return [("h2", f"Model staleness (float model vs {_baseline(d)})"),
            ("p", "How the float reference itself ages against its baseline: the first recorded window with "
                  f"at least {d.config.alarm.min_positives} positive and {d.config.alarm.min_negatives} negative "
                  "labels and a finite NE. This is the model's drift, not quantization's fault: it never raises "
                  "the quantization alarm."),
            *img, ("table", head, body)]


def _baseline(d: ReportData) -> str:
    b = d.meta.get("baseline_window")
    return f"baseline window {b}" if b else "no baseline yet"


def _clipping_section(d: ReportData, figs: dict[str, str]) -> list[Block]:
    if not d.clipping:
        return [("h2", "Activation clipping"), ("p", "The candidate has no statically calibrated int8 layer.")]
    layers = sorted({c["layer"] for c in d.clipping})
    calib = {c["layer"]: c["calib_clip_rate"] for c in d.clipping}
    head = ["window"] + [f"{n} (calib {'n/a' if calib[n] is None else f'{calib[n]:.2%}'})" for n in layers]
    by = {(c["window"], c["layer"]): c["clip_rate"] for c in d.clipping}
    body = [[w] + [("n/a" if by.get((w, n)) is None else f"{by[(w, n)]:.3%}") for n in layers]
            for w in sorted({c["window"] for c in d.clipping})]
    img = [("img", figs["clipping"], "clipping rates")] if "clipping" in figs else []
    return [("h2", "Activation clipping of the int8 layers (share of inputs outside the static range)"),
            *img, ("table", head, body)]


def _tables_section(d: ReportData) -> list[Block]:
    if not d.tables:
        return []
    by: dict[str, list[dict[str, Any]]] = {}
    for t in d.tables:
        by.setdefault(t["table_name"], []).append(t)
    head = ["table", "SQNR dB (first window)", "SQNR dB (latest)", "worst SQNR dB", "rel. error (latest)",
            "MSE (latest)", "note"]
    body = []
    for name, ts in by.items():
        sq = [t["sqnr_db"] for t in ts if t["sqnr_db"] is not None]
        body.append([name, _f(ts[0]["sqnr_db"], 1), _f(ts[-1]["sqnr_db"], 1), _f(min(sq), 1) if sq else "n/a",
                     "n/a" if ts[-1]["rel"] is None else f"{ts[-1]['rel']:.3g}",
                     "n/a" if ts[-1]["mse"] is None else f"{ts[-1]['mse']:.3g}", ts[-1]["note"] or "-"])
    return [("h2", "Per-table quantization error, weighted by each window's id frequencies"),
            ("p", "rel = Σ lookups·‖w - q‖² / Σ lookups·‖w‖² per table (SQNR = -10 log10 rel). A tiered "
                  "table's rows are each read from their own tier, at its precision: its error grows when "
                  "lookups move to the cold tier."),
            ("table", head, body)]


def _recal_section(d: ReportData) -> list[Block]:
    if not d.recalibrations:
        return []
    head = ["alarm window", "source", "calibrated on", "method", "artifact", "NE gap after [CI]",
            "still alarm", "closes gap"]
    body = [[r["alarm_window"], r["source"], ",".join(map(str, json.loads(r["calib_windows"]))), r["method"],
             r["artifact"], _ci(r, "ne_gap"), "yes" if r["alarm"] else "no", "yes" if r["closes"] else "no"]
            for r in d.recalibrations]
    return [("h2", "Recalibration"), ("table", head, body), ("ul", [r["reason"] for r in d.recalibrations])]


def _runs_section(d: ReportData) -> list[Block]:
    head = ["run", "started", "finished", "status", "windows requested"]
    body = [[r["id"], r["started"], r["finished"] or "-", r["status"], r["windows"]] for r in d.runs]
    return [("h2", "Runs"), ("table", head, body)]


def build_blocks(d: ReportData, figs: dict[str, str]) -> list[Block]:
    return [*_summary(d), *_models_section(d, figs), *_gap_section(d, figs), *estimate_blocks(d, figs),
            *_staleness_section(d, figs),
            *_clipping_section(d, figs), *tier_blocks(d, figs), *_tables_section(d), *_recal_section(d),
            *_runs_section(d)]


# ----------------------------------------------------------------------------- rendering

def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in b[1]))
        elif kind == "table":
            cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
            lines = ["| " + " | ".join(map(cell, b[1])) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(map(cell, r)) + " |" for r in b[2]]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
        "img{max-width:100%}code{background:#f3f3f3}")


_CODE = re.compile(r"`([^`]*)`")


def to_html(blocks: list[Block]) -> str:
    e = html.escape
    parts = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3", "p"):
            text = _CODE.sub(r"<code>\1</code>", e(b[1]))
            parts.append(f"<{kind}>{text}</{kind}>")
        elif kind == "img":
            parts.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>lowprec drift report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
