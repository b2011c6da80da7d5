"""Calibration: activation ranges of every int8-eligible layer and row access counts per table.

Streamed over the calibration windows in two passes over the float model:
1. min/max of each layer's input and each table's row access counts;
2. a 2048-bin histogram of each layer's input over [min, max], from which the range is chosen:
   - `minmax`: the observed range (no clipping on calibration data);
   - `percentile`: the [0.01%, 99.99%] quantiles (`percentile` option);
   - `mse`: the clipping range minimising the expected uint8 quantization MSE of the histogram;
   - `entropy`: the range minimising KL(histogram || its quantization to the layers' 128 activation codes) (TensorRT-style).
The implied clipping rate on the calibration data is recorded per layer: the drift job compares
the rate it sees on new windows against it.

CALIB.json holds ranges and metadata; row counts (one number per embedding row, possibly millions)
go to a sidecar safetensors file next to it, named and hashed in the JSON. The pair commits as one:
the sidecar's name carries its content hash (`CALIB.counts-<sha16>.safetensors`) and is written
first, then CALIB.json is renamed over the old one, then older sidecars are removed; a kill at any
point leaves a CALIB.json whose sidecar exists and verifies. Both get normal (umask) permissions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lowprec.data.batches import batch_sizes, iter_batches
from lowprec.data.dataset import PAD_ID, Dataset
from lowprec.errors import InputError
from lowprec.fileio import atomic_write_text, read_json, sha256_file
from lowprec.jsonsafe import dumps
from lowprec.model.dlrm import DLRM, split_sparse
from lowprec.progress import Update

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

    def rows_read(self, ds: Dataset) -> int:
        """Rows the two passes read together in one process (what a progress bar counts to): max_rows
        stops a pass at the end of the batch that reaches it."""
        return 2 * sum(batch_sizes(ds, list(self.windows), self.batch_size, self.max_rows))

    def __post_init__(self) -> None:
        for problem in setting_problems(self.method, self.percentile).values():
            raise InputError(problem)


def setting_problems(method: Any, percentile: Any) -> dict[str, str]:
    """What is wrong with a calibration's method and percentile, by key ({} when nothing): the rule
    CalibConfig applies, for a config that holds them to check at load and run a calibration later."""
    out = {}
    if method not in METHODS:
        out["method"] = f"calibration method {method!r} is not one of {METHODS}"
    number = isinstance(percentile, (int, float)) and not isinstance(percentile, bool)
    if not (number and 50.0 < percentile <= 100.0):
        out["percentile"] = "percentile must be in (50, 100]"
    return out


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
    """The batches of the windows (up to max_rows): under torchrun, this rank's batch-aligned share."""
    from lowprec import distributed as dist

    n = len(batch_sizes(ds, list(cfg.windows), cfg.batch_size, cfg.max_rows))
    yield from iter_batches(ds, list(cfg.windows), cfg.batch_size, span=dist.span(n))


@torch.inference_mode()
def _pass_ranges(model: DLRM, ds: Dataset, cfg: CalibConfig, progress) -> tuple[dict, dict, int]:
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    counts = [np.zeros(t.num_embeddings, dtype=np.int32) for t in model.config.tables]
    lookups = [0] * len(counts)  # valid ids seen per table: a bound on any one row's count
    rows = 0
    for batch in _batches(ds, cfg):
        for name, x in _layer_inputs(model, batch.dense, batch.sparse).items():
            lo[name] = min(lo.get(name, np.inf), float(x.min()))
            hi[name] = max(hi.get(name, -np.inf), float(x.max()))
        for t, ids in enumerate(split_sparse(batch.sparse, model.hotness)):
            valid = ids[ids != PAD_ID].numpy()
            ids_seen, hits = np.unique(valid, return_counts=True)  # batch-sized, not table-sized
            lookups[t] += len(valid)
            counts[t] = _widen(counts[t], lookups[t])
            counts[t][ids_seen] += hits.astype(counts[t].dtype)
        rows += len(batch)
        if progress:
            progress(len(batch))
    return _merge_ranges(lo, hi, counts, lookups, rows, model)


