"""Load whatever a user points `--model` at: a float model directory or a quantized artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lowprec.errors import InputError
from lowprec.filekind import check_regular
from lowprec.model.config import DLRMConfig


def model_kind(path: str | Path) -> str:
    from lowprec.fileio import resolve_output

    path = resolve_output(path)
    if check_regular(path / "manifest.json"):  # (InputError if it is a FIFO, a directory...)
        return "artifact"
    if check_regular(path / "config.json"):
        return "float"
    if not path.exists():
        raise InputError(f"model not found: {path}")
    raise InputError(f"{path} is neither a float model (config.json) nor a quantized artifact "
                     f"(manifest.json)")


def load_model(path: str | Path) -> tuple[torch.nn.Module, DLRMConfig, dict[str, Any]]:
    """(scorer module returning logits, its DLRMConfig, provenance) for a float model or artifact."""
    if model_kind(path) == "artifact":
        from lowprec.checkpoint.artifact import load_artifact

        runtime, manifest = load_artifact(path)
        return runtime, runtime.config, manifest
    from lowprec.checkpoint.float_model import load_float_model

    model, info = load_float_model(path)
    return model, model.config, info
