"""`lowprec calibrate`."""

from __future__ import annotations

import click

from lowprec.cli import emit_json, say_warning
from lowprec.cli._common import data_option, json_option, progress_bar


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Float model directory.")
@data_option
@click.option("--windows", required=True, help="Calibration windows: `3`, `0-4`, `5,7,9` or `all`.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CALIB.json to write (row counts go beside it).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "mse", "entropy"]), default="minmax",
              show_default=True, help="How each int8 layer's activation range is chosen.")
@click.option("--percentile", default=99.99, show_default=True, type=click.FloatRange(50, 100, min_open=True),
              help="For --method percentile: the share of each layer's inputs its range covers, in (50, 100].")
@click.option("--max-rows", type=click.IntRange(min=1), help="Rows per pass, in whole batches: a pass stops at the first batch end at or past N.")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Rows scored per forward pass (memory grows with it; results do not change).")
@json_option
def calibrate(model_dir, data_dir, windows, out, method, percentile, max_rows, batch_size, as_json):
    """Measure activation ranges, clipping rates and row access counts on calibration windows.

    Runs data-parallel under torchrun (or `lowprec --nproc N calibrate ...`): same file, rank 0 writes."""
    from lowprec import distributed as dist
    from lowprec.calibrate import CalibConfig, save_calibration
    from lowprec.calibrate import calibrate as run_calibrate
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.data.dataset import Dataset
    from lowprec.data.windows import select_windows
    from lowprec.fileio import claim_output
    from lowprec.train import check_compatible

    claim_output(out, "calibration", [model_dir, data_dir])
    if method != "percentile" and click.get_current_context().get_parameter_source("percentile") is \
            click.core.ParameterSource.COMMANDLINE and dist.is_main():
        say_warning(f"--percentile {percentile:g} is not used: it sets --method percentile's range, and the "
                    f"method is {method}")
    ds = Dataset(data_dir)
    cfg = CalibConfig(tuple(select_windows(windows, ds.meta)), method, percentile, batch_size, max_rows=max_rows)
    dist.check_same([model_dir, data_dir])
    model, _ = load_float_model(model_dir)
    check_compatible(model.config, ds.meta, model_dir)
    with progress_bar(cfg.rows_read(ds), "calibrate") as update:
        calib = run_calibrate(model, ds, cfg, update)
    from pathlib import Path

    if not dist.is_main():
        return
    from lowprec.checkpoint.float_model import weights_sha256  # recorded, verified on load

    save_calibration(calib, out, weights_sha256(Path(model_dir)), (model_dir, data_dir))
    summary = {"out": out, "method": method, "rows": calib["rows"],
               "layers": {n: {k: v[k] for k in ("min", "max", "clip_rate")} for n, v in calib["layers"].items()}}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"calibrated on {calib['rows']:,} rows with {method}:")
    for name, v in summary["layers"].items():
        click.echo(f"  {name:<10} range [{v['min']:.4g}, {v['max']:.4g}]  clip rate {v['clip_rate']:.2e}")
    click.echo(f"-> {out}")


COMMANDS = [calibrate]