def _widen(counts: np.ndarray, bound: int) -> np.ndarray:
    """Counts are int32 (4 bytes a row: 0.47 GB at 117M rows) until a count could pass 2^31 - 1."""
    return counts.astype(np.int64) if counts.dtype == np.int32 and bound > np.iinfo(np.int32).max else counts


def _merge_ranges(lo: dict, hi: dict, counts: list, lookups: list, rows: int,
                  model: DLRM) -> tuple[dict, dict, int]:
    """Over every rank (exact: extremes, integer counts); one process is the one-rank case. The
    counts are summed in place, one block of rows at a time (no table-sized copy)."""
    from lowprec import distributed as dist

    names = list(model.linear_layers())
    lo_all = dist.all_reduce_min([lo.get(n, np.inf) for n in names], "calibration min")
    hi_all = dist.all_reduce_max([hi.get(n, -np.inf) for n in names], "calibration max")
    totals = dist.all_reduce_sum([rows, *lookups], "row counts").astype(np.int64)
    if dist.active():  # float64 sums of integers < 2^53 are exact
        for t, c in enumerate(counts):
            counts[t] = c = _widen(c, int(totals[1 + t]))
            for a in range(0, len(c), _MERGE_ROWS):
                c[a:a + _MERGE_ROWS] = dist.all_reduce_sum(c[a:a + _MERGE_ROWS], "row counts")
    ranges = {n: (float(a), float(b)) for n, a, b in zip(names, lo_all, hi_all) if np.isfinite(a)}
    return ranges, dict(zip(model.config.table_names, counts)), int(totals[0])


_MERGE_ROWS = 1 << 22


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
    from lowprec import distributed as dist

    names = list(hists)
    merged = dist.all_reduce_sum(np.stack([hists[n] for n in names]) if names else np.zeros((0, BINS)), "histograms")
    return dict(zip(names, merged))


def calibrate(model: DLRM, ds: Dataset, cfg: CalibConfig,
              progress: Update | None = None) -> dict[str, Any]:
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


def _count_tensor(v: Any) -> torch.Tensor:
    """A table's counts for the sidecar: int32 when they fit (as calibrate makes them), else int64."""
    v = np.asarray(v)
    if v.dtype != np.int32 and not (v.size and (v.min() < 0 or v.max() > np.iinfo(np.int32).max)):
        v = v.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(v) if v.dtype == np.int32 else v.astype(np.int64))


def counts_path(path: Path, sha: str | None = None) -> Path:
    """The row-count sidecar of CALIB.json: `CALIB.counts-<sha16>.safetensors` (legacy: no hash)."""
    return path.with_name(path.stem + (f".counts-{sha[:16]}" if sha else ".counts") + ".safetensors")


