"""reports/hash_sharing.md and its figures, from the JSON only: the header, the summary, the
done-when checks and where each method breaks down (the remaining sections: `sections`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sharing_sweep.acceptance import acceptance
from sharing_sweep.common import AUC_TOL, INT8_AUC_TOL, MIN_COMPRESSION, find_run
from sharing_sweep.markdown import breakdown, fmt, fmt_bytes, md_table, paras
from sharing_sweep.plots import plot_dataset, plot_speed
from sharing_sweep.sections import dataset_section, method_notes, seeds_section, speed_facts, speed_section
from sharing_sweep.text import TEXT


def write_report(res: dict[str, Any], out_dir: Path) -> None:
    acc = acceptance(res)
    res["acceptance"] = acc
    L: list[str] = ["# Hash-sharing embedding compression: acceptance sweep", ""]
    tool = res["tool"]
    m = res["machine"]
    L += ["Regenerate (writes reports/hash_sharing.json, this file and the PNGs):", "", "```",
          tool["command"], "```", "",
          f"Report only, from the JSON: `.venv/bin/python tools/hash_sharing_sweep.py --report-only`.", "",
          f"Run {tool['created']}: {tool['seconds'] / 60:.1f} min wall with {tool['jobs']} worker processes "
          f"(1 thread each) on {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['memory']}, "
          f"shared with other jobs (load average at start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}); "
          f"{m['os']}; Python {m['python']}, torch {m['torch']}, fbgemm_gpu {m['fbgemm_gpu']}, "
          f"lowprec {m['lowprec']}, numpy {m['numpy']}.", ""]
    L += summary_section(res, acc)
    L += acceptance_section(res, acc)
    L += meaning_section(res)
    L += speed_section(res)
    for name, ds in res["datasets"].items():
        L += dataset_section(name, ds)
    L += seeds_section(res)
    L += method_notes(res)
    (out_dir / "hash_sharing.md").write_text("\n".join(L) + "\n")
    for name, ds in res["datasets"].items():
        plot_dataset(name, ds, out_dir / f"hash_sharing_{name}.png")
    if res.get("speed"):
        plot_speed(res["speed"], out_dir / "hash_sharing_robe_speed.png")


def summary_section(res: dict[str, Any], acc: dict[str, Any]) -> list[str]:
    L = ["## What the numbers say", ""]
    for name, ds in res["datasets"].items():
        dense = find_run(ds, "dense-s0")
        L.append(f"- **{name}**: dense fp32 baseline AUC {dense['float']['auc']:.4f}, NE "
                 f"{dense['float']['ne']:.4f}, {fmt_bytes(dense['variants']['fp32']['embedding_bytes'])} of tables. "
                 + best_sentence(ds))
    facts = speed_facts(res)
    L += [""] + paras([t.format(**facts) if facts else t for t in TEXT.get("summary", [])]) + [""]
    return L


def best_sentence(ds: dict[str, Any]) -> str:
    dense = find_run(ds, "dense-s0")
    d_auc = dense["float"]["auc"]
    best = None
    for r in ds["runs"]:
        if r["group"] != "sweep":
            continue
        for prec, v in r["variants"].items():
            if d_auc - v["auc"] <= AUC_TOL and (best is None or v["compression"] > best[0]):
                best = (v["compression"], r["id"], prec, v["auc"], v["ne"], v["embedding_bytes"])
    if best is None:
        return f"No point kept AUC within {AUC_TOL} of it."
    return (f"Most compressed point with AUC at most {AUC_TOL} below it: `{best[1]}` at {best[2]}, "
            f"{best[0]:.0f}x smaller ({fmt_bytes(best[5])}), AUC {best[3]:.4f}, NE {best[4]:.4f}.")


def _check1(acc: dict[str, Any]) -> list[str]:
    L = ["**1. Every backend trains on MovieLens (train 1996-2014, evaluate 2016-2018) and on synthetic "
          "data, and its int8 artifact matches its float model to quantization error.** Max |Δ probability| "
          "and ΔAUC are int8 artifact minus the same model's float predictions on every evaluation row; "
          "the fp32 artifact column separates the serving form's own error from int8's (zero for exact forms).", ""]
    rows = []
    for b in acc["backends"]:
        if b["ratio"] != 16:
            continue
        rows.append([b["dataset"], b["id"], fmt(b["float_auc"]), fmt(b["int8_auc"]),
                     f"{b['dauc_int8_vs_float']:+.5f}", fmt(b["max_abs_dprob_int8"], 5),
                     fmt(b["max_abs_dprob_fp32"], 6), "exact" if b["exact_form"] else "approx. (projection)"])
    L += md_table(["data", "model", "float AUC", "int8 AUC", "ΔAUC int8-float", "max abs Δp int8",
                   "max abs Δp fp32 artifact", "serving form"], rows)
    exact_forms = [b for b in acc["backends"] if b["exact_form"]]
    if exact_forms:
        w = max(exact_forms, key=lambda b: b["max_abs_dprob_int8"])
        wa = max(exact_forms, key=lambda b: abs(b["dauc_int8_vs_float"]))
        L += [f"Over every ratio of the sweep (exact forms: hash, QR, aligned ROBE; {len(exact_forms)} models): "
              f"largest max |Δp| int8 vs float {w['max_abs_dprob_int8']:.5f} ({w['dataset']} {w['id']}), "
              f"largest |ΔAUC| {abs(wa['dauc_int8_vs_float']):.5f} ({wa['dataset']} {wa['id']}); fp32 artifacts "
              f"of exact forms: max |Δp| {max(b['max_abs_dprob_fp32'] for b in exact_forms):.2e}.", ""]
    return L + paras(TEXT.get("check1", [])) + [""]


def _check2(acc: dict[str, Any]) -> list[str]:
    L = [f"**2. `--embedding robe:ratio=16` on MovieLens: AUC within {AUC_TOL} of dense, its int8 artifact "
          f"within {INT8_AUC_TOL}, `inspect` compression >= {MIN_COMPRESSION:g}x.** Drops are dense minus model "
          "(a negative drop means better than dense); DeLong is the paired test against the dense float model "
          "on the same 21,319 rows.", ""]
    rows = []
    for r in acc["robe16"]:
        rows.append([f"`{r['spec']}`", fmt(r["dense_auc"]), f"{fmt(r['float_auc'])} ({r['float_drop']:+.4f}, "
                     f"p={r['delong_float_vs_dense']['p']:.2g})", "pass" if r["pass_float"] else "FAIL",
                     f"{fmt(r['int8_auc'])} ({r['int8_drop']:+.4f}, p={r['delong_int8_vs_dense']['p']:.2g})",
                     "pass" if r["pass_int8"] else "FAIL",
                     f"{r['compression_int8']:.1f}x ({fmt_bytes(r['embedding_bytes_int8'])})",
                     "pass" if r["pass_compression"] else "FAIL"])
    L += md_table(["SPEC", "dense AUC", "float AUC (drop, p)", f"<= {AUC_TOL}", "int8 AUC (drop, p)",
                   f"<= {INT8_AUC_TOL}", "int8 compression", f">= {MIN_COMPRESSION:g}x"], rows)
    return L + paras(TEXT.get("check2", [])) + [""]


def _check3(acc: dict[str, Any]) -> list[str]:
    L = ["**3. Post-training hot sharing of the MovieLens `movie` table at 8x keeps AUC within "
          f"{AUC_TOL} of dense.** Plan `{{\"tables\": {{\"movie\": {{\"precision\": P, \"sharing\": "
          "{\"kind\": \"hot\", \"ratio\": 8}}, \"*\": {\"precision\": P}}}` (other tables stay dense at P), "
          "row counts from `lowprec calibrate` on the given windows; `hot` is the share of the 8x row budget "
          "kept as exact hot rows (default 0.5).", ""]
    rows = []
    for h in acc["hot_movie"]:
        rows.append([h["id"], h["precision"], h["calib_windows"], f"{h['hot']:g}", fmt(h["auc"]),
                     f"{h['drop']:+.4f} (p={h['vs_dense']['p']:.2g})", fmt(h["ne"]),
                     f"{h['compression']:.2f}x", "pass" if h["pass"] else "FAIL"])
    L += md_table(["run", "precision", "count windows", "hot", "AUC", "drop vs dense (p)", "NE",
                   "compression (all tables)", f"drop <= {AUC_TOL}"], rows)
    return L + paras(TEXT.get("check3", [])) + [""]


def _check4(res: dict[str, Any]) -> list[str]:
    L = ["**4. The numbers come back when the commands are rerun.**", ""]
    rep = res.get("reproducibility") or {}
    if not rep:
        L += ["Not checked in this run.", ""]
    for kind, r in rep.items():
        if kind == "full":
            L += [f"- Full rerun `{r.get('other_command', r['other'])}` (made {r['other_created']}, "
                  f"{r.get('other_minutes', '?')} min under heavier load) against this run: "
                  f"{r['compared_numbers']} numbers compared (every metric, byte count, Δp, DeLong value of "
                  f"every row), {'all identical' if r['identical'] else str(len(r['differences'])) + ' differ'}."]
            L += [f"  - {d}" for d in r["differences"][:10]]
        elif kind == "cli":
            for row in r["rows"]:
                L += [f"- CLI rerun of `{row['dataset']}` `{row['id']}` ({', '.join(row['variants'])}) from its "
                      f"recorded commands in a fresh directory: "
                      f"{'AUC, NE and bytes identical' if row['identical'] else 'differs: ' + '; '.join(row['mismatches'])}."]
    L += [""] + paras(TEXT.get("check4", [])) + [""]
    return L


def acceptance_section(res: dict[str, Any], acc: dict[str, Any]) -> list[str]:
    return ["## Done-when checks", ""] + _check1(acc) + _check2(acc) + _check3(acc) + _check4(res)


def meaning_section(res: dict[str, Any]) -> list[str]:
    L = ["## Where each method breaks down", "",
         f"Per method and precision, the ratios whose AUC stays within {AUC_TOL} of the dense fp32 float "
         "model (seed 0) and those that fall further (ratio = parameter reduction of the compressed tables; "
         "'bytes' = the whole embedding compression `inspect` reports against dense fp32).", ""]
    for name, ds in res["datasets"].items():
        L += [f"**{name}**", ""]
        L += md_table(["method", "precision", f"within {AUC_TOL} of dense", "below the bar"], breakdown(ds))
    L += paras(TEXT.get("breakdown", [])) + [""]
    return L
