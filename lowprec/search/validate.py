"""End-to-end validation of a plan: convert it for real, score float and artifact on the eval windows.

By default (`subset=True`) only the rows the eval windows look up are converted for the tables
whose rows encode independently (`lowprec.search.rows_subset`: a rows-subset float model, converted
and loaded through the same convert and loader users get, served with the logical ids), so a round
costs a pass over the eval windows' ids, not over the model; `subset=False` converts the whole plan.
The artifact is scored beside the float model on the same rows with the drift job's paired
evaluation (`lowprec.evaluation.paired`): the relative NE increase gets a paired Poisson-bootstrap
interval, the AUC drop DeLong's paired normal interval, both at `accept.CONFIDENCE` (whether a plan
fits its budget is `lowprec.search.accept`'s call).

Scratch space: `scratch` names it (the search's is `<out>.validate`, beside its output); validation
creates a temporary sibling of that name, `.<out>.validate.tmp-HOST-PID-*` (lowprec.tmpnames), with a
marker file and removes it when done; one a killed process left is removed at the next start (or by
the `--nproc` launcher after a failed job). Nothing else is ever deleted. Without `scratch`, a
temporary directory under $TMPDIR.
"""

from __future__ import annotations

import contextlib
import glob
import math
import shutil
import tempfile
from statistics import NormalDist
from pathlib import Path
from typing import Any, Iterator

from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.data.dataset import Dataset
from lowprec.model.dlrm import DLRM
from lowprec.plan import Plan, Validation
from lowprec.evaluation.paired import PairedConfig, evaluate_window
from lowprec.progress import Update
from lowprec.search import rows_subset
from lowprec.search.accept import CONFIDENCE
from lowprec.tmpnames import dead_writers, remove, tmp_prefix

MARKER = ".lowprec-validate-tmp"  # in a scratch directory validation made (and may delete)


@contextlib.contextmanager
def scratch_dir(scratch: Path | None) -> Iterator[Path]:
    """A directory for one validation, removed afterwards (see the module doc): a temporary sibling
    of the name `scratch` (lowprec.tmpnames, `.NAME.tmp-HOST-PID-*`), so each process of a job has
    its own, and one a killed process left is removed by the next search beside it (and by the
    `--nproc` launcher after a failed job), whatever the number of processes either had."""
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="lowprec-validate-") as tmp:
            yield Path(tmp)
        return
    scratch = Path(scratch)
    for dead in dead_writers(scratch):
        remove(dead)
    for old in scratch.parent.glob(glob.escape(scratch.name) + "-tmp*"):  # (named by lowprec < 0.2.0)
        if old.is_dir() and not old.is_symlink() and (old / MARKER).is_file():
            shutil.rmtree(old, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(prefix=tmp_prefix(scratch.name), dir=scratch.parent))
    try:
        (made / MARKER).write_text("scratch space of lowprec search validation; safe to delete\n")
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


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