def save_calibration(calib: dict[str, Any], path: str | Path, model_sha: str | None = None,
                     inputs: tuple = ()) -> None:
    """CALIB.json plus its content-named row-count sidecar, committed as one (see module doc)."""
    from lowprec.errors import user_os_errors
    from lowprec.fileio import _umask, claim_output, temporary_file

    path = claim_output(path, "calibration", inputs)
    replaced = _sidecar_of(path)  # the row-count file of the calibration being replaced, if any
    with user_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # (named for CALIB.counts.safetensors until its hash names it: a killed run's is swept by the next)
    with temporary_file(counts_path(path)) as tmp, user_os_errors(path):
        save_file({k: _count_tensor(v) for k, v in calib["row_counts"].items()}, str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600; read like any output
        sha = sha256_file(tmp)
        side = counts_path(path, sha)
        tmp.replace(side)
    obj = {k: v for k, v in calib.items() if k != "row_counts"}
    obj["model_sha256"] = model_sha
    obj["row_counts"] = {"file": side.name, "sha256": sha}
    atomic_write_text(path, dumps(obj, indent=2) + "\n", kind="calibration")
    if replaced is not None and replaced.name != side.name:
        replaced.unlink(missing_ok=True)


def _sidecar_of(path: Path) -> Path | None:
    """The row-count file the calibration at `path` names, or None: only that file is lowprec's to
    delete when `path` is replaced. Every other `<stem>.counts*.safetensors` beside it was deleted
    too, the user's own files included."""
    try:
        obj = read_json(path, "calibration file")
    except (InputError, OSError):
        return None
    return _sidecar_named(obj, path)


def _sidecar_named(obj: dict[str, Any], path: Path) -> Path | None:
    """The row-count file beside `path` that calibration `obj` names (the legacy
    `CALIB.counts.safetensors` when it names none); None when the name is not a plain file name."""
    info = obj.get("row_counts") or {}
    name = info.get("file", counts_path(path).name) if isinstance(info, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        return None
    return path.with_name(name)


def _check_layers(layers: Any, path: Path) -> None:
    """Every layer entry is an object with finite numbers min <= max."""
    import math

    if not isinstance(layers, dict):
        raise InputError(f"{path}: `layers` must be an object of per-layer objects")
    for name, v in layers.items():
        lo, hi = (v.get("min"), v.get("max")) if isinstance(v, dict) else (None, None)
        ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (lo, hi))
        if not ok or lo > hi:
            raise InputError(f"{path}: layer {name!r} needs finite numbers min <= max, got {v!r}")


def read_calibration_file(path: str | Path) -> dict[str, Any]:
    """CALIB.json alone (its format, version and layer ranges checked), without the row-count sidecar."""
    obj = read_json(path, "calibration file")
    if obj.get("format") != FORMAT or obj.get("version") != FORMAT_VERSION:
        raise InputError(f"{path}: not a lowprec calibration file of version {FORMAT_VERSION}")
    _check_layers(obj.get("layers"), Path(path))
    windows, rows = obj.get("windows", []), obj.get("rows", 0)
    whole = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0  # noqa: E731
    if not isinstance(windows, list) or not all(whole(w) for w in windows):
        raise InputError(f"{path}: `windows` must list the window numbers calibration read, got {windows!r}")
    if not whole(rows):
        raise InputError(f"{path}: `rows` must be a whole number >= 0, got {rows!r}")
    return obj


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read CALIB.json and its sidecar; row counts come back as float tensors per table."""
    path = Path(path)
    obj = read_calibration_file(path)
    side_info = obj.get("row_counts") or {}
    side = _sidecar_named(obj, path)
    if side is None:
        name = side_info.get("file") if isinstance(side_info, dict) else None
        raise InputError(f"{path}: row_counts.file must name a file beside it, got {name!r}")
    if not side.is_file():
        raise InputError(f"{path}: row-count file {side} is missing")
    if sha256_file(side) != side_info.get("sha256"):
        raise InputError(f"{side}: sha256 does not match {path.name}; the file was modified")
    try:
        obj["row_counts"] = {k: v.float() for k, v in load_file(str(side)).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{side}: not a readable safetensors file ({exc})") from exc
    for k, v in obj["row_counts"].items():
        if v.dim() != 1 or not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
            raise InputError(f"{side}: table {k!r}'s row counts must be one finite count >= 0 a row, got a "
                             f"{v.dtype} tensor of shape {tuple(v.shape)}")
    return obj


def check_calibration_fits(calibration: dict[str, Any], config: Any, where: str | Path) -> None:
    """Row counts of the model's own table sizes (a count a row): a short count vector reached the
    search's indexing as an IndexError (exit 4); convert refused it already, per table."""
    rows = {t.name: t.num_embeddings for t in config.tables}
    for k, v in (calibration.get("row_counts") or {}).items():
        if k in rows and len(v) != rows[k]:
            raise InputError(f"{where}: table {k!r} has {len(v):,} row counts, the model's table {rows[k]:,} rows: "
                             f"a calibration of another model (or an edited file)")
