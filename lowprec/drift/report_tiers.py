"""The drift report's panel for tiered tables: how much of each table's traffic its upper tiers serve.

A tiered table (lowprec.serve.tiers) keeps the rows that calibration counted most often in small,
precise, contiguous upper tiers and every other row in a coarse cold tier. Its speed and its
accuracy both rest on the upper tiers serving most lookups. The drift job records each tier's share
of every window's lookups (`tier_share`, lowprec.drift.tiers) and, when it recalibrates, the new
artifact's shares on the alarmed window (`recal_tier_share`): a recalibrated artifact is converted
with the new calibration's access counts, so its tiers are re-ranked. This module turns those rows
into one figure (per table, the upper tiers' shares stacked, by window and date, the share of rows
they hold dashed, alarms shaded, recalibrations marked) and the blocks that explain it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_PLOTTED = 6  # tables drawn in the figure (all are in the table below it)
DROP_POINTS = 0.10  # a fall of the upper tiers' share by this much since the first window is called out


def layout(d: Any) -> dict[str, list[dict[str, Any]]]:
    """Table -> [{tier, rows, precision}] as the job stored it (meta `tier_layout`); {} if unknown."""
    try:
        return json.loads(d.meta.get("tier_layout") or "{}")
    except ValueError:
        return {}


def _by_table(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[int, float | None]]]:
    """Table -> window -> tier -> share."""
    out: dict[str, dict[int, dict[int, float | None]]] = {}
    for r in rows:
        out.setdefault(r["table_name"], {}).setdefault(r["window"], {})[r["tier"]] = r["share"]
    return out


def _cold(name: str, shares: dict[int, dict[int, Any]], lay: dict[str, Any]) -> int:
    """The cold tier's index: the last tier of the stored layout, else the highest tier seen."""
    tiers = lay.get(name)
    return tiers[-1]["tier"] if tiers else max(t for s in shares.values() for t in s)


def _upper(tiers: dict[int, float | None], cold: int) -> float | None:
    vals = [s for t, s in tiers.items() if t != cold]
    return None if any(v is None for v in vals) else sum(vals)


def _recal_upper(d: Any) -> dict[tuple[int, str, str], float | None]:
    """(alarm window, source, table) -> the recalibrated artifact's upper-tier share on that window."""
    lay, out = layout(d), {}
    grouped: dict[tuple[int, str, str], dict[int, Any]] = {}
    for r in d.recal_tiers:
        grouped.setdefault((r["alarm_window"], r["source"], r["table_name"]), {})[r["tier"]] = r["share"]
    for key, tiers in grouped.items():
        out[key] = _upper(tiers, _cold(key[2], {0: tiers}, lay))
    return out


def _row_share(name: str, lay: dict[str, Any]) -> float | None:
    tiers = lay.get(name)
    if not tiers:
        return None
    total = sum(t["rows"] for t in tiers)
    return sum(t["rows"] for t in tiers[:-1]) / total if total else None


def window_labels(d: Any) -> dict[int, str]:
    """Window -> label, from the labelled rows and the label-free ones (windows still awaiting labels)."""
    return {**{r["window"]: r["label"] for r in d.estimates}, **{r["window"]: r["label"] for r in d.windows}}


def _tick(w: int, labels: dict[int, str]) -> str:
    label = labels.get(w) or ""
    return f"{w}\n{label}" if label and len(label) <= 12 else str(w)


