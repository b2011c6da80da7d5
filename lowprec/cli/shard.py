"""`lowprec shard`: plan how an artifact's tables spread over N ranks (model-parallel serving)."""

from __future__ import annotations

from pathlib import Path

import click

from lowprec.cli import emit_json
from lowprec.cli._common import json_option


def describe_plan(plan) -> list[str]:
    """One line per rank: its bytes, expected lookups (from calibration's counts; without them,
    unknown) and pieces (table[first:stop] when split)."""
    nbytes_all, lookups_all = plan.rank_bytes(), plan.rank_lookups()
    total, total_lookups = sum(nbytes_all) or 1, sum(lookups_all) or 1.0
    pieces = {k: len(v) for k, v in plan.by_table().items()}
    lines = []
    for r, (shards, nbytes, lookups) in enumerate(zip(plan.by_rank(), nbytes_all, lookups_all)):
        names = ", ".join(s.table if pieces[s.table] == 1 else f"{s.table}[{s.first}:{s.stop}]" for s in shards)
        looked = (f"{lookups:,.0f} expected lookups ({100 * lookups / total_lookups:.1f}%)" if plan.lookups_counted
                  else "lookups unknown without --calibration" if plan.lookups_counted is False
                  else "lookups not recorded (a plan of an older lowprec)")
        lines.append(f"rank {r}: {nbytes:,} bytes ({100 * nbytes / total:.1f}%), {looked}: {names or '-'}")
    return lines


@click.command()
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("--ranks", required=True, type=click.IntRange(min=1),
              help="Number of ranks to spread the tables over (at most the artifact's rows in all).")
@click.option("--calibration", "calib_path", type=click.Path(dir_okay=False),
              help="CALIB.json: its row access counts weight the balance by expected lookups.")
@click.option("--allow-calibration-mismatch", is_flag=True,
              help="Use a --calibration measured on another model than the artifact's (refused by default).")
@json_option
def shard(artifact, ranks, calib_path, allow_calibration_mismatch, as_json):
    """Write ARTIFACT/shard-plan.json: each rank ~1/N of the table bytes and of the lookups.

    A table bigger than 1/N of the bytes is split by id range. Serve it with N ranks under torchrun
    (lowprec.serve.sharded.load_sharded); `lowprec inspect` shows the plan."""
    from lowprec.calibrate import load_calibration
    from lowprec.checkpoint.artifact import read_manifest
    from lowprec.checkpoint.convert import check_calibration_model
    from lowprec.fileio import add_entries, sha256_file
    from lowprec.errors import InputError
    from lowprec.serve.shard_plan import PLAN_FILE, plan_shards, save_shard_plan, total_rows

    manifest = read_manifest(artifact)
    calibration = load_calibration(calib_path) if calib_path else None
    source = manifest.get("source", {}).get("sha256")
    if calibration is not None and isinstance(source, str) and not allow_calibration_mismatch:
        check_calibration_model(calibration, source, f"{artifact}'s source model")  # counts of another model's ids
    counts = calibration["row_counts"] if calibration is not None else None
    rows = total_rows(manifest)
    if ranks > rows:  # (each rank a piece of at least one row; the plan is O(pieces log N))
        raise InputError(f"--ranks {ranks}: {artifact}'s tables hold {rows:,} rows in all, so at most {rows:,} "
                         f"ranks can hold a row each; give --ranks <= {rows:,}")
    plan = plan_shards(manifest, sha256_file(artifact / "manifest.json"), ranks, counts)
    path = save_shard_plan(plan, artifact)
    add_entries(artifact, [PLAN_FILE])  # lowprec's own: a later convert --out may replace the artifact
    if as_json:
        emit_json({"shard_plan": str(path), **plan.to_json()})
        return
    for line in describe_plan(plan):
        click.echo(line)
    click.echo(f"-> {path}")


COMMANDS = [shard]
