"""`lowprec train` and `lowprec eval`."""

from __future__ import annotations

import click

from lowprec.cli import emit_json
from lowprec.cli._common import fmt, int_list, name_value_pairs, progress_bar


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="Prepared dataset directory.")
@click.option("--windows", required=True, help="Training windows: `3`, `0-4`, `5,7,9` or `all`.")
@click.option("--out", required=True, type=click.Path(), help="Model directory to write (model.safetensors + config.json).")
@click.option("--seed", default=0, show_default=True, help="Seed for init and data order; same seed, same weights.")
@click.option("--epochs", default=2, show_default=True)
@click.option("--batch-size", default=512, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate of the MLPs.")
@click.option("--sparse-lr", default=1e-2, show_default=True, help="SparseAdam learning rate of the tables.")
@click.option("--embedding-dim", default=16, show_default=True, help="D; a multiple of 4 serves on FBGEMM.")
@click.option("--bottom-mlp", default="64", show_default=True, help="Hidden widths of the bottom MLP (it always ends at D).")
@click.option("--top-mlp", default="64,32", show_default=True, help="Hidden widths of the top MLP (a 1-wide output is added).")
@click.option("--embedding", default="dense", show_default=True, help="Backend SPEC for every table.")
@click.option("--table-embedding", multiple=True, help="NAME=SPEC for one table (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
def train(data_dir, windows, out, seed, epochs, batch_size, lr, sparse_lr, embedding_dim,
          bottom_mlp, top_mlp, embedding, table_embedding, as_json):
    """Train a float DLRM on WINDOWS of a prepared dataset and save it to OUT."""
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.data.dataset import Dataset
    from lowprec.data.windows import parse_windows
    from lowprec.evaluation.scoring import base_rate_warning, worse_than_base_rate
    from lowprec.train import TrainConfig, total_steps_rows
    from lowprec.train import train as run_train

    ds = Dataset(data_dir)
    cfg = TrainConfig(
        windows=tuple(parse_windows(windows, ds.meta.window_indices)), epochs=epochs,
        batch_size=batch_size, lr=lr, sparse_lr=sparse_lr, seed=seed, embedding_dim=embedding_dim,
        bottom_mlp=int_list(bottom_mlp, "--bottom-mlp") + (embedding_dim,),
        top_mlp=int_list(top_mlp, "--top-mlp"), embedding=embedding,
        table_embedding=name_value_pairs(table_embedding, "--table-embedding"),
    )
    with progress_bar(total_steps_rows(ds, cfg), "train") as update:
        model, info = run_train(ds, cfg, progress=update)
    save_float_model(model, out, info)
    params = sum(p.numel() for p in model.parameters())
    bad = worse_than_base_rate(info["final_epoch_ne"])
    if bad:
        click.echo(base_rate_warning(info["final_epoch_ne"], "its training data (last epoch)"), err=True)
    if as_json:
        emit_json({"out": out, "parameters": params, **info, "worse_than_base_rate": bad})
    else:
        click.echo(f"trained on {info['rows_seen']:,} rows ({epochs} epochs) in {info['seconds']}s; "
                   f"final log-loss {fmt(info['final_epoch_logloss'])}; {params:,} parameters -> {out}")


@click.command(name="eval")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Float model directory or quantized artifact.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False))
@click.option("--windows", required=True, help="Windows to score: `3`, `0-4`, `5,7,9` or `all`.")
@click.option("--batch-size", default=4096, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (overall `auc`, `ne`, ... and `windows`).")
def eval_cmd(model_dir, data_dir, windows, batch_size, as_json):
    """Score a model per window and overall: NE, log-loss, AUC, calibration."""
    from lowprec.checkpoint.load import load_model
    from lowprec.data.batches import count_rows
    from lowprec.data.dataset import Dataset
    from lowprec.data.windows import parse_windows
    from lowprec.evaluation.scoring import base_rate_warning, evaluate, worse_than_base_rate
    from lowprec.train import check_compatible

    ds = Dataset(data_dir)
    chosen = parse_windows(windows, ds.meta.window_indices)
    model, config, _ = load_model(model_dir)
    check_compatible(config, ds.meta, str(model_dir))
    with progress_bar(count_rows(ds, chosen), "eval") as update:
        result = evaluate(model, ds, chosen, batch_size, progress=update)
    if worse_than_base_rate(result.overall.ne):
        click.echo(base_rate_warning(result.overall.ne, f"windows {windows}"), err=True)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"{'window':>8} {'label':>10} {'rows':>9} {'NE':>8} {'logloss':>8} {'AUC':>8} {'calib':>7}")
    for w, m in sorted(result.per_window.items()):
        label = ds.meta.window(w).label
        click.echo(f"{w:>8} {label:>10} {int(m['rows']):>9} {fmt(m['ne']):>8} {fmt(m['logloss']):>8} "
                   f"{fmt(m['auc']):>8} {fmt(m['calibration'], 3):>7}")
    o = result.overall
    click.echo(f"{'overall':>8} {'':>10} {int(o.weight):>9} {fmt(o.ne):>8} {fmt(o.logloss):>8} "
               f"{fmt(o.auc):>8} {fmt(o.calibration, 3):>7}")


COMMANDS = [train, eval_cmd]
