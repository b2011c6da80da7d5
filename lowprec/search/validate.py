"""End-to-end validation of a plan: convert it for real, score float and artifact on the eval windows.

By default (`subset=True`) only the rows the eval windows look up are converted for the tables
whose rows encode independently (`lowprec.search.rows_subset`: a rows-subset float model, converted
and loaded through the same convert and loader users get, served with the logical ids), so a round
costs a pass over the eval windows' ids, not over the model; `subset=False` converts the whole plan.
The artifact is scored beside the float model on the same rows with the drift job's paired
evaluation (`lowprec.evaluation.paired`): the relative NE increase gets a paired Poisson-bootstrap
interval, the AUC drop DeLong's paired normal interval, both at `accept.CONFIDENCE` (whether a plan
fits its budget is `lowprec.search.accept`'s call).

Scratch space: `scratch` names a directory (the search puts it beside its output,
`<out>.validate-tmp`) that validation creates with a marker file and removes when done; one left by
a killed run (the marker says it is ours) is removed at the next start, anything else there is
refused, never deleted. Without `scratch`, a temporary directory under $TMPDIR.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from statistics import NormalDist
from pathlib import Path
from typing import Any, Iterator

from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.model.dlrm import DLRM
from lowprec.plan import Plan, Validation
from lowprec.evaluation.paired import PairedConfig, evaluate_window
from lowprec.progress import Update
from lowprec.search import rows_subset
from lowprec.search.accept import CONFIDENCE

MARKER = ".lowprec-validate-tmp"  # in a scratch directory validation made (and may delete)


@contextlib.contextmanager
def scratch_dir(scratch: Path | None) -> Iterator[Path]:
    """A directory for one validation, removed afterwards (see the module doc)."""
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="lowprec-validate-") as tmp:
            yield Path(tmp)
        return
    scratch = Path(scratch)
    if scratch.exists() or scratch.is_symlink():
        if not (scratch.is_dir() and not scratch.is_symlink() and (scratch / MARKER).is_file()):
            raise InputError(f"{scratch} exists and was not made by lowprec's validation (no {MARKER} "
                             f"in it); remove it or choose another --out")
        shutil.rmtree(scratch)  # left by a killed run of ours
    scratch.mkdir(parents=True)
    try:
        (scratch / MARKER).write_text("scratch space of lowprec search validation; safe to delete\n")
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def validate(model_dir: str | Path, float_model: DLRM, plan: Plan, ds: Dataset, windows: list[int],
             calibration: dict[str, Any] | None,
             progress: Update | None = None, scratch: Path | None = None,
             subset: bool = True, touched: rows_subset.TouchedRows | None = None) -> Validation:
    """Convert `plan`, score it beside the float model on `windows`; `touched` (for these windows)
    reuses the looked-up rows found by an earlier validation of the same search."""
    if touched is None:
        touched = rows_subset.TouchedRows(float_model, ds, windows)
    elif touched.windows != list(windows) or touched.model is not float_model:
        raise ValueError("validate: `touched` was made for other windows or another model")
    with scratch_dir(scratch) as tmp:
        out = tmp / "artifact"
        if subset:
            tables = rows_subset.subset_tables(float_model, plan)
            rows = touched(tables)
            sub = rows_subset.write_subset_model(float_model, rows, tmp / "model")
            manifest = convert(sub, plan, out, rows_subset.subset_calibration(calibration, float_model, rows),
                               allow_calibration_mismatch=True)  # the search checked it against the model
            runtime = rows_subset.RowsSubset(load_artifact(out)[0], float_model.config, rows)
            embedding_bytes = rows_subset.full_embedding_bytes(manifest, float_model, rows)
        else:
            manifest = convert(model_dir, plan, out, calibration)
            runtime, embedding_bytes = load_artifact(out)[0], int(manifest["embedding_bytes"])
        m = evaluate_window(float_model, runtime, ds, windows, PairedConfig(confidence=CONFIDENCE), tmp / "spill-",
                            progress=progress)
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    half = z * math.sqrt(max(m.delong.var, 0.0))
    drop = -m.delong.diff
    positives = int(round(m.reference["ctr"] * m.rows))  # (labels are 0/1, every row weight 1)
    return Validation(
        ne_increase=m.ne_gap.estimate, ne_increase_ci=(m.ne_gap.lo, m.ne_gap.hi),
        auc_drop=drop, auc_drop_ci=(drop - half, drop + half),
        float_ne=m.reference["ne"], float_auc=m.reference["auc"],
        plan_ne=m.candidate["ne"], plan_auc=m.candidate["auc"],
        embedding_bytes=embedding_bytes, layer_bytes=int(manifest["layer_bytes"]),
        rows=m.rows, calibration_gap=m.cal_gap.estimate,
        positives=positives, negatives=m.rows - positives,
    )
