"""`lowprec demo`: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

from pathlib import Path

import click

from lowprec.cli import emit_json
from lowprec.cli._common import SEED, StageBars, json_option


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for data, models, reports.")
@click.option("--rows-per-window", default=20_000, show_default=True, type=click.IntRange(min=1000),
              help="Rows in each of the synthetic data's 14 windows.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the data, the training and the search; same seed, same outputs.")
@json_option
def demo(out, rows_per_window, seed, as_json):
    """Run synth -> train -> calibrate -> search -> convert -> drift and write OUT/index.html."""
    from lowprec.demo import DemoConfig, run_demo

    with StageBars() as stages:
        facts = run_demo(Path(out), DemoConfig(rows_per_window=rows_per_window, seed=seed), stages)
    if as_json:
        emit_json({"index": str(Path(out) / "index.html"), "compression": facts["artifact"]["compression"],
                   "alarms": facts["drift"]["alarms"], "validated": facts["search"]["validated"]})
        return
    a, d = facts["artifact"], facts["drift"]
    click.echo(f"tables {a['fp32_embedding_bytes']:,} -> {a['embedding_bytes']:,} bytes "
               f"({a['compression']:.1f}x); alarms at windows {d['alarms'] or 'none'}")
    click.echo(f"open {Path(out) / 'index.html'}")


COMMANDS = [demo]
