"""The report's later sections, from the JSON: exact vs aligned ROBE (accuracy and lookup speed),
one section per data set, the seed spread and the method notes."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from sharing_sweep.common import AUC_TOL, find_run, window_ints
from sharing_sweep.markdown import fmt, fmt_bytes, md_table, paras, run_rows, short_cmd
from sharing_sweep.text import TEXT
from sharing_sweep.timing import EXACT, HASH_ONLY, LEGACY_HASH_ONLY


def speed_facts(res: dict[str, Any]) -> dict[str, Any]:
    """Numbers the speed paragraphs quote, from the JSON (timings differ from run to run)."""
    sp = res.get("speed")
    if not sp:
        return {}
    ms = {k: v["median"] for k, v in sp["ms_per_call"].items()}
    exact = ms[EXACT]
    tbe32, tbe_only = ms["aligned TBE fp32 (hash transform + TBE)"], ms["aligned: TBE lookup only, fp32"]
    hash_ms = ms[HASH_ONLY] if HASH_ONLY in ms else ms[LEGACY_HASH_ONLY]
    exact_hash = ms.get("exact: hash only (robe_offsets)", float("nan"))
    syn = res["datasets"].get("synth", {"runs": []})["runs"]

    def span(methods: tuple[str, ...]) -> str:
        t = [r["seconds_train"] for r in syn if r["method"] in methods and "seconds_train" in r and r["group"] == "sweep"]
        return f"{min(t):.0f}-{max(t):.0f}" if t else "?"

    return {"exact_ms": exact, "tbe32_ms": tbe32, "tbe8_ms": ms["aligned TBE int8 (hash transform + TBE)"],
            "speedup": exact / tbe32, "tbe_only_ms": tbe_only, "tbe_x": exact / tbe_only, "hash_ms": hash_ms,
            "hash_share": 100 * hash_ms / tbe32, "ns_per_id": hash_ms * 1e6 / (sp["batch"] * sp["tables"]),
            "exact_hash_ms": exact_hash, "gather_ms": exact - exact_hash,
            "robe_train": span(("robe", "robe_exact")), "hq_train": span(("hash", "qr"))}


def speed_section(res: dict[str, Any]) -> list[str]:
    sp = res.get("speed")
    L = ["## Exact vs aligned ROBE", ""]
    L += paras(TEXT.get("exact_vs_aligned", [])) + [""]
    acc_rows = []
    for name, ds in res["datasets"].items():
        for rid_e, rid_a in ((f"robe_exact-{r}", f"robe-{r}") for r in res["settings"]["ratios"]):
            e, a = find_run(ds, rid_e), find_run(ds, rid_a)
            if not e or not a:
                continue
            ra = find_run(ds, f"robe_realign-{e['ratio']}")
            wp = find_run(ds, f"robe_wproj-{e['ratio']}")
            acc_rows.append([name, f"{e['ratio']:g}x", fmt(e["float"]["auc"]), fmt(e["variants"]["fp32"]["auc"]),
                             fmt(e["variants"]["int8"]["auc"]), fmt(a["float"]["auc"]), fmt(a["variants"]["int8"]["auc"]),
                             f"{fmt(ra['float']['auc'])} / {fmt(ra['variants']['int8']['auc'])}" if ra else "-",
                             f"{fmt(wp['variants']['int8']['auc'])} (max/mean abs Δp "
                             f"{wp['variants']['int8']['max_abs_dprob_vs_float']:.3f} / "
                             f"{wp['variants']['int8']['mean_abs_dprob_vs_float']:.4f})" if wp else "-",
                             fmt(e["float"]["ne"]), fmt(e["variants"]["fp32"]["ne"]), fmt(a["float"]["ne"]),
                             f"{e['variants']['fp32']['max_abs_dprob_vs_float']:.4f} / "
                             f"{e['variants']['fp32']['mean_abs_dprob_vs_float']:.4f}"])
    L += ["Accuracy (seed 0): the exact model trained and evaluated in torch, its deployable artifact (the "
          "aligned least-squares projection, fp32 and int8), and the model trained aligned:", ""]
    L += md_table(["data", "ratio", "exact float AUC", "exact -> fp32 artifact AUC", "exact -> int8 AUC",
                   "aligned float AUC", "aligned int8 AUC", "realign + fine-tune float / int8 AUC",
                   "count-weighted projection int8 AUC (vs exact float)",
                   "exact float NE", "exact -> fp32 NE", "aligned float NE",
                   "projection: max / mean abs Δp"], acc_rows)
    if sp:
        L += [f"Lookup speed, side by side in one process on one batch of {sp['batch']} rows of the synthetic "
              f"evaluation window: all {sp['tables']} tables ROBE at {sp['ratio']:g}x (one shared array of "
              f"{sp['array_elements']:,} floats = {sp['array_mib']:.1f} MiB, Z = D = 16), {sp['threads']} thread, "
              f"{sp['rounds']} rounds x {sp['calls_per_round']} calls per method, methods rotated between "
              "rounds. ms per call (per-round means):", ""]
        ex = sp["ms_per_call"][EXACT]["median"]
        rows = [[k, f"{v['median']:.3f}", f"{v['q1']:.3f} - {v['q3']:.3f}", f"{v['min']:.3f} - {v['max']:.3f}",
                 f"{ex / v['median']:.2f}x"] for k, v in sp["ms_per_call"].items()]
        L += md_table(["method", "median ms", "IQR", "min - max", "exact / this"], rows)
        L += [f"Sanity: {'; '.join(f'{k} = {v:.2e}' for k, v in sp['checks'].items())}.", "",
              "![lookup time](hash_sharing_robe_speed.png)", ""]
        L += paras([t.format(**speed_facts(res)) for t in TEXT.get("speed", [])]) + [""]
    return L


def _dataset_intro(ds: dict[str, Any], comp: list[str]) -> list[str]:
    """Which data, windows and tables; which tables are compressed."""
    tables = ds["tables"]
    fp32_all = sum(tables.values()) * 16 * 4
    fp32_comp = sum(tables[t] for t in comp) * 16 * 4
    wl = {w["index"]: w for w in ds["windows"]}
    L = [f"Data: `{short_cmd(ds['prepare'], ds).replace('$D', '$D')}` (D = the data directory, W = the work "
         f"directory). Train windows {ds['train']} "
         f"({sum(wl[i]['rows'] for i in window_ints(ds['train'])):,} rows, labels "
         f"{wl[window_ints(ds['train'])[0]]['label']}..{wl[window_ints(ds['train'])[-1]]['label']}), evaluation windows "
         f"{ds['eval']} ({sum(wl[i]['rows'] for i in window_ints(ds['eval'])):,} rows, "
         f"{wl[window_ints(ds['eval'])[0]]['label']}..{wl[window_ints(ds['eval'])[-1]]['label']}).", ""]
    L += [f"Tables: {', '.join(f'{k} {v:,}' for k, v in tables.items())} rows, D = 16. Compressed: "
          + ("every table (`--embedding SPEC`)." if not ds["big"] else
             f"the {len(comp)} tables with >= 10,000 rows ({', '.join(comp)}), which hold "
             f"{100 * fp32_comp / fp32_all:.2f}% of the fp32 table bytes; "
             f"`$BIG(SPEC)` below stands for `{' '.join(f'--table-embedding {t}=SPEC' for t in comp)}`; the "
             "other tables stay dense (at the artifact's precision).")
          + f" Dense fp32 tables: {fmt_bytes(fp32_all)}.", ""]
    return L


def dataset_section(name: str, ds: dict[str, Any]) -> list[str]:
    dense = find_run(ds, "dense-s0")
    comp = ds["big"] or list(ds["tables"])
    L = [f"## {name}", ""] + _dataset_intro(ds, comp)
    st = ds.get("id_stats", {})
    if st:
        L += ["How much the training windows say about the ids the evaluation rows use (compressed "
              "single-id tables; this decides how much there is to lose by sharing rows):", ""]
        L += md_table(["table", "rows", "distinct ids in training", "training rows per distinct id",
                       "eval rows with an id unseen in training", "eval rows with an id seen < 10 times"],
                      [[k, f"{v['rows']:,}", f"{v['distinct_train_ids']:,}", f"{v['train_rows_per_distinct_id']:.1f}",
                        f"{100 * v['eval_rows_id_unseen']:.1f}%", f"{100 * v['eval_rows_id_seen_lt10']:.1f}%"]
                       for k, v in st.items()])
    noemb = find_run(ds, "noemb")
    if noemb:
        L += [f"Reference: the compressed tables cut to almost nothing (`{noemb['spec']}`: at most "
              f"{max(1, math.ceil(max(ds['tables'][t] for t in comp) / 1e6))} rows each) give float AUC "
              f"{noemb['float']['auc']:.4f}, NE {noemb['float']['ne']:.4f} (dotted grey line in the plots): "
              f"what the model knows without those tables. Command: `{short_cmd(noemb['commands'][0], ds)}`, "
              "then eval as below.", ""]
    L += [f"Per model: the train command, then per precision P: `lowprec convert --model $W/{name}/models/ID "
          f"--precision P --out $W/{name}/artifacts/ID-P`, `lowprec inspect $W/{name}/artifacts/ID-P --json` "
          f"(table bytes, compression) and `lowprec eval --model $W/{name}/artifacts/ID-P --data $D --windows "
          f"{ds['eval']} --json` (AUC, NE); the float row is `lowprec eval --model $W/{name}/models/ID ...`. "
          "Hot sharing converts the dense model with a plan and the counts of "
          f"`{short_cmd(dense['calibrations'][ds['calib']], ds)}`. Every row's full commands are in "
          "reports/hash_sharing.json (`commands`).", ""]
    L += [f"![{name}](hash_sharing_{name}.png)", ""]
    L += run_rows(ds, "sweep")
    hot = [r for r in ds["runs"] if r["method"] == "hot" and r["group"] == "sweep"]
    if hot:
        L += ["Hot-sharing plan (P = the precision of the row): `" + json.dumps(hot[0]["plan"]) +
              "` with the ratio of the row.", ""]
    return L


def seeds_section(res: dict[str, Any]) -> list[str]:
    L = ["## Seed spread", "",
         "`lowprec train --seed S`, everything else unchanged (seed 0 is the sweep's model); MovieLens "
         "hot sharing converts the dense model of the same seed with counts from the training years. "
         "Paired Δ = mean over seeds of (model int8 AUC - dense int8 AUC of the same seed). This is the "
         f"noise the {AUC_TOL} bar sits in.", ""]
    rows = []
    for name, ds in res["datasets"].items():
        groups: dict[str, dict[int, tuple[float | None, float]]] = {}
        for r in ds["runs"]:
            if r["group"] not in ("seeds", "sweep", "acceptance"):
                continue
            if r["method"] == "dense":
                key = "dense"
            elif r["method"] == "hot" and r["id"].startswith("hot-movie-8") and r.get("calib_windows") == ds["calib"]:
                key = "hot movie 8x"
            elif r["method"] in ("hash", "qr", "robe", "robe_exact") and \
                    any(x["group"] == "seeds" and x["method"] == r["method"] and x["ratio"] == r["ratio"]
                        for x in ds["runs"]):
                key = r["spec"]
            else:
                continue
            if "int8" in r["variants"]:
                groups.setdefault(key, {})[r.get("seed", 0)] = (r["float"]["auc"] if "float" in r else None,
                                                               r["variants"]["int8"]["auc"])
        dense = {s_: v[1] for s_, v in groups.get("dense", {}).items()}
        if len(dense) < 2:
            continue
        for k, v in groups.items():
            fl = [x[0] for x in v.values() if x[0] is not None]
            i8 = [x[1] for x in v.values()]
            paired = [v[s_][1] - dense[s_] for s_ in v if s_ in dense]
            rows.append([name, f"`{k}`", ",".join(str(s_) for s_ in sorted(v)),
                         f"{statistics.mean(fl):.4f} ± {statistics.stdev(fl):.4f}" if len(fl) > 1 else "-",
                         f"{statistics.mean(i8):.4f} ± {statistics.stdev(i8):.4f}" if len(i8) > 1 else "-",
                         f"{min(i8):.4f} - {max(i8):.4f}",
                         f"{statistics.mean(paired):+.4f} (min {min(paired):+.4f})" if k != "dense" else "-"])
    L += md_table(["data", "model", "seeds", "float AUC mean ± sd", "int8 AUC mean ± sd", "int8 AUC range",
                   "paired Δ int8 AUC vs dense (worst seed)"], rows)
    L += paras(TEXT.get("seeds", [])) + [""]
    return L


def method_notes(res: dict[str, Any]) -> list[str]:
    return ["## Method notes", ""] + paras(TEXT.get("notes", [])) + [""]
