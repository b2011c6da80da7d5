"""`lowprec drift` orchestration: windows -> paired evaluation -> decision -> SQLite -> report.

For every requested window not yet in the database (in window order): one streamed paired pass
(`paired.evaluate_window`), the sequential rule (`alarm.decide`, fed with the CUSUM state of the
previous recorded window), and one transaction (`store.record_window`). Then, with
`on_alarm="recalibrate"`, new artifacts beside the deployed one for the first alarmed window
(lowprec.drift.recalibration); then the report is regenerated from the database. Everything runs
under the database's lock.

Exit-code rule (`DriftOutcome.exit_code`): 1 when a window processed in this run is in alarm OR the
latest requested window is in alarm (so a new alarm is never missed, and a rerun with nothing new
still reports the current state); else 0. Bad input raises InputError (exit 2) before any window
is recorded; bad structure of the windows to score (`check_window_files`), before the run is
recorded and, for a new history, before its database is created.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lowprec
from lowprec.checkpoint.float_model import identity_note, weights_sha256
from lowprec import distributed as dist
from lowprec.checkpoint.load import load_model, model_kind
from lowprec.data.dataset import Dataset
from lowprec.data.latent import window_bayes_auc
from lowprec.data.windows import select_windows
from lowprec.drift import report
from lowprec.drift.follower import follow, lead, rank0_windows
from lowprec.drift.alarm import DriftConfig
from lowprec.drift.recalibration import check_recal_outputs, recalibrate
from lowprec.drift.tiers import hot_share, tier_layout
from lowprec.evaluation.paired import PairedConfig, TableError
from lowprec.drift.signals import expected_gap
from lowprec.drift.delayed import PendingLabels, estimate_summaries, labelfree_config, process_window, score_plan
from lowprec.drift.store import DriftStore
from lowprec.errors import InputError
from lowprec.progress import Stages
from lowprec.provenance import check_converted_from, check_same_float
from lowprec.drift.sources import check_sources
from lowprec.fileio import sha256_file
from lowprec.train import check_compatible

# (the CLI's StageBars closes each stage's bar when the next begins)
ON_ALARM = ("none", "recalibrate")


@dataclass(frozen=True)
class DriftJob:
    reference: Path
    candidate: Path
    data: Path
    windows: str
    db: Path
    report: Path
    config: DriftConfig = field(default_factory=DriftConfig)
    on_alarm: str = "none"
    calibration: Path | None = None
    batch_size: int = 4096
    allow_unrelated_candidate: bool = False  # else a candidate artifact must come from --reference

    def __post_init__(self) -> None:
        if self.on_alarm not in ON_ALARM:
            raise InputError(f"--on-alarm must be one of {ON_ALARM}, got {self.on_alarm!r}")
        if self.batch_size < 1:
            raise InputError("--batch-size must be >= 1")

    @property
    def paired(self) -> PairedConfig:
        b = self.config.bootstrap
        return PairedConfig(self.batch_size, b.replicates, b.confidence, b.seed)

    @property
    def spill_prefix(self) -> Path:
        """Scores spill to temporary siblings of `DB.spill-wN` (lowprec.evaluation.paired)."""
        return self.db.with_name(f"{self.db.name}.spill-")


@dataclass
class DriftOutcome:
    windows: list[dict[str, Any]]
    processed: list[int]
    exit_code: int
    recalibrations: list[dict[str, Any]]
    db: Path
    report: Path
    notes: list[str] = field(default_factory=list)
    estimates: list[dict[str, Any]] = field(default_factory=list)  # label-free records (lowprec.drift.delayed)

    @property
    def labelled_alarms(self) -> list[int]:
        return [w["window"] for w in self.windows if w["alarm"]]

    @property
    def estimate_alarms(self) -> list[int]:
        return [e["window"] for e in self.estimates if e["est_alarm"]]

    @property
    def alarms(self) -> list[int]:
        """Windows in alarm by either rule (an estimate alarm counts for the exit code too)."""
        return sorted(set(self.labelled_alarms) | set(self.estimate_alarms))

    @property
    def first_alarm(self) -> int | None:
        return self.alarms[0] if self.alarms else None

    def to_json(self) -> dict[str, Any]:
        return {"db": str(self.db), "report": str(self.report), "exit_code": self.exit_code,
                "processed": self.processed, "first_alarm": self.first_alarm, "alarms": self.alarms,
                "labelled_alarms": self.labelled_alarms,
                "windows": self.windows, "recalibrations": self.recalibrations, "notes": self.notes,
                "estimate_alarms": self.estimate_alarms,
                "labels_pending": [e["window"] for e in self.estimates if e["labels"] == "pending"],
                "estimates": self.estimates}


def read_calibration(path: Path | None) -> dict[str, Any] | None:
    """CALIB.json's layers and method (the row-count sidecar is not needed here)."""
    if path is None:
        return None
    from lowprec.calibrate import read_calibration_file, setting_problems

    obj = read_calibration_file(path)  # before any window is scored, as convert checks it
    method, percentile = obj.get("method", "minmax"), obj.get("percentile", 99.99)
    for key, problem in setting_problems(method, percentile).items():  # a recalibration repeats them
        raise InputError(f"{path}: {problem}" + (f", got {percentile!r}" if key == "percentile" else ""))
    return obj


