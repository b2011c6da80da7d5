"""The Criteo-scale study as a sequence of `lowprec` CLI stages (see tools/criteo_scale/__main__.py).

Windows of one `lowprec data synth --kind latent --drift popularity` dataset:
  train        the headline float models (and dense-only, for the gap-closure number)
  small_train  the trained-sharing variants and their own float reference (fewer rows: compute budget)
  val          training's validation window (epoch choice) and the search's sensitivity window
  search_eval  the search's validation window; also where heuristics are chosen
  test         the final test window: no training, search or choice ever looks at it
  drift        test windows, then windows after the popularity shift (`lowprec drift`)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowprec.data.windows import parse_windows
from tools.criteo_scale.plans import Rule
from tools.criteo_scale.runner import Runner

UNIFORM = (("fp16", "minmax"), ("int8", "minmax"), ("int8", "l2"), ("int4", "minmax"), ("int4", "l2"),
           ("int2", "minmax"), ("int2", "l2"))
TRAINED_SHARING = tuple(f"{k}{r}" for k in ("hash", "qr", "robe") for r in (10, 100, 1000))
BUDGETS = {"tight": ("0.1%", 0.001, 0.001), "loose": ("1%", 0.01, 0.01)}  # flag, NE rel, AUC drop


@dataclass(frozen=True)
class StudyConfig:
    work: Path
    scale: float
    rows_per_window: int
    windows: int = 14
    drift_start: int = 12
    train: str = "0-7"
    small_train: str = "0"
    val: str = "8"
    search_eval: str = "9"
    test: str = "10"
    drift: str = "11-13"
    seeds: tuple[int, ...] = (0, 1, 2)
    train_args: tuple[str, ...] = ()
    # Post-training hot-sharing ratios the searches offer. The first full-scale run (2026-11-30) had none: an
    # option on a 10M-row table then took ~6 min to measure; the search now measures it on the looked-up
    # rows only (lowprec/search/subset.py, reports/hot_search.md).
    sharing_ratios: str = "4,16,64"
    lane: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 4 or self.rows_per_window < 1 or self.drift_start >= self.windows:
            raise ValueError(f"bad study config {self}")

    @property
    def data(self) -> Path:
        return self.work / "data"


def table_bytes(model: Path) -> int:
    """Bytes of the embedding tensors of a float model, from its safetensors header (nothing loaded)."""
    raw = (model / "model.safetensors").open("rb")
    with raw:
        n = struct.unpack("<Q", raw.read(8))[0]
        header = json.loads(raw.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k.startswith("embeddings."))


def window_metrics(rec: dict | None) -> dict[str, Any]:
    """{role: metrics} of an eval stage record (each role is one window; `drift` may be several)."""
    if not rec or not rec.get("ok") or not rec.get("result"):
        return {}
    by_w = {str(m["window"]): m for m in rec["result"]["windows"]}
    return {role: by_w.get(spec, rec["result"]) for role, spec in rec.get("windows_of", {}).items()}


def meets(var: dict, ref: dict, budget: str) -> bool:
    _, ne_rel, auc_drop = BUDGETS[budget]
    return (var["ne"] - ref["ne"]) / ref["ne"] <= ne_rel and ref["auc"] - var["auc"] <= auc_drop


class Study:
    def __init__(self, runner: Runner, cfg: StudyConfig):
        self.r, self.c = runner, cfg

    # --- building blocks -------------------------------------------------------------------------------
    def evals(self, name: str, model: Path, which: tuple[str, ...] = ("test",)) -> dict[str, Any]:
        """One `lowprec eval` over the windows WHICH name (one window each); {which: that window's metrics}."""
        spec = ",".join(getattr(self.c, w) for w in which)
        self.r.run(f"{name}/eval", ["eval", "--model", str(model), "--data", str(self.c.data), "--windows", spec,
                                    "--json"], extra={"windows_of": {w: getattr(self.c, w) for w in which}})
        return window_metrics(self.r.record(f"{name}/eval"))

    def artifact(self, name: str, model: Path, convert_args: list[str], which=("test",)) -> dict[str, Any]:
        """Convert, evaluate on WHICH windows, delete the artifact (its record keeps bytes and metrics)."""
        if self.r.done(f"{name}/eval") and self.r.done(f"{name}/convert"):
            return window_metrics(self.r.record(f"{name}/eval"))
        art = self.c.work / "art" / name.replace("/", "_")
        if not art.exists():
            self.r.state["stages"].pop(f"{name}/convert", None)
        self.r.run(f"{name}/convert", ["convert", "--model", str(model), *convert_args, "--out", str(art),
                                      "--json"], output=None)
        res = self.evals(name, art, which) if art.exists() else {}
        shutil.rmtree(art, ignore_errors=True)
        return res

    def train(self, name: str, windows: str, seed: int, extra: list[str] = ()) -> Path:
        out = self.c.work / "models" / name
        self.r.run(f"{name}/train", ["train", "--data", str(self.c.data), "--windows", windows, "--val-windows",
                                    self.c.val, "--out", str(out), "--seed", str(seed), *self.c.train_args,
                                    *extra, "--json"], output=out)
        return out

    def tables(self) -> dict[str, int]:
        from lowprec.data.dataset import Dataset

        meta = Dataset(self.c.data).meta
        return dict(zip(meta.sparse_names, meta.num_embeddings))

    # --- stages ------------------------------------------------------------------------------------------
    def synth(self) -> None:
        c = self.c
        self.r.run("data/synth", ["data", "synth", "--kind", "latent", "--out", str(c.data), "--scale", str(c.scale),
                                  "--windows", str(c.windows), "--rows-per-window", str(c.rows_per_window),
                                  "--drift", "popularity", "--drift-start", str(c.drift_start), "--seed", "0",
                                  "--json"], output=c.data / "dataset.json")
        if (c.data / "dataset.json").exists() and "window_stats" not in self.r.state.get("derived", {}):
            from lowprec.data.dataset import Dataset

            meta = Dataset(c.data).meta
            self.r.note("window_stats", meta.provenance.get("window_stats"))
            self.r.note("tables", self.tables())

    def float_model(self, seed: int) -> Path:
        m = self.train(f"float/s{seed}", self.c.train, seed)
        if m.exists():
            self.r.note(f"table_bytes/float/s{seed}", table_bytes(m))
        self.evals(f"float/s{seed}", m, ("search_eval", "test"))
        calib = self.c.work / "calib" / f"s{seed}.json"
        calib.parent.mkdir(parents=True, exist_ok=True)
        self.r.run(f"float/s{seed}/calibrate", ["calibrate", "--model", str(m), "--data", str(self.c.data),
                                                "--windows", self.c.val, "--out", str(calib), "--json"], output=calib)
        return m

    def defaults_model(self) -> None:
        """The float model `lowprec train` makes with its own defaults (only --val-windows): gap closure."""
        out = self.c.work / "models" / "float_defaults" / "s0"
        self.r.run("float_defaults/s0/train", ["train", "--data", str(self.c.data), "--windows", self.c.train,
                                               "--val-windows", self.c.val, "--out", str(out), "--seed", "0", "--json"],
                   output=out)
        self.evals("float_defaults/s0", out)
        shutil.rmtree(out, ignore_errors=True)

    def dense_only(self) -> None:
        m = self.train("dense_only/s0", self.c.train, 0, ["--embedding", "hash:ratio=1000000"])
        if m.exists():
            self.r.note("table_bytes/dense_only/s0", table_bytes(m))
        self.evals("dense_only/s0", m)

    def uniform(self, seed: int, model: Path, grid=UNIFORM) -> None:
        for p, method in grid:
            self.artifact(f"uniform/{p}-{method}/s{seed}", model, ["--precision", p, "--range-method", method],
                          ("search_eval", "test"))

    def rule(self, rule: Rule, seed: int, model: Path, which=("search_eval", "test")) -> None:
        plan = rule.write(self.tables(), self.c.work / "plans" / f"{rule.name}.json")
        calib = self.c.work / "calib" / f"s{seed}.json"
        self.artifact(f"rule/{rule.name}/s{seed}", model, ["--plan", str(plan), "--calibration", str(calib)], which)

    def search(self, budget: str, seed: int, model: Path) -> None:
        c, name = self.c, f"search/{budget}/s{seed}"
        plan = c.work / "plans" / f"search-{budget}-s{seed}.json"
        calib = c.work / "calib" / f"s{seed}.json"
        flag, _, auc = BUDGETS[budget]
        tight_cache = c.work / "plans" / f"search-tight-s{seed}.cache.json"
        own_cache = plan.with_name(plan.stem + ".cache.json")
        if budget != "tight" and tight_cache.exists() and not own_cache.exists():
            shutil.copyfile(tight_cache, own_cache)  # same model, windows, options: the budget is not in its key
        self.r.run(f"{name}/search", ["search", "--model", str(model), "--data", str(c.data), "--calib-windows", c.val,
                                      "--eval-windows", c.search_eval, "--test-windows", c.test, "--max-ne-increase",
                                      flag, "--max-auc-drop", str(auc), "--calibration", str(calib),
                                      *(["--sharing-ratios", c.sharing_ratios] if c.sharing_ratios else []),
                                      "--precisions", "fp32,fp16,int8,int4,int2",
                                      "--layer-precisions", "fp32", "--out", str(plan), "--report",
                                      str(c.work / "search-reports" / f"{budget}-s{seed}"), "--json"], output=plan)
        # No separate convert + eval: the search converts its plan and reports it, paired against the float
        # model, on the eval window (`validated`) and the test window (`tested`); the renderer reads those.

    def claim(self, name: str) -> bool:
        """Both lanes work through the trained-sharing variants: each takes the ones no other lane took."""
        d = self.c.work / "claims"
        d.mkdir(parents=True, exist_ok=True)
        path = d / name.replace("/", "_")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return path.read_text().strip() == str(self.c.lane)
        with os.fdopen(fd, "w") as f:
            f.write(str(self.c.lane))
        return True

    def trained_sharing(self) -> None:
        if not self.claim("small_float"):
            return self._sharing_variants()
        m = self.train("small_float/s0", self.c.small_train, 0)
        self.evals("small_float/s0", m)
        if m.exists():
            self.r.note("table_bytes/small_float/s0", table_bytes(m))
        self._sharing_variants()

    def _sharing_variants(self) -> None:
        for v in TRAINED_SHARING:
            if not self.claim(v):
                continue
            kind, ratio = v.rstrip("0123456789"), v[len(v.rstrip("0123456789")):]
            spec = f"{kind}:ratio={ratio}" + (",align=1" if kind == "robe" else "")
            mv = self.train(f"sharing/{v}/s0", self.c.small_train, 0, ["--embedding", spec])
            if mv.exists():
                self.r.note(f"table_bytes/sharing/{v}/s0", table_bytes(mv))
            self.evals(f"sharing/{v}/s0", mv)  # fp32 hash, QR and aligned ROBE serve exactly as trained

    def drift(self, model: Path) -> None:
        """`lowprec drift` of seed 0's tight plan over the drift windows, recalibrating on the first alarmed
        window (`--on-alarm recalibrate --recalibrate-on alarmed`), then the recalibrated artifact scored on
        the windows after that one: the out-of-sample check of the recalibration."""
        art = self.c.work / "art" / "drift-candidate"
        plan = self.c.work / "plans" / "search-tight-s0.json"
        if self.r.done("drift/tight-s0/recal-eval") or not plan.exists():
            return
        calib = self.c.work / "calib" / "s0.json"
        if not self.r.done("drift/tight-s0/drift"):
            if not art.exists():
                self.r.state["stages"].pop("drift/tight-s0/convert", None)
                self.r.run("drift/tight-s0/convert", ["convert", "--model", str(model), "--plan", str(plan),
                                                      "--calibration", str(calib), "--out", str(art), "--json"])
            # The history is this study's own file: a run of an earlier candidate (a plan searched again)
            # would make `lowprec drift` refuse to mix the two pairs' histories (exit 2), so start it afresh.
            (self.c.work / "drift.sqlite").unlink(missing_ok=True)
            for p in art.parent.glob(f"{art.name}.recal-*"):  # a new history refuses files an old one left
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            self.r.run("drift/tight-s0/drift", ["drift", "--reference", str(model), "--candidate", str(art), "--data",
                                                str(self.c.data), "--windows", self.c.drift, "--db",
                                                str(self.c.work / "drift.sqlite"), "--report",
                                                str(self.c.work / "drift-report"), "--on-alarm", "recalibrate",
                                                "--recalibrate-on", "alarmed", "--calibration", str(calib),
                                                "--json"], ok_codes=(0, 1))
        result = self.r.result("drift/tight-s0/drift") or {}
        recal = (result.get("recalibrations") or [{}])[0].get("artifact")
        later = [w for w in parse_windows(self.c.drift, list(range(self.c.windows))) if w > (result.get("first_alarm") or 10**9)]
        if recal and later and Path(recal).exists():
            self.r.run("drift/tight-s0/recal-eval", ["eval", "--model", recal, "--data", str(self.c.data), "--windows",
                                                     ",".join(map(str, later)), "--json"])
        for p in (art, *art.parent.glob(f"{art.name}.recal-*")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
