"""reports/criteo_scale.md from reports/criteo_scale.json (the runner's records; nothing is re-measured).

Every number in the Markdown comes from a stage record (`stages[NAME].result`: the JSON a `lowprec`
command printed) or a derived value the study noted (`derived`). Deltas are against the float model of
the same seed on the same window; NE deltas are relative (%), AUC deltas absolute.
"""

from __future__ import annotations

import ast
import statistics

from tools.criteo_scale.plans import HEURISTICS, HOT_ONLY
from tools.criteo_scale.study import BUDGETS, TRAINED_SHARING, UNIFORM, meets, window_metrics

MB = 1e6


class View:
    """Read access to one state: metrics, bytes and records by stage name."""

    def __init__(self, state: dict):
        self.s, self.st, self.d = state, state.get("stages", {}), state.get("derived", {})
        self.cfg = dict(state.get("meta", {}).get("config", {}))
        if "heuristic_chosen_on_search_eval" not in self.d:  # the run ended before choosing: choose among what finished
            self.d = {**self.d, **choices_among_finished(self.st), "choices_partial": True}
        try:  # recorded as str(tuple)
            self.cfg["train_args"] = " ".join(ast.literal_eval(self.cfg.get("train_args", "()")))
        except (ValueError, SyntaxError):
            pass

    def m(self, name: str, role: str = "test") -> dict | None:
        if name.startswith("search/"):  # the search's own paired report of its converted plan
            budget, seed = name.split("/")[1], int(name.split("/")[2][1:])
            got = (self.search(budget, seed) or {}).get({"test": "tested", "search_eval": "validated"}[role])
            return {"auc": got["plan_auc"], "ne": got["plan_ne"]} if got else None
        return window_metrics(self.st.get(f"{name}/eval")).get(role)

    def nbytes(self, name: str) -> int | None:
        if name.startswith("search/"):
            return (self.search(name.split("/")[1], int(name.split("/")[2][1:])) or {}).get("table_bytes")
        if f"table_bytes/{name}" in self.d:
            return self.d[f"table_bytes/{name}"]
        conv = self.st.get(f"{name}/convert")
        return conv["result"]["embedding_bytes"] if conv and conv.get("ok") and conv.get("result") else None

    def fp32(self) -> int | None:
        return self.d.get("table_bytes/float/s0")

    def search(self, budget: str, seed: int) -> dict | None:
        rec = self.st.get(f"search/{budget}/s{seed}/search")
        return rec.get("result") if rec and rec.get("ok") else None


def choices_among_finished(stages: dict) -> dict:
    from tools.criteo_scale.pool import smallest_meeting

    ref = window_metrics(stages.get("float/s0/eval"))
    if not ref:
        return {}
    uni = [f"uniform/{p}-{k}" for p, k in UNIFORM]

    def pick(names: list[str], role: str) -> str | None:
        return smallest_meeting(stages, names, 0, ref[role], role) if role in ref else None

    return {"heuristic_chosen_on_search_eval": pick([f"rule/{h.name}" for h in HEURISTICS], "search_eval"),
            "smallest_uniform_meeting_tight_on_test": pick(uni, "test"),
            "smallest_uniform_meeting_tight_on_search_eval": pick(uni, "search_eval")}


