"""`lowprec train` and `lowprec eval`."""

from __future__ import annotations

import click

from lowprec.cli import emit_json, say_warning
from lowprec.cli._common import SEED, FiniteFloat, data_option, fmt, name_value_pairs, progress_bar, widths

POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="Prepared dataset directory.")
@click.option("--windows", help="Training windows: `3`, `0-4`, `5,7,9`, `all` or `label:A..B` "
                                "[the recipe's [windows] train].")
@click.option("--out", required=True, type=click.Path(), help="Model directory to write (model.safetensors + config.json).")
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe TOML: [windows] train and validate; flags override it.")
@click.option("--val-windows", help="Validation windows: score every epoch there, stop early, keep the best epoch [recipe's `validate`].")
@click.option("--patience", default=1, show_default=True, type=click.IntRange(min=1), help="Stop after this many epochs without a lower validation NE.")
@click.option("--init-bias/--no-init-bias", default=True, show_default=True,
              help="Start the output bias at the logit of the training positive rate.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed for init and data order; same seed, same weights.")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Epochs (at most, with --val-windows) [1; up to 5 with validation windows, which stop "
                   "training early].")
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(min=1),
              help="Training rows per optimizer step.")
@click.option("--optimizer", type=click.Choice(["rowwise-adagrad", "sparse-adam"]), default="rowwise-adagrad",
              show_default=True, help="Tables: FBGEMM's fused training TBE with row-wise Adagrad, or "
                                      "per-table EmbeddingBags with SparseAdam (the previous path).")
@click.option("--lr", default=1e-3, show_default=True, type=POSITIVE, help="Adam learning rate of the MLPs.")
@click.option("--sparse-lr", type=POSITIVE, help="Learning rate of the tables [0.05 rowwise-adagrad, 0.01 sparse-adam].")
@click.option("--embedding-l2", type=NON_NEGATIVE,
              help="Adds L2 x the batch mean of Σ_t ||pooled embedding_t||² to the loss: each looked-up row "
                   "is shrunk once per sample it appears in (frequency-aware regularisation).")
@click.option("--adagrad-init", type=NON_NEGATIVE,
              help="Start of the tables' row-wise Adagrad accumulators: a rarely seen id takes small steps "
                   "(lr * g / sqrt(init + g²)) instead of full normalised ones [TrainConfig's default].")
@click.option("--embedding-prior", type=NON_NEGATIVE,
              help="Adds λ x the batch mean of Σ_t ||pooled embedding_t||² / (training count of the id): a "
                   "Gaussian prior on every row, which shrinks rarely seen ids hardest [0: off].")
@click.option("--embedding-dim", default=16, show_default=True, type=click.IntRange(min=1),
              help="D; a multiple of 4 serves on FBGEMM.")
@click.option("--bottom-mlp", default="64", show_default=True, callback=widths,
              help="Hidden widths of the bottom MLP, comma-separated, each >= 1 (it always ends at D; '' for none).")
@click.option("--top-mlp", default="64,32", show_default=True, callback=widths,
              help="Hidden widths of the top MLP, comma-separated, each >= 1 (a 1-wide output is added; '' for none).")
@click.option("--embedding", default="dense", show_default=True,
              help="Backend SPEC for every table: dense, hash:ratio=R[,seed=S], qr:ratio=R or "
                   "robe:ratio=R[,z=Z,sign=1,align=1,seed=S] (R: parameter reduction; Z divides --embedding-dim; e.g. robe:ratio=16,z=8,align=1; without align=1 its artifacts serve an approximation).")
