"""`lowprec import`: bring a model trained or served elsewhere into lowprec.

  torchrec         torchrec.models.dlrm.DLRM state dict           -> float model
  torchrec-quant   TorchRec quantized EBC state dict + dense arch -> quantized artifact (as served)
  dlrm-reference   facebookresearch/dlrm DLRM_Net state dict      -> float model
                   (written as safetensors by tools/dlrm_reference_to_safetensors.py, run by the user)
"""

from __future__ import annotations

import click

from lowprec.cli import emit_json
from lowprec.cli._common import name_value_pairs, smaller

FORMATS = ["torchrec", "torchrec-quant", "dlrm-reference"]


@click.command(name="import")
@click.option("--format", "source_format", required=True, type=click.Choice(FORMATS),
              help="torchrec = torchrec.models.dlrm.DLRM (or DLRMTrain); torchrec-quant = TorchRec's "
                   "quantized EmbeddingBagCollection + DLRM dense/over arch (docs/torchrec.md); "
                   "dlrm-reference = facebookresearch/dlrm's DLRM_Net.")
@click.option("--state-dict", "state_dict", required=True, type=click.Path(dir_okay=False),
              help="The model's state dict as .safetensors (pickles are refused). Export it in TorchRec "
                   "with safetensors.torch.save_file({k: v.contiguous() for k, v in "
                   "model.state_dict().items()}, 'dlrm.safetensors'); gather a sharded model first. "
                   "torchrec-quant: the quantized EBC's state dict (int4/int2 as their .elem bytes).")
@click.option("--dense", "dense_path", type=click.Path(dir_okay=False),
              help="torchrec-quant: the dense/over arch tensors (DLRM names) when not in --state-dict.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="torchrec-quant: table configs JSON (name, feature_names, num_embeddings, embedding_dim, "
                   "data_type), e.g. --export torchrec's config.json. dlrm-reference: the config the "
                   "conversion script wrote. Not for torchrec (refused).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Prepared dataset the model scores: its dataset.json fixes feature order and sizes.")
@click.option("--out", required=True, type=click.Path(),
              help="Float model directory (torchrec, dlrm-reference) or artifact (torchrec-quant) to "
                   "write (atomically).")
@click.option("--table-map", multiple=True, metavar="FEATURE=TABLE",
              help="torchrec: table serving a dataset feature (repeatable). Default: t_FEATURE or FEATURE.")
@click.option("--feature-order", metavar="F1,F2,...",
              help="torchrec: TorchRec's sparse feature order (model.sparse_arch.sparse_feature_names) "
                   "in dataset feature names, when it differs from dataset.json's. Default: safetensors "
                   "metadata `sparse_feature_names` if present, else dataset.json's order.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary as the last line.")
def import_cmd(source_format, state_dict, dense_path, config_path, data_dir, out, table_map, feature_order,
               as_json):
    """Import a TorchRec or reference-DLRM model (safetensors) for the whole toolkit."""
    from lowprec.data.dataset import Dataset
    from lowprec.errors import InputError
    from lowprec.fileio import claim_output

    if source_format != "torchrec" and (table_map or feature_order):
        raise InputError("--table-map and --feature-order apply to --format torchrec only")
    if source_format != "torchrec-quant" and dense_path:
        raise InputError("--dense applies to --format torchrec-quant only")
    if source_format == "torchrec" and config_path:
        raise InputError(f"--config applies to --format torchrec-quant and dlrm-reference only, so {config_path} "
                         f"would be ignored: --format torchrec reads the model from --state-dict (feature order: "
                         f"--feature-order; tables: --table-map). Drop --config")
    inputs = [p for p in (state_dict, dense_path, config_path, data_dir) if p]
    claim_output(out, "artifact" if source_format == "torchrec-quant" else "model", inputs)
    ds = Dataset(data_dir)
    if source_format == "torchrec-quant":
        return _quantized(state_dict, dense_path, config_path, ds, out, as_json)
    if source_format == "dlrm-reference":
        from lowprec.checkpoint.dlrm_reference import import_dlrm_reference

        if not config_path:
            raise InputError("--format dlrm-reference needs --config (written beside the safetensors by "
                             "tools/dlrm_reference_to_safetensors.py)")
        from lowprec.checkpoint.float_model import save_float_model

        model, info = import_dlrm_reference(state_dict, config_path, ds.meta)
        save_float_model(model, out, {"imported": info}, inputs=[state_dict])
        cfg = model.config
    else:  # streamed into --out: the state dict is mapped, tables written in row chunks (any size)
        from lowprec.checkpoint.torchrec_import import write_torchrec

        order = [x.strip() for x in feature_order.split(",") if x.strip()] if feature_order else None
        cfg, info = write_torchrec(state_dict, ds.meta, out, name_value_pairs(table_map, "--table-map"), order)
    _float_summary(cfg, info, source_format, state_dict, out, as_json)


def _float_summary(cfg, info, source_format, state_dict, out, as_json):
    import math

    import torch

    from lowprec.model.dlrm import DLRM

    with torch.device("meta"):
        parameters = sum(math.prod(p.shape) for p in DLRM(cfg).parameters())
    summary = {
        "out": str(out), "format": source_format, "tables": info["tables"],
        "feature_order_source": info["feature_order_source"], "embedding_dim": cfg.embedding_dim,
        "bottom_mlp": list(cfg.bottom_mlp), "top_mlp": list(cfg.top_mlp),
        "parameters": parameters, "sha256": info["sha256"],
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


def _quantized(state_dict, dense_path, config_path, ds, out, as_json):
    from lowprec.checkpoint.torchrec_quant_import import import_torchrec_quant
    from lowprec.errors import InputError

    if not config_path:
        raise InputError("--format torchrec-quant needs --config TABLES.json (rows alone do not say "
                         "their data type); --export torchrec writes one as torchrec/config.json")
    manifest = import_torchrec_quant(state_dict, dense_path, config_path, ds.meta, out)
    summary = {"out": str(out), "format": "torchrec-quant",
               "tables": {t["name"]: {"torchrec_table": t["torchrec_table"], "precision": t["precision"]}
                          for t in manifest["tables"]},
               "layers": {n: v["precision"] for n, v in manifest["layers"].items()},
               "embedding_bytes": manifest["embedding_bytes"], "compression": manifest["compression"]}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"imported {len(manifest['tables'])} quantized tables and {len(manifest['layers'])} layers "
               f"from {state_dict} -> artifact {out} ({smaller(manifest['compression'])})")


COMMANDS = [import_cmd]
