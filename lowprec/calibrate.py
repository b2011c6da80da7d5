"""Calibration: activation ranges of every int8-eligible layer and row access counts per table.

Streamed over the calibration windows in two passes over the float model:
1. min/max of each layer's input and each table's row access counts;
2. a 2048-bin histogram of each layer's input over [min, max], from which the range is chosen:
   - `minmax`: the observed range (no clipping on calibration data);
   - `percentile`: the [0.01%, 99.99%] quantiles (`percentile` option);
   - `mse`: the clipping range minimising the expected uint8 quantization MSE of the histogram;
   - `entropy`: the range minimising KL(histogram || its 255-level quantization) (TensorRT-style).
The implied clipping rate on the calibration data is recorded per layer: the drift job compares
the rate it sees on new windows against it.

CALIB.json holds ranges and metadata; row counts (one number per embedding row, possibly millions)
go to a sidecar safetensors file next to it, named and hashed in the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lowprec.data.batches import iter_batches
from lowprec.data.dataset import PAD_ID, Dataset
from lowprec.errors import InputError
from lowprec.fileio import atomic_write_text, read_json, sha256_file
from lowprec.model.dlrm import DLRM, split_sparse

FORMAT = "lowprec-calibration"
FORMAT_VERSION = 1
METHODS = ("minmax", "percentile", "mse", "entropy")
BINS = 2048


@dataclass(frozen=True)
class CalibConfig:
    windows: tuple[int, ...]
    method: str = "minmax"
    percentile: float = 99.99
    batch_size: int = 4096
    max_rows: int | None = None  # cap on rows per pass (None: every row of the windows)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"calibration method {self.method!r} is not one of {METHODS}")
        if not 50.0 < self.percentile <= 100.0:
            raise InputError("percentile must be in (50, 100]")


def _layer_inputs(model: DLRM, dense: torch.Tensor, sparse: torch.Tensor) -> dict[str, torch.Tensor]:
    """Input of every Linear layer, by layer name."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0]))
             for name, layer in model.linear_layers().items()]
    try:
        model(dense, sparse)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _batches(ds: Dataset, cfg: CalibConfig):
    seen = 0
    for batch in iter_batches(ds, list(cfg.windows), cfg.batch_size):
        if cfg.max_rows is not None and seen >= cfg.max_rows:
            return
        seen += len(batch)
        yield batch


@torch.inference_mode()
def _pass_ranges(model: DLRM, ds: Dataset, cfg: CalibConfig, progress) -> tuple[dict, dict, int]:
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    counts = [np.zeros(t.num_embeddings, dtype=np.int64) for t in model.config.tables]
    rows = 0
    for batch in _batches(ds, cfg):
        for name, x in _layer_inputs(model, batch.dense, batch.sparse).items():
            lo[name] = min(lo.get(name, np.inf), float(x.min()))
            hi[name] = max(hi.get(name, -np.inf), float(x.max()))
        for t, ids in enumerate(split_sparse(batch.sparse, model.hotness)):
            valid = ids[ids != PAD_ID].numpy()
            ids_seen, hits = np.unique(valid, return_counts=True)  # batch-sized, not table-sized
            counts[t][ids_seen] += hits
        rows += len(batch)
        if progress:
            progress(len(batch))
    return {n: (lo[n], hi[n]) for n in lo}, dict(zip(model.config.table_names, counts)), rows


@torch.inference_mode()
def _pass_histograms(model: DLRM, ds: Dataset, cfg: CalibConfig, ranges, progress) -> dict[str, np.ndarray]:
    hists = {n: np.zeros(BINS, dtype=np.float64) for n in ranges}
    for batch in _batches(ds, cfg):
        for name, x in _layer_inputs(model, batch.dense, batch.sparse).items():
            a, b = ranges[name]
            if b > a:
                hists[name] += torch.histc(x.float(), BINS, a, b).double().numpy()
        if progress:
            progress(len(batch))
    return hists


def calibrate(model: DLRM, ds: Dataset, cfg: CalibConfig,
              progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Run both passes; returns the calibration dict (row counts as numpy arrays)."""
    from lowprec.quant.ranges import choose_range, clip_rate

    model.eval()
    ranges, counts, rows = _pass_ranges(model, ds, cfg, progress)
    if rows == 0:
        raise InputError(f"calibration windows {list(cfg.windows)} hold no rows")
    hists = _pass_histograms(model, ds, cfg, ranges, progress)
    layers = {}
    for name, (a, b) in ranges.items():
        lo, hi = choose_range(hists[name], a, b, cfg.method, cfg.percentile)
        layers[name] = {"min": lo, "max": hi, "observed_min": a, "observed_max": b,
                        "clip_rate": clip_rate(hists[name], a, b, lo, hi)}
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "method": cfg.method,
        "percentile": cfg.percentile, "windows": list(cfg.windows), "rows": rows,
        "layers": layers, "row_counts": counts,
    }


def counts_path(path: Path) -> Path:
    return path.with_name(path.stem + ".counts.safetensors")


def save_calibration(calib: dict[str, Any], path: str | Path, model_sha: str | None = None) -> None:
    """CALIB.json plus the row-count sidecar; both written via temporary files and renames."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = counts_path(path)
    tmp = side.with_name("." + side.name + ".tmp")
    save_file({k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in calib["row_counts"].items()},
              str(tmp))
    tmp.replace(side)
    obj = {k: v for k, v in calib.items() if k != "row_counts"}
    obj["model_sha256"] = model_sha
    obj["row_counts"] = {"file": side.name, "sha256": sha256_file(side)}
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read CALIB.json and its sidecar; row counts come back as float tensors per table."""
    path = Path(path)
    obj = read_json(path, "calibration file")
    if obj.get("format") != FORMAT or obj.get("version") != FORMAT_VERSION:
        raise InputError(f"{path}: not a lowprec calibration file of version {FORMAT_VERSION}")
    side_info = obj.get("row_counts") or {}
    side = path.with_name(side_info.get("file", counts_path(path).name))
    if not side.is_file():
        raise InputError(f"{path}: row-count file {side} is missing")
    if sha256_file(side) != side_info.get("sha256"):
        raise InputError(f"{side}: sha256 does not match {path.name}; the file was modified")
    obj["row_counts"] = {k: v.float() for k, v in load_file(str(side)).items()}
    return obj