@click.option("--table-embedding", multiple=True, help="NAME=SPEC for one table (repeatable), e.g. cat_2=hash:ratio=8.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
def train(data_dir, windows, out, recipe, val_windows, patience, init_bias, seed, epochs, batch_size, optimizer, lr,
          sparse_lr, embedding_l2, adagrad_init, embedding_prior, embedding_dim, bottom_mlp, top_mlp, embedding, table_embedding,
          as_json):
    """Train a float DLRM on WINDOWS of a prepared dataset and save it to OUT.

    Under torchrun (or `lowprec --nproc N train ...`) it trains on TorchRec's DistributedModelParallel:
    tables model-parallel (table-wise, fused row-wise Adagrad), MLPs data-parallel (DDP); rank 0 saves
    the same kind of float model. Same world size and seed, same weights."""
    from lowprec import distributed as dist
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.data.dataset import Dataset, check_table_bytes
    from lowprec.fileio import claim_output
    from lowprec.errors import InputError
    from lowprec.recipe import load_recipe, pick_windows
    from lowprec.evaluation.scoring import base_rate_warning, worse_than_base_rate
    from lowprec.train import TrainConfig, total_steps_rows
    from lowprec.train import train as run_train

    claim_output(out, "model", [data_dir])
    ds = Dataset(data_dir)
    rec = load_recipe(recipe)
    train_w, train_from = pick_windows(windows, rec, recipe, "train", "--windows", ds.meta)
    val_w, val_from = pick_windows(val_windows, rec, recipe, "validate", "--val-windows", ds.meta, optional=True)
    overlap = sorted(set(train_w) & set(val_w))
    if overlap:  # (TrainConfig refuses it too; here the message says where each list came from)
        raise InputError(f"validation windows {overlap} ({val_from}) are also training windows ({train_from})")
    check_table_bytes(ds.meta, embedding_dim)
    cfg = TrainConfig(
        windows=tuple(train_w), epochs=epochs, batch_size=batch_size, lr=lr, sparse_lr=sparse_lr,
        **{k: v for k, v in (("embedding_l2", embedding_l2), ("adagrad_init", adagrad_init),
                             ("embedding_prior", embedding_prior)) if v is not None},
        seed=seed, embedding_dim=embedding_dim,
        bottom_mlp=bottom_mlp + (embedding_dim,), top_mlp=top_mlp, embedding=embedding,
        table_embedding=name_value_pairs(table_embedding, "--table-embedding"),
        optimizer=optimizer, val_windows=tuple(val_w), patience=patience, init_bias=init_bias,
    )
    dist.check_same([p for p in (data_dir, recipe) if p])
    warnings = [w for w in [cfg.validation_order_warning] if w]
    if dist.is_main():
        for w in warnings:
            say_warning(w)
    with progress_bar(total_steps_rows(ds, cfg), "train") as update:
        model, info = run_train(ds, cfg, progress=update)
    if not dist.is_main():
        return
    save_float_model(model, out, info, inputs=[data_dir])  # config.json is strict JSON (fileio.write_json)
    params = sum(p.numel() for p in model.parameters())
    # the saved model is judged: with validation windows the kept epoch, on them (an epoch's training
    # NE averages batches seen while it learned, and a later overfit epoch's can be < 1 while the
    # kept one's held-out NE is >= 1); without, the last epoch on its training data
    m = info["metrics"]
    judged, on = ((m["validation"]["ne"], f"its validation windows (kept epoch {info['best_epoch']})")
                  if "validation" in m else (info["final_epoch_ne"], "its training data (last epoch)"))
    bad = worse_than_base_rate(judged)
    if bad:
        say_warning(base_rate_warning(judged, on))
    if as_json:
        emit_json({"out": out, "parameters": params, "windows": list(cfg.windows), **info,
                   "worse_than_base_rate": bad, "warnings": warnings})
        return
    val = (f"; validation NE {fmt(m['validation']['ne'])} AUC {fmt(m['validation']['auc'])}"
           if "validation" in m else "")
    epochs = info['epochs_run']
    click.echo(f"trained on {sum(ds.meta.window(w).rows for w in cfg.windows):,} rows x {epochs} epoch{'s' * (epochs != 1)} (kept epoch "
               f"{info['best_epoch']}) in {info['seconds']}s; training NE {fmt(m['train']['ne'])} "
               f"AUC {fmt(m['train']['auc'])}{val}; {params:,} parameters -> {out}")


@click.command(name="eval")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Float model directory or quantized artifact.")
@data_option
@click.option("--windows", required=True, help="Windows to score: `3`, `0-4`, `5,7,9`, `all` or `label:A..B`.")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Rows scored per forward pass (memory grows with it). Results do not change with it, "
                   "except for an artifact with dynamic int8 layers (converted without --calibration): "
                   "their activation ranges are taken per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (overall `auc`, `ne`, ... and `windows`).")
