"""`lowprec import`: bring a model trained elsewhere (TorchRec's DLRM) in as a lowprec float model."""

from __future__ import annotations

import click

from lowprec.cli import emit_json
from lowprec.cli._common import name_value_pairs


@click.command(name="import")
@click.option("--format", "source_format", required=True, type=click.Choice(["torchrec"]),
              help="Layout of the state dict: torchrec = torchrec.models.dlrm.DLRM (or DLRMTrain).")
@click.option("--state-dict", "state_dict", required=True, type=click.Path(dir_okay=False),
              help="The model's state dict as .safetensors (pickles are refused). Export it in TorchRec "
                   "with safetensors.torch.save_file({k: v.contiguous() for k, v in "
                   "model.state_dict().items()}, 'dlrm.safetensors'); gather a sharded model first.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Prepared dataset the model scores: its dataset.json fixes feature order and sizes.")
@click.option("--out", required=True, type=click.Path(), help="Float model directory to write (atomically).")
@click.option("--table-map", multiple=True, metavar="FEATURE=TABLE",
              help="Table serving a dataset feature (repeatable). Default: table t_FEATURE or FEATURE.")
@click.option("--feature-order", metavar="F1,F2,...",
              help="TorchRec's sparse feature order (model.sparse_arch.sparse_feature_names) in dataset "
                   "feature names, when it differs from dataset.json's. Default: safetensors metadata "
                   "`sparse_feature_names` if present, else dataset.json's order.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary as the last line.")
def import_cmd(source_format, state_dict, data_dir, out, table_map, feature_order, as_json):
    """Import a TorchRec DLRM state dict (safetensors) as a float model for the whole toolkit."""
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.checkpoint.torchrec_import import import_torchrec
    from lowprec.data.dataset import Dataset

    from lowprec.fileio import claim_output

    claim_output(out, "model", [state_dict, data_dir])
    ds = Dataset(data_dir)
    order = [x.strip() for x in feature_order.split(",") if x.strip()] if feature_order else None
    mapping = name_value_pairs(table_map, "--table-map")
    model, info = import_torchrec(state_dict, ds.meta, mapping, order)
    save_float_model(model, out, {"imported": info}, inputs=[state_dict, data_dir])
    cfg = model.config
    summary = {
        "out": str(out), "format": source_format, "tables": info["tables"],
        "feature_order_source": info["feature_order_source"], "embedding_dim": cfg.embedding_dim,
        "bottom_mlp": list(cfg.bottom_mlp), "top_mlp": list(cfg.top_mlp),
        "parameters": sum(p.numel() for p in model.parameters()), "sha256": info["sha256"],
    }
    if as_json:
        emit_json(summary)
        return
    click.echo(f"imported {len(cfg.tables)} tables (D={cfg.embedding_dim}), bottom MLP "
               f"{list(cfg.bottom_mlp)}, top MLP {list(cfg.top_mlp)} + 1 from {state_dict} "
               f"(feature order: {info['feature_order_source']}) -> {out}")
    for feature, table in info["tables"].items():
        if table != feature:
            click.echo(f"  {feature} <- {table}")


COMMANDS = [import_cmd]
