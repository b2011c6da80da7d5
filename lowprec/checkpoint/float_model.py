"""The float model checkpoint: MODEL_DIR/model.safetensors + MODEL_DIR/config.json.

config.json holds the format version, the DLRMConfig, versions, training provenance and the
sha256 of model.safetensors. Loading checks the hash, the exact set of tensor names and shapes, and
that every weight is finite, and never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import lowprec
from lowprec.errors import InputError
from lowprec.fileio import atomic_dir, read_json, sha256_file, write_json
from lowprec.model.config import DLRMConfig
from lowprec.model.dlrm import DLRM

FORMAT = "lowprec-float-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


def save_float_model(model: DLRM, out: str | Path, info: dict[str, Any] | None = None,
                     inputs: tuple | list = ()) -> Path:
    """Write the model atomically; `info` (training provenance, metrics) goes into config.json."""
    with atomic_dir(out, "model", inputs) as tmp:
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        write_json(tmp / "config.json", {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "lowprec_version": lowprec.__version__,
            "torch_version": lowprec.TORCH_VERSION,
            "model": model.config.to_json(),
            "info": info or {},
            "sha256": {WEIGHTS: sha256_file(tmp / WEIGHTS)},
        })
    return Path(out)


def read_float_config(model_dir: str | Path) -> tuple[DLRMConfig, dict[str, Any]]:
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    obj = read_json(cfg_path, "model config.json")
    if obj.get("format") != FORMAT:
        raise InputError(f"{cfg_path}: not a lowprec float model (format {obj.get('format')!r})")
    if obj.get("version") != FORMAT_VERSION:
        raise InputError(f"{cfg_path}: float model format version {obj.get('version')} is not "
                         f"supported (expected {FORMAT_VERSION})")
    for key in ("model", "sha256", "info"):
        if not isinstance(obj.get(key, {}), dict):
            raise InputError(f"{cfg_path}: `{key}` must be a JSON object")
    return DLRMConfig.from_json(obj.get("model", {}), str(cfg_path)), obj


def load_state(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking its sha256; errors name the file."""
    if not path.is_file():
        raise InputError(f"missing weights file {path}")
    if expected_sha is not None and sha256_file(path) != expected_sha:
        raise InputError(f"{path}: sha256 does not match the one recorded beside it; the file "
                         f"was modified or truncated after it was written")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc


def check_finite(state: dict[str, torch.Tensor], where: Path) -> None:
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = torch.nonzero(~torch.isfinite(t))[0].tolist()
            raise InputError(f"{where}: tensor {name!r} holds NaN/Inf (first at index {bad})")


def _expected_state(config: DLRMConfig, where: Path) -> dict[str, torch.Tensor]:
    """Names and shapes config.json implies, built on the meta device (nothing allocated)."""
    try:
        with torch.device("meta"):
            return DLRM(config).state_dict()
    except (RuntimeError, NotImplementedError, ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise InputError(f"{where}: describes a model that cannot be built ({exc})") from exc


def load_float_model(model_dir: str | Path) -> tuple[DLRM, dict[str, Any]]:
    """Rebuild the DLRM from its directory; raises InputError on anything inconsistent."""
    model_dir = Path(model_dir)
    config, obj = read_float_config(model_dir)
    state = load_state(model_dir / WEIGHTS, obj.get("sha256", {}).get(WEIGHTS))
    check_finite(state, model_dir / WEIGHTS)
    expected = _expected_state(config, model_dir / "config.json")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise InputError(f"{model_dir / WEIGHTS}: tensors do not match config.json "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise InputError(f"{model_dir / WEIGHTS}: tensor {name!r} has shape {tuple(t.shape)}, "
                             f"config.json implies {tuple(expected[name].shape)}")
    model = DLRM(config)
    model.load_state_dict(state)
    model.eval()
    return model, obj.get("info", {})