def eval_cmd(model_dir, data_dir, windows, batch_size, as_json):
    """Score a model per window and overall: NE, log-loss, AUC, calibration.

    Runs data-parallel under torchrun (or `lowprec --nproc N eval ...`): same numbers, rank 0 prints."""
    from lowprec import distributed as dist
    from lowprec.checkpoint.load import load_model
    from lowprec.data.batches import count_rows
    from lowprec.data.dataset import Dataset
    from lowprec.data.latent import bayes_fields
    from lowprec.data.windows import format_windows, select_windows
    from lowprec.evaluation.metrics import MIN_CLASS_LABELS, scarce_class
    from lowprec.evaluation.scoring import base_rate_warning, evaluate, worse_than_base_rate
    from lowprec.train import check_compatible, seen_in_training

    ds = Dataset(data_dir)
    chosen = select_windows(windows, ds.meta)
    dist.check_same([model_dir, data_dir])
    model, config, info = load_model(model_dir)
    check_compatible(config, ds.meta, str(model_dir))
    learned = seen_in_training(info, ds, chosen) if dist.is_main() else {}  # (info, or an artifact's manifest)
    if learned:
        say_warning(f"window(s) {', '.join(f'{w} ({k})' for w, k in sorted(learned.items()))} hold data "
                    f"--model {model_dir} learned from: their metrics are not held-out ones")
    with progress_bar(count_rows(ds, chosen), "eval") as update:
        result = evaluate(model, ds, chosen, batch_size, progress=update, name=f"--model {model_dir}")
    if not dist.is_main():
        return
    undefined = [w for w, m in sorted(result.per_window.items()) if m["auc"] != m["auc"]]
    one_class = result.overall.auc != result.overall.auc
    if undefined:
        say_warning(f"AUC is undefined (n/a; null in --json) on window(s) {undefined}"
                    f"{' and overall' if one_class else ''}: they hold one label class only (no positives or no "
                    f"negatives), and so is NE, relative to a base rate of 0 or 1; check "
                    f"the data's labels")
    scarce = [(w, s) for w, m in sorted(result.per_window.items())
              if (s := scarce_class(m["ctr"] * m["rows"], m["rows"])) is not None]
    o = result.overall
    pooled = scarce_class(o.ctr * o.weight, o.weight) if len(result.per_window) > 1 else None
    if scarce or pooled:  # (the overall AUC pools the windows: scarce there too, it is said apart)
        which = [f"window(s) {', '.join(f'{w} ({few})' for w, few in scarce)}"] if scarce else []
        say_warning(f"the AUC of {' and of '.join(which + ([f'all windows pooled ({pooled})'] if pooled else []))} "
                    f"rests on fewer than {MIN_CLASS_LABELS} labels of a class: read it, and any difference of "
                    f"it, with care")
    bayes = bayes_fields(ds, chosen, result.overall.auc)  # {} unless the data has true probabilities
    if worse_than_base_rate(result.overall.ne) and not one_class:
        say_warning(base_rate_warning(result.overall.ne, f"windows {format_windows(sorted(result.per_window))}"))
    if as_json:
        emit_json({**result.to_json(), **bayes})
        return
    click.echo(f"{'window':>8} {'label':>10} {'rows':>9} {'NE':>8} {'logloss':>8} {'AUC':>8} {'calib':>7}")
    for w, m in sorted(result.per_window.items()):
        label = ds.meta.window(w).label
        click.echo(f"{w:>8} {label:>10} {int(m['rows']):>9} {metric_text(m['ne']):>8} {fmt(m['logloss']):>8} "
                   f"{metric_text(m['auc']):>8} {metric_text(m['calibration'], 3):>7}")
    o = result.overall
    click.echo(f"{'overall':>8} {'':>10} {int(o.weight):>9} {metric_text(o.ne):>8} {fmt(o.logloss):>8} "
               f"{metric_text(o.auc):>8} {metric_text(o.calibration, 3):>7}")
    if bayes:
        click.echo(f"Bayes-optimal (the data's true probabilities): AUC {fmt(bayes['bayes_auc'])}, NE "
                   f"{fmt(bayes['bayes_ne'])}; this model's AUC gap to Bayes {fmt(bayes['auc_gap_to_bayes'])}")


def metric_text(x: float, digits: int = 4) -> str:
    """A metric for the table: n/a where it is undefined (NaN: NE and AUC of one label class,
    calibration without positives)."""
    return "n/a" if x != x else fmt(x, digits)


COMMANDS = [train, eval_cmd]
