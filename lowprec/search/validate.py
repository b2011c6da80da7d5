"""End-to-end validation of a plan: convert it for real, score float and artifact on the eval windows.

The artifact is written to a temporary directory, loaded through the same loader users get, and
scored beside the float model on the same rows with the drift job's paired evaluation
(`lowprec.evaluation.paired`): the relative NE increase gets a paired Poisson-bootstrap interval, the
AUC drop DeLong's paired normal interval.
"""

from __future__ import annotations

import math
import tempfile
from statistics import NormalDist
from pathlib import Path
from typing import Any

from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.data.dataset import Dataset
from lowprec.model.dlrm import DLRM
from lowprec.plan import Plan, Validation
from lowprec.evaluation.paired import PairedConfig, evaluate_window
from lowprec.progress import Update

CONFIDENCE = 0.95  # PairedConfig's bootstrap interval uses the same level


def validate(model_dir: str | Path, float_model: DLRM, plan: Plan, ds: Dataset, windows: list[int],
             calibration: dict[str, Any] | None,
             progress: Update | None = None) -> Validation:
    with tempfile.TemporaryDirectory(prefix="lowprec-validate-") as tmp:
        out = Path(tmp) / "artifact"
        manifest = convert(model_dir, plan, out, calibration)
        runtime, _ = load_artifact(out)
        m = evaluate_window(float_model, runtime, ds, windows, PairedConfig(), Path(tmp) / "spill-",
                            progress=progress)
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    half = z * math.sqrt(max(m.delong.var, 0.0))
    drop = -m.delong.diff
    return Validation(
        ne_increase=m.ne_gap.estimate, ne_increase_ci=(m.ne_gap.lo, m.ne_gap.hi),
        auc_drop=drop, auc_drop_ci=(drop - half, drop + half),
        float_ne=m.reference["ne"], float_auc=m.reference["auc"],
        plan_ne=m.candidate["ne"], plan_auc=m.candidate["auc"],
        embedding_bytes=int(manifest["embedding_bytes"]), layer_bytes=int(manifest["layer_bytes"]),
        rows=m.rows, calibration_gap=m.cal_gap.estimate,
    )
