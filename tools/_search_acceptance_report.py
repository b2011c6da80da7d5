"""Markdown tables from tools/search_acceptance.py's per-seed JSON (reports/search_acceptance/s*.json).

Deltas are against the seed's float model on the same window: relative NE increase and AUC drop. For the
uniform and rule artifacts they come from `lowprec eval` of the converted artifact (point estimates); for
the searched plans from the search's own paired measurement (`validated` on window 5, `tested` on 6),
which carries 95% intervals. "meets" is the point estimate within the budget (NE +0.1%, AUC -0.001).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

MB = 1e6
NE_BUDGET, AUC_BUDGET = 0.001, 0.001
VAL, TEST = 5, 6


def _windows(rec: dict | None) -> dict[int, dict[str, float]]:
    if not rec or not rec.get("ok") or not rec.get("result"):
        return {}
    return {int(m["window"]): m for m in rec["result"]["windows"]}


def _delta(var: dict | None, ref: dict | None) -> tuple[float, float] | None:
    if not var or not ref:
        return None
    return (var["ne"] - ref["ne"]) / ref["ne"], ref["auc"] - var["auc"]


def _meets(d: tuple[float, float] | None) -> bool | None:
    return None if d is None else bool(d[0] <= NE_BUDGET and d[1] <= AUC_BUDGET)


def rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant of a seed: name, kind, table bytes, (ΔNE, ΔAUC) on windows 5 and 6, intervals."""
    st = state["stages"]
    ref = _windows(st.get("float/eval"))
    out = []
    for name, rec in st.items():
        kind = name.split("/")[0]
        if kind in ("uniform", "rule") and name.endswith("/eval"):
            base = name.rsplit("/", 1)[0]
            conv = st.get(f"{base}/convert") or {}
            w = _windows(rec)
            out.append({"name": base, "kind": kind, "bytes": (conv.get("result") or {}).get("embedding_bytes"),
                        "val": _delta(w.get(VAL), ref.get(VAL)), "test": _delta(w.get(TEST), ref.get(TEST))})
        elif kind == "search" and rec.get("ok") and rec.get("result"):
            r = rec["result"]
            v, t = r.get("validated"), r.get("tested")
            out.append({"name": name.rsplit("/", 1)[0], "kind": "search", "bytes": r["table_bytes"],
                        "val": (v["ne_increase"], v["auc_drop"]) if v else None,
                        "test": (t["ne_increase"], t["auc_drop"]) if t else None,
                        "val_ci": (v["ne_increase_ci"], v["auc_drop_ci"]) if v else None,
                        "test_ci": (t["ne_increase_ci"], t["auc_drop_ci"]) if t else None,
                        "fp32": r["fp32_table_bytes"], "rounds": r["rounds"], "seconds": r["seconds"],
                        "message": r.get("message")})
    return out


