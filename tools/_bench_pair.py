"""The float model + calibration + int8 artifact that the drift and distributed benchmarks score."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def int8_pair(ds: Any, tmp: Path, seed: int) -> dict[str, Any]:
    """An untrained float DLRM for `ds` at tmp/model, its calibration on window 0 at tmp/calib.json,
    and its int8 (tables and layers) artifact at tmp/artifact: the pair the drift and distributed
    benchmarks score. Returns the calibration."""
    import torch

    from lowprec.calibrate import CalibConfig, calibrate, save_calibration
    from lowprec.checkpoint.convert import convert
    from lowprec.checkpoint.float_model import save_float_model, weights_sha256
    from lowprec.model.dlrm import DLRM
    from lowprec.plan import Plan
    from lowprec.precision import Precision
    from lowprec.train import TrainConfig, model_config_for

    torch.manual_seed(seed)
    model = DLRM(model_config_for(ds.meta, TrainConfig(windows=(0,))))
    model.eval()
    save_float_model(model, tmp / "model")
    calib = calibrate(model, ds, CalibConfig((0,)))
    save_calibration(calib, tmp / "calib.json", weights_sha256(tmp / "model"))
    convert(tmp / "model", Plan.uniform(Precision.INT8, Precision.INT8), tmp / "artifact", calib)
    return calib