def f4(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def delta(v: dict | None, ref: dict | None) -> tuple[str, str]:
    if not v or not ref:
        return "n/a", "n/a"
    return f"{v['auc'] - ref['auc']:+.4f}", f"{100 * (v['ne'] - ref['ne']) / ref['ne']:+.3f}%"


def row(view: View, label: str, name: str, ref_name: str, role: str = "test") -> str:
    v, ref, b = view.m(name, role), view.m(ref_name, role), view.nbytes(name)
    fp32 = view.fp32()
    comp = f"{fp32 / b:.1f}x" if b and fp32 else "n/a"
    d_auc, d_ne = delta(v, ref)
    ok = {k: ("yes" if v and ref and meets(v, ref, k) else "no" if v and ref else "n/a") for k in BUDGETS}
    return (f"| {label} | {'n/a' if b is None else f'{b / MB:,.1f}'} | {comp} | {f4(v and v['auc'])} | "
            f"{f4(v and v['ne'])} | {d_auc} | {d_ne} | {ok['tight']} | {ok['loose']} |")


HEAD = ("| variant | table MB | compression | AUC | NE | ΔAUC | ΔNE | tight budget | loose budget |\n"
        "|---|---|---|---|---|---|---|---|---|")


def headline_names(view: View) -> list[tuple[str, str]]:
    out = [("float (dense tables, fp32)", "float/s0"), ("dense features only", "dense_only/s0")]
    if view.d.get("smallest_uniform_meeting_tight_on_test"):
        n = view.d["smallest_uniform_meeting_tight_on_test"]
        out.append((f"smallest uniform meeting the tight budget: {n.split('/')[1]}", f"{n}/s0"))
    if view.d.get("heuristic_chosen_on_search_eval"):
        n = view.d["heuristic_chosen_on_search_eval"]
        out.append((f"best single-rule heuristic: {n.split('/')[1]}", f"{n}/s0"))
    out += [("searched plan, tight budget", "search/tight/s0"), ("searched plan, loose budget", "search/loose/s0")]
    return out


def variants_section(view: View) -> list[str]:
    lines = ["## Every variant (seed 0, test window)", "",
             "Table bytes as served (`lowprec convert`'s embedding_bytes; trained models: their table tensors). "
             "Budgets: tight = NE +0.1% and AUC -0.001, loose = NE +1% and AUC -0.01, against the float model.", "",
             HEAD]
    for label, name in headline_names(view):
        lines.append(row(view, label, name, "float/s0"))
    lines.append("| **uniform precision** (all tables) | | | | | | | | |")
    for p, meth in UNIFORM:
        lines.append(row(view, f"{p} ({'L2' if meth == 'l2' else 'min/max'} ranges)", f"uniform/{p}-{meth}/s0",
                         "float/s0"))
    lines.append("| **post-training hot sharing** (tables > 50k rows; fp32) | | | | | | | | |")
    for r in HOT_ONLY:
        lines.append(row(view, r.name, f"rule/{r.name}/s0", "float/s0"))
    lines.append("| **single-rule heuristics** (sharing on tables > 50k rows) | | | | | | | | |")
    for r in HEURISTICS:
        lines.append(row(view, r.name, f"rule/{r.name}/s0", "float/s0"))
    lines.append(f"| **trained sharing** (`--embedding`, trained on {view.cfg.get('small_train')} only; "
                 f"deltas vs the float model trained on the same rows) | | | | | | | | |")
    lines.append(row(view, "float (dense tables), same rows", "small_float/s0", "small_float/s0"))
    for v in TRAINED_SHARING:
        lines.append(row(view, v.replace("hash", "hash ").replace("qr", "QR ").replace("robe", "ROBE (aligned) ")
                         + "x", f"sharing/{v}/s0", "small_float/s0"))
    return lines + [""]


def choice_section(view: View) -> list[str]:
    lines = ["## Choices made on the search-validation window (never the test window)", "",
             f"Window {view.cfg.get('search_eval')}: the search validates its plans there, and the heuristic "
             "reported above is the candidate with the fewest table bytes that meets the tight budget there.", "",
             HEAD]
    for r in HEURISTICS:
        lines.append(row(view, r.name, f"rule/{r.name}/s0", "float/s0", "search_eval"))
    for p, meth in UNIFORM:
        lines.append(row(view, f"uniform {p}-{meth}", f"uniform/{p}-{meth}/s0", "float/s0", "search_eval"))
    sm = view.d.get("smallest_uniform_meeting_tight_on_search_eval")
    lines += ["", f"Smallest uniform artifact meeting the tight budget on this window: {sm}; on the test window: "
              f"{view.d.get('smallest_uniform_meeting_tight_on_test')}"
              f"{' (chosen among the variants that finished before the run ended)' if view.d.get('choices_partial') else ''}.",
              ""]
    return lines


def spread(xs: list[float], fmt: str) -> str:
    if not xs:
        return "n/a"
    mid = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{mid:{fmt}} ± {sd:{fmt}} [{min(xs):{fmt}}, {max(xs):{fmt}}] (n={len(xs)})"


def seed_rows(view: View, kind: str, seed: int) -> str | None:
    """Stage name of headline KIND for SEED (the same rule or precision as seed 0)."""
    if kind == "float":
        return f"float/s{seed}"
    if kind == "tight":
        return f"search/tight/s{seed}"
    key = {"uniform": "smallest_uniform_meeting_tight_on_test", "heuristic": "heuristic_chosen_on_search_eval"}[kind]
    return f"{view.d[key]}/s{seed}" if view.d.get(key) else None


def seeds_section(view: View) -> list[str]:
    seeds = [int(s) for s in view.cfg.get("seeds", "(0, 1, 2)").strip("()").split(",") if s.strip()]
    lines = ["## Headline rows over seeds (test window)", "",
             "Each seed is its own float model (training seed), calibration, search and conversions; "
             "the uniform precision and the heuristic are the ones seed 0 picked. Mean ± sd [min, max].", "",
             "| row | seeds | table MB | AUC | NE | ΔAUC vs own float | ΔNE vs own float | meets tight |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("float", "uniform", "heuristic", "tight"):
        got = []
        for s in seeds:
            name = seed_rows(view, kind, s)
            v, ref = (view.m(name), view.m(f"float/s{s}")) if name else (None, None)
            if v and ref:
                got.append((s, view.nbytes(name) or 0, v, ref))
        label = {"uniform": f"smallest uniform ({view.d.get('smallest_uniform_meeting_tight_on_test')})",
                 "heuristic": f"heuristic ({view.d.get('heuristic_chosen_on_search_eval')})"}.get(kind, kind)
        lines.append(
            f"| {label} | {','.join(str(g[0]) for g in got) or 'none'} | {spread([g[1] / MB for g in got], ',.1f')} | "
            f"{spread([g[2]['auc'] for g in got], '.4f')} | {spread([g[2]['ne'] for g in got], '.4f')} | "
            f"{spread([g[2]['auc'] - g[3]['auc'] for g in got], '+.4f')} | "
            f"{spread([100 * (g[2]['ne'] - g[3]['ne']) / g[3]['ne'] for g in got], '+.3f')} % | "
            f"{sum(meets(g[2], g[3], 'tight') for g in got)}/{len(got)} |")
    return lines + [""]


def targets_section(view: View) -> list[str]:
    d = view.m("dense_only/s0")
    bayes = (view.st.get("dense_only/s0/eval", {}).get("result") or {}).get("bayes_auc")
    lines = ["## Targets (issue 14, deliverable 4)", ""]
    lines.append("- **Training samples/s, fused step vs the old step** (same data, side by side): 2.65x at batch 512 "
                 "and 2.01x at batch 2048 at full Kaggle cardinalities, 2.33x / 1.88x at scale 0.05: "
                 "[reports/train.md](train.md) (measured by `tools/bench_train.py`, not re-run here).")
    for name, what in (("float/s0", f"the study's float model (`{view.cfg.get('train_args')}`)"),
                       ("float_defaults/s0", "`lowprec train` with its defaults (only `--val-windows`)")):
        f = view.m(name)
        if not (f and d and bayes):
            continue
        gap = (f["auc"] - d["auc"]) / (bayes - d["auc"])
        commit = view.st.get(f"{name}/train", {}).get("commit")
        lines.append(f"- **Gap closed by {what}**, commit {commit} (test window): dense-only AUC {d['auc']:.4f}, "
                     f"float {f['auc']:.4f}, Bayes {bayes:.4f}: (float - dense-only) / (Bayes - dense-only) = "
                     f"**{100 * gap:.1f}%** (target >= 75%: {'met' if gap >= 0.75 else 'NOT met'}).")
    for s in sorted({int(k.split('/')[2][1:]) for k in view.st if k.startswith("search/tight/")}):  # noqa: B007
        t, ref = view.m(f"search/tight/s{s}"), view.m(f"float/s{s}")
        tb, ub = view.nbytes(f"search/tight/s{s}"), view.nbytes(seed_rows(view, "uniform", s) or "")
        hb = view.nbytes(seed_rows(view, "heuristic", s) or "")
        if not (t and ref and tb):
            continue
        da, dn = delta(t, ref)
        parts = [f"- **Tight plan, seed {s}**: {tb / MB:,.1f} MB of tables; on the test window ΔAUC {da}, ΔNE {dn}: "
                 f"budget {'met' if meets(t, ref, 'tight') else 'NOT met'}"]
        if ub:
            parts.append(f"; vs the smallest uniform meeting it ({ub / MB:,.1f} MB): {tb / ub:.3f} of its bytes "
                         f"(target <= 0.2: {'met' if tb / ub <= 0.2 else 'NOT met'})")
        if hb:
            parts.append(f"; vs the heuristic ({hb / MB:,.1f} MB): {tb / hb:.3f} "
                         f"({'fewer bytes: met' if tb < hb else 'NOT fewer bytes'})")
        lines.append("".join(parts) + ".")
    return lines + [""]


def stages_section(view: View) -> list[str]:
    lines = ["## Stage times and peak memory", "",
             "Wall seconds on the shared machine (load in the header) and peak RSS of the stage's process "
             "(ru_maxrss: resident pages, including the mapped model files it touched; every stage ran under "
             f"RLIMIT_DATA {view.s.get('meta', {}).get('data_limit_gb', 8)} GiB).", "",
             "| stage | seconds | peak RSS MB | exit | commit |", "|---|---|---|---|---|"]
    for name, rec in view.st.items():
        lines.append(f"| {name} | {rec['seconds']:,.0f} | {rec['peak_rss_mb']:,.0f} | {rec['rc']} | {rec['commit']} |")
    total = sum(r["seconds"] for r in view.st.values())
    peak = max((r["peak_rss_mb"] for r in view.st.values()), default=0)
    return lines + ["", f"Total {total / 60:,.1f} min of stage time; highest peak RSS {peak:,.0f} MB.", ""]


def search_section(view: View) -> list[str]:
    lines = ["## Searched plans (`lowprec search`)", "",
             f"Sensitivity on window {view.cfg.get('val')}, plan validation on window {view.cfg.get('search_eval')}, "
             f"and the plan reported on test window {view.cfg.get('test')}, which the search never uses to choose "
             "(its own paired measurement: NE increase and AUC drop with their intervals).", "",
             "| search | table MB | compression | eval window: NE +%, AUC drop | fits (point/interval) | "
             "test window: NE +%, AUC drop | fits (point/interval) | evaluations, rounds | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rec in view.st.items():
        if not (name.startswith("search/") and name.endswith("/search")) or not rec.get("result"):
            continue
        r = rec["result"]
        cells = []
        for key, fits in (("validated", "validated_fits"), ("tested", "tested_fits")):
            v, f = r.get(key), r.get(fits)
            cells.append(f"{100 * v['ne_increase']:+.3f}% [{100 * v['ne_increase_ci'][0]:+.3f}, "
                         f"{100 * v['ne_increase_ci'][1]:+.3f}], {v['auc_drop']:+.5f} [{v['auc_drop_ci'][0]:+.5f}, "
                         f"{v['auc_drop_ci'][1]:+.5f}]" if v else "n/a")
            cells.append(f"{f['point']}/{f['interval']}" if f else "n/a")
        lines.append(f"| {name.rsplit('/', 1)[0]} | {r['table_bytes'] / MB:,.1f} | {r['compression']:.1f}x | "
                     f"{' | '.join(cells)} | {r['evaluations']}, {len(r['rounds'])} | {r['seconds']:.0f} |")
    plan = (view.search("tight", 0) or {}).get("plan")
    if plan:
        lines += ["", "The tight plan of seed 0, table by table (rows, precision, sharing):", ""]
        tables = view.d.get("tables", {})
        for k, v in plan["tables"].items():
            share = v.get("sharing")
            share = f", {share['kind']} {share.get('ratio')}x" if share else ""
            lines.append(f"- {k} ({tables.get(k, '?'):,} rows): {v['precision']}"
                         f"{' ' + v['range_method'] if v['precision'].startswith('int') else ''}{share}")
    return lines + [""]


def drift_section(view: View) -> list[str]:
    rec = view.st.get("drift/tight-s0/drift")
    if not rec or not rec.get("result"):
        return ["## Drift", "", "Not run (see Missing below).", ""]
    stats = view.d.get("window_stats") or []
    lines = ["## Drift over a popularity shift (`lowprec drift`, tight plan of seed 0 vs its float model)", "",
             f"From window {view.cfg.get('drift_start')} on, which ids are hot is re-drawn (`--drift popularity`); "
             f"exit code {rec['rc']} (1 = alarm), alarms at windows {rec['result'].get('alarms')}.", "",
             "| window | shifted | Bayes AUC | float AUC | plan AUC | AUC diff | float NE | plan NE | NE gap [CI] | alarm | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    start = int(view.cfg.get("drift_start", 10**9))
    for w in rec["result"]["windows"]:
        i = w["window"]
        bayes = stats[i]["bayes_auc"] if i < len(stats) and stats[i] else None
        lines.append(f"| {i} | {'yes' if i >= start else 'no'} | {f4(bayes)} | {f4(w['ref_auc'])} | "
                     f"{f4(w['cand_auc'])} | {w['auc_diff']:+.5f} | {f4(w['ref_ne'])} | {f4(w['cand_ne'])} | "
                     f"{100 * w['ne_gap']:+.3f}% [{100 * w['ne_gap_lo']:+.3f}, {100 * w['ne_gap_hi']:+.3f}] | "
                     f"{'ALARM' if w['alarm'] else 'ok'} | {(w.get('reason') or '').replace('|', '/')} |")
    lines.append("")
    for r in rec["result"].get("recalibrations") or []:
        lines.append(f"Recalibration on window {r['alarm_window']} ({r['source']} rows, `--on-alarm recalibrate`): NE gap "
                     f"{100 * r['ne_gap']:+.3f}% [{100 * r['ne_gap_lo']:+.3f}, {100 * r['ne_gap_hi']:+.3f}], AUC diff "
                     f"{r['auc_diff']:+.5f}, {'still alarmed' if r['alarm'] else 'no alarm'}: {r['reason']}")
        lines.append("")
    after = view.st.get("drift/tight-s0/recal-eval")
    if after and after.get("ok") and after.get("result"):
        ref = {w["window"]: w for w in rec["result"]["windows"]}
        lines += ["The recalibrated artifact on the windows after that one (out of sample: `lowprec eval`):", "",
                  "| window | float AUC | plan AUC before | recalibrated AUC | float NE | plan NE before | recalibrated NE |",
                  "|---|---|---|---|---|---|---|"]
        for w in after["result"].get("windows", []):
            r = ref.get(w["window"], {})
            lines.append(f"| {w['window']} | {f4(r.get('ref_auc'))} | {f4(r.get('cand_auc'))} | {f4(w['auc'])} | "
                         f"{f4(r.get('ref_ne'))} | {f4(r.get('cand_ne'))} | {f4(w['ne'])} |")
        lines.append("")
    return lines


def missing_section(view: View) -> list[str]:
    bad = [f"- `{n}`: exit {r['rc']} (log: the stage's log under WORK/logs)" for n, r in view.st.items() if not r["ok"]]
    bad += [f"- earlier attempt of `{a['stage']}`: exit {a['rc']} after {a['seconds']:,.0f} s ({a['finished']}; "
            f"`{' '.join(a['cmd'])}`)" for a in view.s.get("failed_attempts", [])]
    seeds = [int(s) for s in view.cfg.get("seeds", "(0, 1, 2)").strip("()").split(",") if s.strip()]
    want = ["float/s0/eval", "dense_only/s0/eval", "search/tight/s0/search", "search/loose/s0/search",
            "drift/tight-s0/drift", "drift/tight-s0/recal-eval", "small_float/s0/eval",
            *[f"sharing/{v}/s0/eval" for v in TRAINED_SHARING],
            *[f"uniform/{p}-{m}/s0/eval" for p, m in UNIFORM], *[f"rule/{r.name}/s0/eval" for r in HEURISTICS + HOT_ONLY],
            *[f"float/s{s}/eval" for s in seeds], *[f"search/tight/s{s}/search" for s in seeds]]
    absent = [f"- `{n}`: not run" for n in want if n not in view.st]
    return ["## Missing", "", *(bad + absent or ["Nothing: every stage finished."]), ""]


def header(view: View) -> list[str]:
    meta, runs = view.s.get("meta", {}), view.s.get("runs", [])
    cfg = view.cfg
    cmd = meta.get("command", "python -m tools.criteo_scale --preset full --work /tmp/scale --lane 1")
    words = cmd.split()
    lane_cmd = " ".join(words[:words.index("--lane")] if "--lane" in words else words)
    flag = lambda name, default: words[words.index(name) + 1] if name in words[:-1] else default  # noqa: E731
    state = flag("--state", "reports/criteo_scale.json")
    render_cmd = " ".join(["python -m tools.criteo_scale --render-only",
                           *[f"{k} {flag(k, '')}" for k in ("--state", "--report") if k in words]])
    lanes = sorted({r.get("lane", 1) for r in runs}) or [1]
    lines = ["# Criteo Kaggle scale: compression variants on latent-factor data (issue 14)", "",
             "Regenerate (lanes side by side, each resumable and sharing one claimed work list; then render):",
             "", "```", f"for lane in {' '.join(map(str, lanes))}; do",
             f"  {lane_cmd} --lane $lane &",
             "done; wait", f"{render_cmd}   # the Markdown from the JSON",
             "```", "",
             f"Every number below comes from {state} (+ its `.laneN.json` siblings): the JSON each "
             "`lowprec` command printed, with its command line, exit code, wall time, peak RSS and the git commit "
             "it ran under.", ""]
    for lane in sorted({r.get("lane", 1) for r in runs}):
        rs = [r for r in runs if r.get("lane", 1) == lane]
        loads = [r["load_avg_start"][0] for r in rs if r.get("load_avg_start")]
        ends = [r["finished"] for r in rs if r.get("finished")]
        lines.append(f"- lane {lane}: started {rs[0].get('started')}, {len(rs) - 1} resumptions (the study's code "
                     f"changed or a stage was re-planned), finished {ends[-1] if ends else 'n/a'}; 1-minute load "
                     f"average at its starts {min(loads, default=0):.1f}-{max(loads, default=0):.1f}; "
                     f"{rs[0].get('platform')}, {rs[0].get('cpus')} CPUs, Python {rs[0].get('python')}")
    lines += ["", f"Data: `lowprec data synth --kind latent --scale {cfg.get('scale')}` (Criteo Kaggle cardinalities, "
              f"{sum(view.d.get('tables', {}).values()):,} table rows, 26 tables, D=16), {cfg.get('windows')} windows "
              f"of {int(cfg.get('rows_per_window', 0)):,} rows, `--drift popularity --drift-start {cfg.get('drift_start')}`. "
              f"Windows: train {cfg.get('train')} (headline float models, dense-only), {cfg.get('small_train')} "
              f"(trained-sharing variants and their float reference), validation {cfg.get('val')} (training's epoch "
              f"choice, the search's sensitivity and calibration), search validation {cfg.get('search_eval')}, "
              f"**test {cfg.get('test')}** (never used to train, search or choose), drift {cfg.get('drift')}. "
              f"Training flags beyond the defaults: `{cfg.get('train_args')}`.", ""]
    return lines


def data_section(view: View) -> list[str]:
    stats = view.d.get("window_stats") or []
    if not stats:
        return []
    lines = ["| window | positive rate | Bayes AUC | Bayes NE |", "|---|---|---|---|"]
    for i, s in enumerate(stats):
        if s:
            lines.append(f"| {i} | {s.get('positive_rate', float('nan')):.4f} | {s.get('bayes_auc', float('nan')):.4f} | "
                         f"{s.get('bayes_ne', float('nan')):.4f} |")
    return ["## The data", "", *lines, ""]


def render(state: dict, notes: str = "") -> str:
    """The report; NOTES (reports/criteo_scale.notes.md, hand-written reading of the numbers) follow the targets."""
    view = View(state)
    parts = [header(view), targets_section(view), notes.strip().splitlines() + [""] if notes.strip() else [], variants_section(view), seeds_section(view),
             choice_section(view), search_section(view), drift_section(view), data_section(view),
             stages_section(view), missing_section(view)]
    return "\n".join(line for part in parts for line in part) + "\n"