def headline(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's comparison for one seed: the interval-rule plan vs the smallest uniform artifact meeting
    the budget on the test window and vs the best heuristic (the smallest meeting it on window 5)."""
    by = {r["name"]: r for r in rs}
    plan, point = by.get("search/interval"), by.get("search/point")
    uni = [r for r in rs if r["kind"] == "uniform" and _meets(r["test"])]
    rules = [r for r in rs if r["kind"] == "rule" and _meets(r["val"])]
    on_test = [r for r in rs if r["kind"] == "rule" and _meets(r["test"])]
    u = min(uni, key=lambda r: r["bytes"]) if uni else None
    h = min(rules, key=lambda r: r["bytes"]) if rules else None
    # for reference only (a look at the test window, not a choice): the smallest rule meeting it there
    ht = min(on_test, key=lambda r: r["bytes"]) if on_test else None
    return {"plan": plan, "point": point, "uniform": u, "heuristic": h, "heuristic_on_test": ht}


def _pct(x: float) -> str:
    return f"{100 * x:+.3f}%"


def _ci(d, ci) -> str:
    if d is None:
        return "n/a"
    s = f"{_pct(d[0])}, {d[1]:+.5f}"
    if ci:
        s = (f"{_pct(d[0])} [{100 * ci[0][0]:+.3f}, {100 * ci[0][1]:+.3f}], "
             f"{d[1]:+.5f} [{ci[1][0]:+.5f}, {ci[1][1]:+.5f}]")
    return s


def _yes(b: bool | None) -> str:
    return "n/a" if b is None else ("yes" if b else "**no**")


def _load(state1: Path) -> dict[int, dict[str, Any]]:
    return {int(p.stem[1:]): json.loads(p.read_text()) for p in sorted(state1.glob("s*.json"))}


def render(state_dir: Path) -> str:
    seeds = _load(state_dir)
    lines = ["# Tables rendered by `python tools/search_acceptance.py --render-only` (do not edit)", ""]
    heads = {}
    for s, state in seeds.items():
        rs = rows(state)
        heads[s] = headline(rs)
        fp32 = next((r["fp32"] for r in rs if r.get("fp32")), None)
        lines += [f"## Seed {s}", "", "ΔNE (relative) and ΔAUC drop against the float model on the same window; "
                  "searches with their paired 95% intervals.", "",
                  "| variant | table MB | x fp32 | window 5 (search validation): ΔNE, AUC drop | meets | "
                  "window 6 (test): ΔNE, AUC drop | meets |", "|---|---|---|---|---|---|---|"]
        for r in sorted(rs, key=lambda r: -(r["bytes"] or 0)):
            x = f"{fp32 / r['bytes']:.1f}x" if fp32 and r["bytes"] else ""
            mb = f"{r['bytes'] / MB:.2f}" if r["bytes"] else "n/a"
            lines.append(f"| {r['name']} | {mb} | {x} | {_ci(r['val'], r.get('val_ci'))} | {_yes(_meets(r['val']))} | "
                         f"{_ci(r['test'], r.get('test_ci'))} | {_yes(_meets(r['test']))} |")
        lines.append("")
        for r in rs:
            if r["kind"] != "search":
                continue
            lines += [f"{r['name']} ({r['seconds']:.0f} s): validation rounds on window 5", ""]
            lines += [f"- round {x['round']}: {x['bytes'] / MB:.2f} MB (tables + layers), "
                      f"{x.get('verdict', {}).get('reason', 'fits' if x['fits'] else 'over budget')}"
                      for x in r["rounds"]]
            lines.append("")
        lines += _stages(state)
    lines += _summary(heads)
    return "\n".join(lines) + "\n"


def _stages(state: dict[str, Any]) -> list[str]:
    out = ["| stage | seconds | peak RSS MB | 1-min load at start |", "|---|---|---|---|"]
    for name, rec in state["stages"].items():
        load = rec.get("load_at_start")
        out.append(f"| {name} | {rec['seconds']:.0f} | {rec['peak_rss_mb']:.0f} | "
                   f"{load[0]:.1f} |" if load else f"| {name} | {rec['seconds']:.0f} | {rec['peak_rss_mb']:.0f} | |")
    return out + [""]


def _summary(heads: dict[int, dict[str, Any]]) -> list[str]:
    out = ["## Headline per seed (targets of issue #14, deliverable 4)", "",
           "| seed | interval-rule plan MB | its test ΔNE, AUC drop | meets (test) | smallest uniform meeting it "
           "on test | plan / uniform | best heuristic (chosen on window 5) | its test ΔNE, AUC drop | meets (test) | "
           "plan / heuristic | smallest heuristic meeting it on test (reference) | plan / it | point-rule plan MB | "
           "its test ΔNE | meets (test) |", "|" + "---|" * 15]
    ratios_u, ratios_h, test_ne = [], [], []
    for s, h in heads.items():
        p, u, q, pt, qt = h["plan"], h["uniform"], h["heuristic"], h["point"], h["heuristic_on_test"]
        if p is None:
            continue
        ru = p["bytes"] / u["bytes"] if u else None
        rh = p["bytes"] / q["bytes"] if q else None
        ratios_u += [ru] if ru else []
        ratios_h += [rh] if rh else []
        test_ne += [p["test"][0]] if p["test"] else []
        out.append(f"| {s} | {p['bytes'] / MB:.2f} | {_ci(p['test'], p.get('test_ci'))} | {_yes(_meets(p['test']))} | "
                   + (f"{u['name']} {u['bytes'] / MB:.2f} MB | {ru:.3f} | " if u else "none | | ")
                   + (f"{q['name']} {q['bytes'] / MB:.2f} MB | {_ci(q['test'], None)} | {_yes(_meets(q['test']))} | "
                      f"{rh:.2f} | " if q else "none meets on window 5 | | | | ")
                   + (f"{qt['name']} {qt['bytes'] / MB:.2f} MB | {p['bytes'] / qt['bytes']:.2f} | "
                      if qt else "none | | ")
                   + (f"{pt['bytes'] / MB:.2f} | {_pct(pt['test'][0]) if pt['test'] else 'n/a'} | "
                      f"{_yes(_meets(pt['test']))} |" if pt else "| | |"))
    out.append("")
    if test_ne:
        sd = statistics.stdev(test_ne) if len(test_ne) > 1 else 0.0
        out.append(f"Interval-rule plan over {len(test_ne)} seed(s): test ΔNE mean {_pct(statistics.mean(test_ne))} "
                   f"(sd {100 * sd:.3f} pts, range {_pct(min(test_ne))} to {_pct(max(test_ne))})"
                   + (f"; plan / smallest uniform {min(ratios_u):.3f}-{max(ratios_u):.3f}" if ratios_u else "")
                   + (f"; plan / best heuristic {min(ratios_h):.2f}-{max(ratios_h):.2f}" if ratios_h else "") + ".")
    return out + [""]
