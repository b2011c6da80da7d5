"""`lowprec search`: the accuracy-budgeted precision search."""

from __future__ import annotations

from pathlib import Path

import click

from lowprec.cli import emit_json, say_warning
from lowprec.cli._common import StageBars, data_option, fmt, json_option, smaller


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Float model directory.")
@data_option
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe TOML (calibration/*.toml); flags override it.")
@click.option("--calib-windows", help="Windows that measure sensitivity (SPEC or label:A..B).")
@click.option("--eval-windows", help="Windows that validate the chosen plan.")
@click.option("--test-windows", help="Windows the search never sees; the chosen plan is reported there too "
                                     "[recipe windows.test, else none].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PLAN.json to write.")
@click.option("--max-ne-increase", help="Relative NE increase allowed, e.g. 0.1% or 0.001 [recipe or 0.1%].")
@click.option("--max-auc-drop", help="AUC drop allowed, e.g. 0.001 [recipe or 0.001].")
@click.option("--memory-budget", type=click.IntRange(min=0),
              help="Upper bound on table + layer bytes [recipe [budgets] memory_budget, else none].")
@click.option("--objective", type=click.Choice(["bytes", "latency"]), help="What the plan minimises [bytes].")
@click.option("--precisions", help="Table precisions to consider, e.g. fp16,int8,int4 [all]. Hot-shared tables "
              "(--sharing-ratios) take only these too; tier layouts name their own precisions, which this "
              "does not limit.")
@click.option("--layer-precisions", help="Layer precisions to consider, e.g. fp32,int8 [fp32,fp16,int8].")
@click.option("--sharing-ratios", help="Post-training sharing ratios to consider, e.g. 4,16 (needs row counts). "
              "Shared tables take int8 or int4 (recipe [candidates] sharing_precisions), only those "
              "--precisions allows.")
@click.option("--tier-layouts", help="Tiered tables to consider, ';'-separated, e.g. '0.02:fp16/int4;0.05:fp16/int2' "
              "(hottest rows' share:precision, then the cold rows' precision; needs row counts). A '/rank' "
              "suffix stores rows by rank for a feature pipeline that sends ranks; the latency objective "
              "times such a layout on ranks.")
@click.option("--calibration", "calib_path", type=click.Path(dir_okay=False),
              help="CALIB.json; without it the search calibrates on --calib-windows itself.")
@click.option("--max-rows", type=click.IntRange(min=1), help="Calibration rows cached for sensitivity, in whole batches of 4,096: stops at the first batch "
                   "end at or past N [50000].")
@click.option("--accept", type=click.Choice(["interval", "point"]),
              help="When a validated plan fits the budget. interval: the upper ends of its two-sided 95% "
                   "intervals (NE increase: paired Poisson bootstrap; AUC drop: paired DeLong) are within the "
                   "budget, i.e. one-sided 97.5% confidence each; point: the point estimates are "
                   "[recipe [search] accept, else interval].")
@click.option("--time-whole/--no-time-whole", default=True, show_default=True,
              help="With --objective latency: convert the chosen plan and every uniform plan that fits the "
                   "budgets in full (scratch beside --out, disk ~ their bytes), time them side by side, and take "
                   "a uniform plan that is >= 3% faster and validates. The per-table timings the solver adds "
                   "up can misrank plans (reports/tiered.md).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write report.md + index.html here.")
@json_option
def search(model_dir, data_dir, recipe, calib_windows, eval_windows, test_windows, out, max_ne_increase, max_auc_drop,
           memory_budget, objective, precisions, layer_precisions, sharing_ratios, tier_layouts, calib_path,
           max_rows, accept, time_whole, report_dir, as_json):
    """Search a precision (and sharing) per table and per layer under an accuracy budget.

    Measures each option's NE/AUC effect alone on the calibration windows, picks the cheapest
    plan with an integer program, then converts and validates it on the eval windows, backing
    off the most sensitive choices until the measured loss fits: by default (--accept interval) the
    upper ends of its 95% intervals, not only the point estimates. Cached measurements live beside
    PLAN.json (PLAN.cache.json): an interrupted search resumes from them.

    Runs data-parallel under torchrun (or `lowprec --nproc N search ...`): the measurements are
    dealt over the ranks, validation is data-parallel; same plan as one process, rank 0 writes.
    """
    from lowprec import distributed as dist
    from lowprec.errors import InputError
    from lowprec.fileio import claim_output, within
    from lowprec.search.driver import SearchRequest, run_search

    inputs = [p for p in (model_dir, data_dir, recipe, calib_path) if p]
    if report_dir and within(out, report_dir):
        raise InputError(f"--out {out} is inside --report {report_dir}, which is written whole (an "
                         f"older report there is replaced): put the plan outside it")
    claim_output(out, "plan", inputs)
    if report_dir:
        claim_output(report_dir, "report", inputs, what="--report")
    req = SearchRequest(
        model_dir=Path(model_dir), data_dir=Path(data_dir), out=Path(out), recipe=recipe,
        calib_windows=calib_windows, eval_windows=eval_windows, test_windows=test_windows,
        max_ne_increase=max_ne_increase,
        max_auc_drop=max_auc_drop, memory_budget=memory_budget, objective=objective,
        precisions=precisions, layer_precisions=layer_precisions, sharing_ratios=sharing_ratios,
        tier_layouts=tier_layouts, calib_path=calib_path, max_rows=max_rows, report_dir=report_dir,
        accept=accept, time_whole=time_whole)
    dist.check_same(inputs)
    with StageBars() as stages:
        result, summary = run_search(req, stages)
    if not dist.is_main():
        return
    if result.message:
        say_warning(result.message)
    for w in summary["warnings"]:
        say_warning(w)
    if as_json:
        emit_json(summary)
        return
    v = result.validation
    click.echo(f"plan -> {out}")
    click.echo(f"  bytes: tables {summary['table_bytes']:,}, layers {summary['layer_bytes']:,} "
               f"(tables {smaller(summary['compression'])}, the whole model "
               f"{summary['total_compression']:.1f}x)")
    if v is not None:
        click.echo(f"  validated on {v.rows:,} rows: NE {100 * v.ne_increase:+.4f}% "
                   f"[{100 * v.ne_increase_ci[0]:.4f}, {100 * v.ne_increase_ci[1]:.4f}], "
                   f"AUC drop {fmt(v.auc_drop, 5)} [{fmt(v.auc_drop_ci[0], 5)}, {fmt(v.auc_drop_ci[1], 5)}]")
        click.echo(f"  budget holds: point estimate {_yes(summary['validated_fits']['point'])}, "
                   f"whole interval {_yes(summary['validated_fits']['interval'])}")
    else:
        click.echo("  no quantized plan validated within budget: the plan keeps everything fp32")
    t = result.test
    if t is not None:
        click.echo(f"  test windows ({t.rows:,} rows, never seen by the search): NE {100 * t.ne_increase:+.4f}% "
                   f"[{100 * t.ne_increase_ci[0]:.4f}, {100 * t.ne_increase_ci[1]:.4f}], AUC drop "
                   f"{fmt(t.auc_drop, 5)} [{fmt(t.auc_drop_ci[0], 5)}, {fmt(t.auc_drop_ci[1], 5)}]; budget holds: point {_yes(summary['tested_fits']['point'])}, "
                   f"interval {_yes(summary['tested_fits']['interval'])}")
    for r in result.rounds:
        click.echo(f"  round {r['round']}: {r['bytes']:,} bytes, {r['verdict']['reason']}")
    click.echo(f"  {result.evaluations} evaluations, {len(result.rounds)} validation round(s), "
               f"{result.seconds:.1f}s")
    if report_dir:
        click.echo(f"  report: {Path(report_dir) / 'index.html'}")


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


COMMANDS = [search]