@dataclass
class _Models:
    reference: Any
    candidate: Any
    manifest: dict[str, Any] | None
    reference_sha: str
    candidate_sha: str
    reference_info: dict[str, Any] | None = None  # its training record (which windows it learned from)


def load_pair(job: DriftJob, ds: Dataset) -> _Models:
    if model_kind(job.reference) != "float":
        raise InputError(f"--reference {job.reference}: must be a float model directory (config.json)")
    reference, ref_cfg, ref_info = load_model(job.reference)
    candidate, cand_cfg, manifest = load_model(job.candidate)
    check_compatible(ref_cfg, ds.meta, str(job.reference))
    check_compatible(cand_cfg, ds.meta, str(job.candidate))
    is_artifact = model_kind(job.candidate) == "artifact"
    ref_sha = weights_sha256(job.reference)
    cand_sha = sha256_file(job.candidate / "manifest.json") if is_artifact else weights_sha256(job.candidate)
    if is_artifact and not job.allow_unrelated_candidate:
        check_converted_from(job.reference, ref_sha, job.candidate, manifest, "--allow-unrelated-candidate")
    elif not job.allow_unrelated_candidate:
        check_same_float(job.reference, ref_sha, job.candidate, cand_sha, "--allow-unrelated-candidate")
    return _Models(reference, candidate, manifest if is_artifact else None, ref_sha, cand_sha, ref_info)


def check_window_files(ds: Dataset, windows: list[int]) -> None:
    """The files of the windows to score are there, readable .npy of the shapes and dtypes
    dataset.json gives (their headers only; a missing labels file is a pending window): InputError
    naming the file otherwise, before anything is written. Ids out of range are found while scoring."""
    pending = PendingLabels(ds)
    for w in windows:
        pending.arrays(w)


def _check_labels(store: DriftStore, ds: Dataset, chosen: list[int]) -> None:
    """A recorded window must still be the same period of the dataset."""
    for row in store.windows():
        w = row["window"]
        if w in chosen and ds.meta.window(w).label != (row["label"] or ""):
            raise InputError(f"--db {store.path}: window {w} was recorded as {row['label']!r} but the "
                             f"dataset's window {w} is {ds.meta.window(w).label!r}; use a new --db")


def run(job: DriftJob, stages: Stages | None = None) -> DriftOutcome:
    """Process the windows not yet recorded, recalibrate on alarm if asked, regenerate the report.

    Data-parallel (torchrun): rank 0 holds the database and decides the windows to process; every
    rank scores its share of each; rank 0 alone records, recalibrates and writes the report."""
    if not dist.is_main():  # score this rank's share of rank 0's windows; write nothing
        todo = rank0_windows() or []  # (asked before opening any input: bad input is rank 0's to report)
        if todo:
            ds = Dataset(job.data)
            models = load_pair(job, ds)
            follow(job.paired, labelfree_config(job), job.spill_prefix, ds, models, todo, stages)
        return DriftOutcome([], todo, 0, [], job.db, job.report)
    return lead(lambda announce: _run(job, stages, announce))