def tier_figure(d: Any, out: Path) -> dict[str, str]:
    """tiers.png: one panel per tiered table (the first MAX_PLOTTED); {} when there is none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by, lay = _by_table(d.tier_shares), layout(d)
    if not by:
        return {}
    labels = window_labels(d)
    alarms = [r["window"] for r in d.windows if r["alarm"]]
    recal = _recal_upper(d)
    names = list(by)[:MAX_PLOTTED]
    fig = Figure(figsize=(11, 2.8 * len(names) + 0.6))
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1)
        shares, cold = by[name], _cold(name, by[name], lay)
        xs = sorted(shares)
        uppers = sorted({t for s in shares.values() for t in s if t != cold})
        desc = {t["tier"]: f"{t['precision']}, {t['rows']} rows" for t in lay.get(name, [])}
        ys = [[100 * (shares[w].get(t) or 0.0) for w in xs] for t in uppers]
        ax.stackplot(xs, *ys, alpha=0.6, labels=[f"tier {t} ({desc[t]})" if t in desc else f"tier {t}"
                                                  for t in uppers])
        total = [sum(col) for col in zip(*ys)] if ys else []
        ax.plot(xs, total, "o-", color="tab:blue", lw=1.5, ms=4, label="upper tiers together")
        rows = _row_share(name, lay)
        if rows is not None:
            ax.axhline(100 * rows, color="k", ls="--", lw=1, label=f"their share of rows ({rows:.1%})")
        for w in alarms:
            ax.axvspan(w - 0.5, w + 0.5, color="tab:red", alpha=0.10, lw=0)
        for (w, source, table), share in recal.items():
            if table == name:
                ax.axvline(w, color="tab:purple", ls=":", lw=1.5)
                if share is not None:
                    ax.plot([w], [100 * share], "D", color="tab:purple", ms=8,
                            label=f"re-ranked by recalibration ({source}), window {w}")
        ax.set_ylim(0, 105)
        ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
        ax.set_xticks(xs if len(xs) <= 16 else xs[:: max(1, len(xs) // 8)])
        ax.set_xticklabels([_tick(w, labels) for w in ax.get_xticks().astype(int)], fontsize=8)
        ax.set_ylabel("lookups served (%)")
        ax.set_title(f"table {name}: lookups served by its upper tiers (stacked; red: alarm)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.axes[-1].set_xlabel("window (and its label)")
    fig.tight_layout()
    fig.savefig(out / "tiers.png", dpi=100)
    return {"tiers": "tiers.png"}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _sqnr(d: Any, name: str, w: int) -> float | None:
    return next((t["sqnr_db"] for t in d.tables if t["table_name"] == name and t["window"] == w), None)


def _table_line(d: Any, name: str, shares: dict[int, dict[int, Any]], lay: dict[str, Any],
                labels: dict[int, str], recal: dict[tuple[int, str, str], Any]) -> str:
    cold = _cold(name, shares, lay)
    tiers = lay.get(name) or []
    total = sum(t["rows"] for t in tiers)
    kept = ", ".join(f"tier {t['tier']}: {t['rows']} rows ({t['rows'] / total:.1%}) at {t['precision']}"
                     for t in tiers[:-1]) if total else ""
    first, last = min(shares), max(shares)
    a, b = _upper(shares[first], cold), _upper(shares[last], cold)
    text = f"table {name}: " + (f"{kept}, cold: {tiers[-1]['rows']} rows at {tiers[-1]['precision']}. "
                                if kept else "")
    text += f"The upper tiers served {_pct(a)} of its lookups in window {first} ({labels.get(first, '')})"
    if last != first:
        text += f" and {_pct(b)} in window {last} ({labels.get(last, '')})"
        if a is not None and b is not None:
            text += f", {100 * (b - a):+.1f} points"
    text += "."
    qa, qb = _sqnr(d, name, first), _sqnr(d, name, last)
    if last != first and qa is not None and qb is not None:
        text += (f" Its lookup-weighted quantization error (each row at its tier's precision) went from "
                 f"SQNR {qa:.1f} dB to {qb:.1f} dB.")
    if a is not None and b is not None and a - b >= DROP_POINTS:
        text += (" Popularity has moved to rows ranked cold: re-rank the tiers (calibrate on recent windows "
                 "and convert again).")
    for (w, source, table), share in sorted(recal.items()):
        if table == name and w in shares:
            text += (f" Recalibrated for alarm window {w} ({source} windows): re-ranked, its upper tiers serve "
                     f"{_pct(share)} of window {w}'s lookups (deployed: {_pct(_upper(shares[w], cold))}).")
    return text


def tier_blocks(d: Any, figs: dict[str, str]) -> list[tuple]:
    """The section's blocks; [] when the candidate has no tiered table."""
    by, lay = _by_table(d.tier_shares), layout(d)
    if not by:
        return []
    labels = window_labels(d)
    recal = _recal_upper(d)
    head = ["window", "label", "table", "share per upper tier (0, 1, ...)", "upper tiers", "cold tier"]
    body = []
    for name, shares in by.items():  # table by table, so each table's trend reads down the rows
        cold = _cold(name, shares, lay)
        for w in sorted(shares):
            ups = [_pct(s) for t, s in sorted(shares[w].items()) if t != cold]
            body.append([w, labels.get(w, ""), name, " / ".join(ups), _pct(_upper(shares[w], cold)),
                         _pct(shares[w].get(cold))])
    img = [("img", figs["tiers"], "tiered tables: lookups served by the upper tiers per window")] \
        if "tiers" in figs else []
    if img and len(by) > MAX_PLOTTED:
        img.append(("p", f"The figure draws the first {MAX_PLOTTED} of the {len(by)} tiered tables; "
                         f"the lines and the table below cover all."))
    return [
        ("h2", "Tiered tables: traffic served by the upper tiers"),
        ("p", "A tiered table keeps the rows that the calibration counted most often in small, precise, "
              "packed upper tiers and every other row in a coarse cold tier (int4/int2). It is fast and "
              "accurate while the upper tiers serve most lookups. Below, per window, the share of each "
              "table's lookups they served (stacked per tier; dashed: the share of the table's rows they "
              "hold, what they would serve if traffic were uniform). A drop means popularity moved to rows "
              "ranked cold: more lookups read coarse cold codes and leave the cache-resident hot rows, so "
              "serving gets slower and less precise, often before any accuracy alarm. The ranking is fixed "
              "when the artifact is converted; re-ranking means calibrating on recent windows and "
              "converting again (`--on-alarm recalibrate` does so on an alarm; diamonds mark the "
              "recalibrated artifact's share on the alarmed window)."),
        *img,
        ("ul", [_table_line(d, name, shares, lay, labels, recal) for name, shares in by.items()]),
        ("table", head, body),
    ]
