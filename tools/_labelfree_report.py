"""reports/drift_without_labels.md from the result of tools/bench_labelfree.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _bench_common as bc


def _p(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{100 * x:+.{digits}f}%"


def _delay(d: int | None) -> str:
    return "not flagged" if d is None else f"flagged {d} windows after the fault starts" if d else \
        "flagged in the first faulted window (delay 0)"


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def write_markdown(path: Path, r: dict[str, Any]) -> None:
    rows, name = r["windows"], path.stem
    stat = [w for w in rows if not w["fault"]]
    fault = [w for w in rows if w["fault"]]
    planted = [w["ne_gap"] for w in fault if w["ne_gap"] is not None]
    base = [w["ne_gap"] for w in stat if w["ne_gap"] is not None]
    lines = [
        "# Drift monitoring before the labels arrive: how good is the label-free estimate?", "",
        "Regenerate (from the repository root; ~the seconds below on this machine):", "", "```sh",
        f"OMP_NUM_THREADS=1 .venv/bin/{r['command']}", "```", "",
        f"Run on {bc.machine_line(r['machine'])}; {r['load_after'][0]:.1f} at the end (the machine is shared "
        f"with ~6 other jobs). Wall seconds per step: {r['seconds']}.", "",
        "## Setup", "",
        "Latent synthetic CTR data (`lowprec data synth --kind latent --scale 0.01`, 100,000 rows a day, no data "
        "drift); the float DLRM trained on windows 0-1 (1 epoch), its intercept recalibrated on window 2, and its "
        "int8 artifact (every table and MLP layer int8, static activation ranges by minmax on window 2). "
        f"{len(stat)} stationary windows of {r['window_rows']:,} rows (3-32, the first rows of days 3-32) are scored with that healthy artifact; the planted "
        f"quantization fault: from window 33 on, the candidate is an artifact of the same plan whose calibration "
        f"clips (activation ranges at the {r['clip_percentile']}th percentile of window 2), as if a re-deploy had "
        f"shipped a bad calibration. Window 33 holds 1,000,000 rows (days 33-42), 34-36 hold {r['window_rows']:,} each. "
        "A drift database holds "
        "one candidate, so the tool runs the job's own per-window step (`lowprec.drift.delayed.process_window`) "
        "with the candidate switched at window 33, and writes the drift report from that database. "
        + ("The labels of windows 3-36 were hidden for a first pass (label-free records only) and restored for "
           "a second (the fill-in)." if r["delayed"] else
           "Labels were present: each window's label-free record and its labelled record come from one pass "
           "(the label-free numbers read no label; tests/drift/test_delayed.py checks they equal a window's "
           "scored without its labels file). `--delayed` runs the two-pass delayed mode instead."), "",
        "The estimate: ΣKL(p_ref‖p_cand) / ΣH(p_ref), the candidate's expected relative NE increase if the "
        "float model is calibrated; its 95% interval is where the labelled gap of the same rows should fall "
        "(label noise under labels ~ Bernoulli(p_ref), plus row-sampling noise). The estimate rule: default "
        "[estimate] thresholds (shift over the baseline window 3 beyond 0.05% by 3 se, or beyond 0.2% net "
        "of 3 se). The labelled rule: default [alarm] thresholds.", "",
        "## Results", "",
        f"The planted fault's measured (labelled) NE gap: {_p(planted[0] if planted else None)} on the 1M-row window "
        f"(the healthy artifact's: {_p(sum(base) / len(base) if base else None)} on average over the stationary "
        f"windows).", "",
        "| target | measured |", "|---|---|",
        f"| labelled gap inside the estimate's interval on >= 90% of windows | {r['coverage_all']:.0%} of all "
        f"{len(rows)} windows ({r['coverage_stationary']:.0%} of the stationary, {r['coverage_fault']:.0%} of the "
        f"faulted) |",
        f"| planted gap flagged within one window of 1M rows | estimate rule: {_delay(r['delay_estimate'])} "
        f"(labelled rule: {_delay(r['delay_labelled'])}) |",
        f"| <= 5% false alarms over >= 30 stationary windows | estimate rule {r['false_alarms_estimate']} of "
        f"{r['stationary']} ({r['false_alarms_estimate'] / r['stationary']:.0%}); labelled rule "
        f"{r['false_alarms_labelled']} of {r['stationary']} |", "",
        f"![estimated vs measured gap]({name}_estimate.png)", "",
        "| window | date | rows | estimated gap [interval] | measured gap [CI] | inside | shift | Kendall τ | "
        "abs Δp p99 | estimate | labelled |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in rows:
        lines.append(f"| {w['window']}{' (fault)' if w['fault'] else ''} | {w['label']} | {w['rows']:,} | "
                     f"{_p(w['est_gap'])} [{_p(w['est_lo'])}, {_p(w['est_hi'])}] | {_p(w['ne_gap'])} "
                     f"[{_p(w['ne_gap_lo'])}, {_p(w['ne_gap_hi'])}] | {'yes' if w['covered'] else 'no'} | "
                     f"{_p(w['est_shift'])} | {w['kendall_tau'] or 0:.4f} | {w['abs_p99'] or 0:.2g} | "
                     f"{'ALARM' if w['est_alarm'] else 'ok'} | {'ALARM' if w['labelled_alarm'] else 'ok'} |")
    top = r["attribution_fault_window"]
    lines += ["", "## Attribution in the first faulted window", "",
              "Mean KL caused by one candidate part swapped into the float reference (512-row subsample):", "",
              "| part | mean KL | share of the whole candidate's |", "|---|---|---|"]
    lines += [f"| {a['part']} | {a['kl']:.3g} | {_share(a['share'])} |" for a in top]
    lines += ["", "## Reading it", "", *_reading(r, stat, fault), ""]
    path.write_text("\n".join(lines))


def _reading(r: dict[str, Any], stat: list[dict[str, Any]], fault: list[dict[str, Any]]) -> list[str]:
    miss = [w for w in stat if not w["covered"]]
    bias = [w["ne_gap"] - w["est_gap"] for w in stat if w["ne_gap"] is not None and w["est_gap"] is not None]
    mean_bias = sum(bias) / len(bias) if bias else float("nan")
    out = [f"- Stationary windows: the labelled gap minus the estimate averages {_p(mean_bias)}; "
           f"{len(miss)} of {len(stat)} windows fall outside the interval ({', '.join(str(w['window']) for w in miss) or 'none'})."]
    if fault:
        f0 = fault[0]
        out.append(f"- First faulted window ({f0['rows']:,} rows): estimate {_p(f0['est_gap'])}, measured "
                   f"{_p(f0['ne_gap'])}.")
    return out