def _run(job: DriftJob, stages: Stages | None, announce: Any) -> DriftOutcome:
    stages = stages or (lambda name, total, unit: None)
    ds = Dataset(job.data)
    chosen = select_windows(job.windows, ds.meta)
    calib = read_calibration(job.calibration)
    report.check_report_dir(job.report)
    models = load_pair(job, ds)
    if calib is not None and calib.get("model_sha256") not in (None, models.reference_sha):
        raise InputError(f"--calibration {job.calibration} was measured on another float model "
                         f"(its model_sha256 is not the sha256 of --reference {job.reference})"
                         f"{identity_note(job.reference, calib.get('model_sha256'))}")
    if job.on_alarm == "recalibrate" and models.manifest is None:
        raise InputError("--on-alarm recalibrate needs --candidate to be a quantized artifact")
    if job.on_alarm == "recalibrate":
        check_recal_outputs(job, chosen)
    if not job.db.is_file() or job.db.stat().st_size == 0:  # a new history: every chosen window is to score
        check_window_files(ds, chosen)  # refused before the history is created (no db holding a failed run)
    with DriftStore(job.db) as store:
        store.check_pair(str(job.reference), models.reference_sha, str(job.candidate), models.candidate_sha)
        with store.transaction():
            store.set_meta("expected_gap", repr(expected_gap(models.manifest)))
            store.set_meta("tier_layout", json.dumps(tier_layout(models.candidate)))
        _check_labels(store, ds, chosen)
        notes = check_sources(job, store, ds, models, chosen)
        todo, filled = score_plan(store, ds, chosen)
        check_window_files(ds, todo)  # before the run is recorded: a refusal here records no failed run
        for leftover in job.db.parent.glob(f".{glob.escape(job.spill_prefix.name)}*"):
            leftover.unlink(missing_ok=True)  # from a killed run (either name); we hold the lock
        run_id = store.start_run(_run_info(job, models, chosen))
        try:
            announce(todo)
            table_err = TableError.from_models(models.reference, models.candidate) if todo else None
            for w in todo:
                process_window(job, store, ds, models, w, run_id, calib, table_err, stages)
            recal = []
            if job.on_alarm == "recalibrate":
                with dist.local():  # rank 0 alone; the other ranks are done
                    recal = recalibrate(job, store, ds, models, chosen, calib, run_id, stages)
            outcome = _outcome(job, store, chosen, todo, recal)
            outcome.notes = notes + ([f"labels arrived for windows {filled}: labelled metrics filled in"]
                                     if filled else [])
            store.finish_run(run_id, "done")
            data = report.gather(store, job.config)
            data.bayes_auc = window_bayes_auc(ds.meta)  # {} unless the data has true probabilities
            data.notes = outcome.notes
            report.write_report(job.report, data)
        except (KeyboardInterrupt, dist.RankFailure):  # Ctrl-C, or a peer rank lost (killed, hung): a stop,
            store.finish_run(run_id, "interrupted")  # not bad input or a bug (as when rank 0 itself is killed)
            raise
        except BaseException:  # bad input found while scoring, a bug
            store.finish_run(run_id, "failed")
            raise
    return outcome


def _run_info(job: DriftJob, m: _Models, chosen: list[int]) -> dict[str, Any]:
    return {"reference": str(job.reference), "reference_sha256": m.reference_sha,
            "candidate": str(job.candidate), "candidate_sha256": m.candidate_sha, "data": str(job.data),
            "windows": json.dumps(chosen), "calibration": str(job.calibration) if job.calibration else None,
            "config": json.dumps({**job.config.to_json(), "on_alarm": job.on_alarm,
                                  "batch_size": job.batch_size}),
            "lowprec_version": lowprec.__version__}


def window_summary(row: dict[str, Any], processed: bool) -> dict[str, Any]:
    keys = ("label", "rows", "ref_ne", "cand_ne", "ne_gap", "ne_gap_lo", "ne_gap_hi", "ne_gap_se",
            "ref_auc", "cand_auc", "auc_diff", "auc_p_drop", "ref_calibration", "cand_calibration",
            "cal_gap", "cal_gap_lo", "cal_gap_hi", "psi", "cusum_up", "cusum_down", "stale_ne", "stale_calibration", "triggers",
            "reason", "warnings", "staleness")
    return {"window": row["window"], "alarm": bool(row["alarm"]), "processed": processed,
            **{k: row[k] for k in keys}}


def recal_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A recalibration's record as --json gives it: its windows a list, its flags booleans (as the
    windows' `alarm`), not the database's JSON text and 0/1."""
    out = dict(row)  # (a skipped one holds its reason only)
    if isinstance(out.get("calib_windows"), str):
        out["calib_windows"] = json.loads(out["calib_windows"])
    for k in ("alarm", "closes"):
        if out.get(k) is not None:
            out[k] = bool(out[k])
    return out


def _outcome(job: DriftJob, store: DriftStore, chosen: list[int], todo: list[int],
             recal: list[dict[str, Any]]) -> DriftOutcome:
    rows = [r for r in store.windows() if r["window"] in set(chosen)]
    summaries = [window_summary(r, r["window"] in todo) for r in rows]
    estimates = estimate_summaries(store, chosen, todo)
    tiers = store.tier_shares()
    for s in summaries + estimates if tiers else ():  # tiered tables: the hot tiers' share of lookups
        s["hot_tier_share"] = hot_share([t for t in tiers if t["window"] == s["window"]])
    new_alarm = any(s["alarm"] for s in summaries if s["processed"])
    latest_alarm = bool(summaries) and summaries[-1]["alarm"]
    new_alarm = new_alarm or any(e["est_alarm"] for e in estimates if e["processed"])
    latest_alarm = latest_alarm or (bool(estimates) and estimates[-1]["est_alarm"])
    recal = [recal_summary(r) for r in recal]
    return DriftOutcome(summaries, todo, 1 if (new_alarm or latest_alarm) else 0, recal, job.db, job.report,
                        estimates=estimates)
