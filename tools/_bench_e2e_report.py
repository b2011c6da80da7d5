"""The end-to-end benchmark's section of reports/benchmarks.md and its figure, from the JSON that
tools/bench_e2e.py writes (`bench_e2e.render` is `render` here; bench_all renders it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

VARIANTS = ("float", "artifact fp32", "int8 dynamic", "int8 static", "searched plan", "latency plan")


def figures(result: dict[str, Any], out_dir: Path) -> list[str]:
    plt = bc.plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = [v for v in VARIANTS if v in result["samples_per_s"]]
    med = [result["samples_per_s"][n]["median"] / 1e3 for n in names]
    err = [[m - result["samples_per_s"][n]["min"] / 1e3 for m, n in zip(med, names)],
           [result["samples_per_s"][n]["max"] / 1e3 - m for m, n in zip(med, names)]]
    ax.bar(range(len(names)), med, yerr=err, capsize=3, color=["C7", "C0", "C1", "C2", "C3", "C4"][: len(names)])
    for i, n in enumerate(names):
        ax.text(i, med[i], f"{result['vs_float'][n]['median']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("k samples/s (median, min-max)")
    ax.set_title(f"End-to-end inference, batch {result['batch']}")
    fig.tight_layout()
    fig.savefig(out_dir / "bench_e2e.png", dpi=110)
    plt.close(fig)
    return ["bench_e2e.png"]


def render(result: dict[str, Any], out_dir: Path) -> list[str]:
    figs = figures(result, out_dir)
    s, srch = result["settings"], result["search"]
    arts = result["artifacts"]
    m = result["machine"]
    md = ["## c. End-to-end inference: float DLRM vs quantized artifacts", "",
          f"Run {m.get('date_utc', '?')} at commit {m.get('git_commit', '?')} (1-min load "
          f"{m.get('loadavg_1min', '?')}). Synthetic Criteo-shaped data (`lowprec data synth`, tables x {s['scale']}, "
          f"{s['rows_per_window']:,} rows per window); DLRM dim {s['dim']}, bottom MLP 13-"
          f"{'-'.join(map(str, s['bottom_mlp']))}-{s['dim']}, top MLP {'-'.join(map(str, s['top_mlp']))}-1, "
          f"trained {s['epochs']} epoch on windows 0-2 ({result['train']['rows_seen']:,} rows). "
          f"Search: budgets NE +{s['max_ne_increase']}, AUC -{s['max_auc_drop']}, sensitivity on window 3, "
          f"validation on window 4: {srch['evaluations']} evaluations in {srch['seconds']:.0f} s, "
          f"{srch['compression']:.1f}x smaller than fp32 (validated NE {100 * srch['ne_increase']:+.3f}%, "
          f"AUC drop {srch['auc_drop']:+.4f}). Timed on {s['batches']} batches of {result['batch']} from "
          f"window 5, {s['repeats']} interleaved repeats; ratios paired per repeat, median [min-max]. Each model "
          "gets the batch as `lowprec eval` and the drift job hand it over: the float model the id matrix, the "
          "artifacts the loader's FeatureIds (section a).", ""]
    rows = []
    for n in VARIANTS:
        a = arts.get(n, {})
        q = result["quality_windows_5_6"][n]
        layers = sorted(set(a.get("layers", {}).values())) if a else ["fp32 (torch)"]
        tables = sorted(set(a.get("tables", {}).values())) if a else ["fp32 (EmbeddingBag)"]
        emb_mb = a["embedding_bytes"] / 2**20 if a else arts["artifact fp32"]["fp32_embedding_bytes"] / 2**20
        rows.append([n, ", ".join(tables), ", ".join(layers), f"{emb_mb:.1f}",
                     bc.fmt_spread(result["samples_per_s"][n], 1e-3, 1), bc.fmt_ratio(result["vs_float"][n]),
                     f"{q['ne']:.5f}", f"{q['auc']:.5f}"])
    md += bc.md_table(["variant", "tables", "layers", "table MB", "k samples/s", "vs float", "NE (w5-6)", "AUC (w5-6)"], rows)
    plan_tables = arts["searched plan"]["tables"]
    counts: dict[str, int] = {}
    for p in plan_tables.values():
        counts[p] = counts.get(p, 0) + 1
    md += [f"Searched plan: tables {', '.join(f'{v} x {k}' for k, v in sorted(counts.items()))}; layers "
           f"{', '.join(f'{k} {v}' for k, v in arts['searched plan']['layers'].items())}. "
           f"Pipeline stage times (s): {', '.join(f'{k} {v:.1f}' for k, v in result['stages_seconds'].items())}.", "",
           f"![e2e]({figs[0]})", ""]
    v = result["vs_float"]
    layers = arts["searched plan"]["layers"]
    int8_layers = sum(1 for p in layers.values() if p.startswith("int8"))
    fp8 = sum(1 for p in arts["searched plan"]["tables"].values() if p == "fp8")
    st = result["settings"]
    md += ["**What it means.** The int8 layers carry the speedup: FBGEMM's int8 GEMMs on the 512- and 256-wide "
           f"layers make the model {v['int8 dynamic']['median']:.1f}x (dynamic) to {v['int8 static']['median']:.1f}x "
           "(static, no per-batch range computation) faster than fp32 at one thread (DESIGN.md measured 1.7x for one "
           "2048x512x512 layer with default threads). The searched plan (bytes objective, budget NE "
           f"+{st['max_ne_increase']}, AUC drop {st['max_auc_drop']}) runs at {v['searched plan']['median']:.2f}x: "
           f"the budget left {int8_layers} of its {len(layers)} layers at int8"
           + (" (accepted by the interval rule: the upper ends of the 95% intervals within the budget, on "
              f"{result['plan']['validated']['rows']:,} validation rows; on 20,000 rows this budget left the plan near "
              "float, 1.18x, on 2026-12-01)"
              if result.get("plan", {}).get("accept") == "interval" and result["plan"].get("validated") else "")
           + (f", and its {fp8} fp8 table(s) look up 20-30x slower than fp32 (reports/fp8_lookup.md)" if fp8 else "")
           + ". Table precision alone moves samples/s little here "
           f"(fp32 artifact {v['artifact fp32']['median']:.2f}x vs float): at dim 16 and one id per table the "
           "lookups are a small share of the forward pass. What the plan buys is memory (table MB column) within the "
           "accuracy budget (NE and AUC columns, windows 5-6, which neither search nor calibration saw).", ""]
    md += latency_section(result)
    return md


def latency_section(result: dict[str, Any]) -> list[str]:
    lm = result.get("latency_model")
    if not lm:
        return []
    arts = result["artifacts"]

    def mix(name: str) -> str:
        counts: dict[str, int] = {}
        for p in arts[name]["tables"].values():
            counts[p] = counts.get(p, 0) + 1
        return ", ".join(f"{v} x {k}" for k, v in sorted(counts.items()))
    rows = [[name, mix(name), f"{arts[name]['embedding_bytes'] / 2**20:.1f}",
             f"{lm['predicted_us'] / 1e3:.2f}" if name == "latency plan" else "",
             bc.fmt_spread(lm["measured_us"][name], 1e-3, 2)] for name in ("searched plan", "latency plan")]
    ratio, speed = lm["measured_over_predicted"]["median"], lm["latency_plan_speedup"]["median"]
    md = ["**The latency objective, checked.** `lowprec search --objective latency` minimises a predicted time "
          "per batch: the sum of its options' times, each measured alone on this machine (a table as a one-table "
          "TBE lookup, a layer as its forward); savings under 0.5% of the float model's time count as none. Both "
          f"plans timed whole, interleaved, on batches of {lm['batch']:,} rows (the search's batch size), ms per "
          "batch, median [min-max]:", ""]
    md += bc.md_table(["plan", "tables", "table MB", "predicted", "measured"], rows)
    differ = [k for k, v in arts["latency plan"]["layers"].items() if v != arts["searched plan"]["layers"][k]]
    gap_ms = (lm["measured_us"]["latency plan"]["median"] - lm["predicted_us"]) / 1e3
    if ratio > 1.1:
        ops = lm.get("latency_plan_ops_ms", {})
        top = ", ".join(f"`{k}` {v:.2f}" for k, v in list(ops.items())[:6])
        fit = (f"The additive model under-predicts the whole plan: measured {ratio:.2f}x its prediction, "
               f"{gap_ms:.1f} ms per batch it does not see: what lies between the options (the interaction's "
               "batched matmul and gather, the ReLUs, the concatenations). torch.profiler on the latency plan's "
               f"forward, self time in ms per batch: {top}. The solver needs only the options' relative times, "
               "which the gap does not change.")
    elif ratio < 0.9:
        fit = (f"The additive model over-predicts the whole plan: measured {ratio:.2f}x its prediction "
               "(per-option fixed costs that one TBE call and one forward pay once).")
    else:
        fit = f"The additive model predicted the whole plan to {100 * abs(ratio - 1):.0f}%."
    md.append(fit + f" The latency plan ran at {bc.fmt_ratio(lm['latency_plan_speedup'])} the speed of the bytes plan.")
    tried = [r for r in result.get("latency_search", {}).get("rounds", [])
             if not r["fits"] and any(r["layers"].get(f"layer:{k}") == "int8" for k in differ)]
    if speed < 1 and differ:
        text = (f" It is slower because it keeps {', '.join(differ)} above int8, where the bytes plan has int8")
        if tried:
            text += (": the latency search tried int8 there (" + "; ".join(
                f"multiplier {r['multiplier']:.1f}: validated NE {100 * r['ne_increase']:+.3f}%" for r in tried)
                + f", budget +{result['settings']['max_ne_increase']}) and it failed validation")
        text += (". The bytes plan validates with those layers at int8 because its int2 tables lower the NE "
                 f"on this data (validated NE {100 * result['search']['ne_increase']:+.3f}% overall): compensating "
                 "errors, not a property of the layers. The latency search has no reason to take int2 tables (on "
                 "this CPU they save no lookup time, section a), so it does not find that offset. The objective does "
                 "what it says; on this model the fastest plan within budget is the one the bytes search found by "
                 "accident.")
        md[-1] += text
    return md + [""]
