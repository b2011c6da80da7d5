"""`lowprec drift`: the scheduled accuracy-drift job (thin: parse, build a DriftJob, run, render)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lowprec.cli import emit_json, say_warning
from lowprec.cli._common import StageBars
from lowprec.drift.record import LEARNED_FROM


@click.command()
@click.option("--reference", required=True, type=click.Path(path_type=Path), help="Float model directory.")
@click.option("--candidate", required=True, type=click.Path(path_type=Path),
              help="Quantized artifact directory (the deployed one; never modified).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Prepared dataset directory holding the windows to monitor.")
@click.option("--windows", help="Windows to monitor: `3`, `0-4`, `5,7,9`, `all` or `label:A..B` "
                                "[the recipe's [windows] monitor].")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="Recipe TOML; its [windows] monitor applies when --windows is not given.")
@click.option("--db", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite history (created if missing); windows already in it are not recomputed.")
@click.option("--report", "report_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report directory (report.md, index.html, PNGs), regenerated every run.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="THRESHOLDS.toml overriding [alarm], [bootstrap], [recalibrate], [estimate] defaults "
                   "(docs/drift.md).")
@click.option("--on-alarm", type=click.Choice(["none", "recalibrate"]), default="none", show_default=True,
              help="recalibrate: write a recalibrated artifact beside the deployed one and re-score the "
                   "first alarmed window with it.")
@click.option("--recalibrate-on", type=click.Choice(["healthy", "alarmed", "both"]),
              help="Windows to recalibrate on (overrides recalibrate.source): the latest healthy windows "
                   "before the first alarm, the alarmed window itself, or both.")
@click.option("--calibration", "calib_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The candidate's CALIB.json: calibration-time clipping rates and method.")
@click.option("--allow-unrelated-candidate", is_flag=True,
              help="Monitor a candidate not made from --reference: an artifact converted from another "
                   "model, or a float model with other weights (refused by default).")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Rows scored per forward pass (memory grows with it). Results do not change with it, "
                   "except for a candidate with dynamic int8 layers (converted without --calibration): "
                   "their activation ranges are taken per batch, so keep one batch size for one --db.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last stdout line.")
def drift(reference, candidate, data_dir, windows, recipe, db, report_dir, config_path, on_alarm, recalibrate_on,
          calib_path, allow_unrelated_candidate, batch_size, as_json):
    """Monitor a quantized candidate against its float reference, window by window.

    For every window not yet in --db: one streamed pass scores both models on the same rows and
    records NE, log-loss, AUC and calibration of each, the paired NE gap with a Poisson-bootstrap
    interval, DeLong's AUC test, the calibration gap, PSI of the scores, per-layer clipping and
    per-table quantization error; a CUSUM + hard-limit rule decides the alarm.

    \b
    Windows whose labels file (day_N_labels.npy) is missing yet get a label-free record (the
    estimated NE gap from KL(p_ref || p_cand), rank agreement, |p_cand - p_ref|, PSI, per-table and
    per-layer attribution, judged by the [estimate] thresholds); a later run that finds the labels
    fills in the labelled metrics of the same window (docs/drift.md).

    \b
    Exit codes: 0 healthy; 1 alarm (a window processed in this run, or the latest requested
    window, is in alarm, labelled or estimated); 2 bad input, or another run holds --db.
    Example:
        lowprec drift --reference model --candidate art --data data --windows 5-13 \\
            --db drift.sqlite --report drift-report --calibration CALIB.json
    """
    import dataclasses

    from lowprec import distributed as dist
    from lowprec.drift.alarm import load_config
    from lowprec.drift.job import DriftJob, run
    from lowprec.errors import InputError
    from lowprec.fileio import claim_output, within
    from lowprec.recipe import load_recipe, pick

    windows = pick(windows, load_recipe(recipe), "windows", "monitor")
    windows = None if windows is None else str(windows)
    if windows is None:
        raise InputError("no windows to monitor: give --windows or a --recipe with [windows] monitor")
    claim_output(report_dir, "drift-report", [reference, candidate, data_dir, db], what="--report")
    for given in (reference, candidate, data_dir):
        if within(db, given):
            raise InputError(f"--db {db} is inside the input {given}, which drift never modifies "
                             f"(and a later write of it would delete the history); give a path outside it")
    config = load_config(config_path)
    if recalibrate_on:
        config = dataclasses.replace(
            config, recalibrate=dataclasses.replace(config.recalibrate, source=recalibrate_on))
    job = DriftJob(reference, candidate, data_dir, windows, db, report_dir, config, on_alarm, calib_path,
                   batch_size, allow_unrelated_candidate=allow_unrelated_candidate)
    dist.check_same([p for p in (reference, candidate, data_dir, recipe, config_path, calib_path) if p])
    with StageBars() as stages:
        outcome = run(job, stages)
    if not dist.is_main():
        return  # rank 0 renders and sets the exit code
    for note in outcome.notes:  # (on stderr with --json too: a cron job logs stderr, parses stdout)
        click.echo(f"note: {note}", err=True)
    learned = [w["window"] for w in outcome.windows
               if any(str(x).startswith(LEARNED_FROM) for x in w.get("warnings") or [])]
    if learned:  # (QA 9a item 8: said per window in the report and --json only, unlike eval)
        say_warning(f"window(s) {', '.join(map(str, learned))}: --reference learned from them (training or "
                    f"validation data): their metrics are not held-out ones, and as a staleness baseline such a "
                    f"window makes later ones look stale; monitor windows after the training ones")
    if as_json:
        emit_json(outcome.to_json())
    else:
        _render(outcome)
    sys.exit(outcome.exit_code)


def _render(outcome) -> None:
    from lowprec.drift.alarm import pct

    for w in outcome.windows:
        new = "*" if w["processed"] else " "
        click.echo(f"{new}window {w['window']:>4} {w['label'] or '':>10}  NE gap {pct(w['ne_gap']):>8} "
                   f"[{pct(w['ne_gap_lo'])}, {pct(w['ne_gap_hi'])}]  {'ALARM' if w['alarm'] else 'ok   '}  "
                   f"{w['reason'] if w['alarm'] else ''}")
        for s in w["staleness"]:
            click.echo(f"              staleness: {s}")
    for e in outcome.estimates:  # label-free: every window scored; the only record while labels are pending
        if e["labels"] == "pending" or e["est_alarm"]:
            click.echo(f"{'*' if e['processed'] else ' '}window {e['window']:>4} {e['label'] or '':>10}  "
                       f"estimated NE gap {pct(e['est_gap']):>8} [{pct(e['est_lo'])}, {pct(e['est_hi'])}]  "
                       f"{'ALARM' if e['est_alarm'] else 'ok   '}  labels {e['labels']}  "
                       f"{e['est_reason'] if e['est_alarm'] else ''}")
    for r in outcome.recalibrations:
        click.echo(f"recalibration ({r['source']}): {r.get('reason') or r.get('skipped')}")
    first = outcome.first_alarm
    if first is not None and first not in outcome.labelled_alarms:
        first = f"{first} (label-free estimate)"  # an estimate alarm exits 1 too: say which
    click.echo(f"{len(outcome.processed)} window(s) processed; first alarm: "
               f"{first if first is not None else 'none'}; report {outcome.report}")


COMMANDS = [drift]
