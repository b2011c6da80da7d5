"""Alarm thresholds (defaults, TOML overrides) and the sequential decision rule of `lowprec drift`.

Configuration: `DriftConfig` = [alarm] `Thresholds` + [bootstrap] + [recalibrate] + [estimate] (the
label-free rule's own thresholds, lowprec.drift.estimate_rule), frozen and validated;
a THRESHOLDS.toml may set any key of those tables, and an unknown table or key is an error
naming it. Defaults and their rationale are in docs/drift.md.

The rule for window t (pure: signals in, decision out), with gap_t = NE_cand/NE_ref - 1 and se_t
the standard deviation of its Poisson-bootstrap replicates:

  CUSUM (Page 1954), one-sided per direction, floored at 0 and capped at `cusum_cap`:
      S⁺_t = min(cap, max(0, S⁺_{t-1} + ( gap_t - allowance) / se_t))   candidate worse
      S⁻_t = min(cap, max(0, S⁻_{t-1} + (-gap_t - allowance) / se_t))   candidate diverges (better)
  ALARM when any of
      S⁺_t > h                      (or S⁻_t > h when `two_sided`)
      CI_lo(gap_t) > ne_gap_limit   (or CI_hi(gap_t) < -ne_gap_limit when `two_sided`)
      AUC_ref - AUC_cand > auc_drop_limit and DeLong's one-sided p < auc_alpha
      the CI of the calibration ratio gap (Σp_cand/Σp_ref - 1) lies outside ±calibration_gap_limit.
One noisy window moves S by a few units at most, a persistent gap above the allowance accumulates,
and the cap makes an alarm clear within a few healthy windows once the gap is gone.
A window with fewer than `min_positives` positive or `min_negatives` negative labels has "too few
labels": the label-based triggers (NE gap CI, CUSUM, AUC) are off and its CUSUM state carries over
unchanged. A window of fewer than 100 rows (stats.MIN_INTERVAL_ROWS) has no bootstrap intervals: the
rules on them (NE gap CI, CUSUM, calibration gap CI) are off, "too few rows", the CUSUM state
carries over. The NE gap judged is the measured gap minus the plan's validated gap (the manifest's
`plan.validated.ne_increase`); every reason that subtracts it says so.
Warnings (recorded, never an alarm by themselves): activation clipping above `clip_rate_ratio` x its
calibration-time rate, PSI of the score distributions above `psi_limit`. Staleness of the float
model against its baseline window is reported apart: it is not quantization's fault; on a window
with too few labels it is not judged (its note says so instead of "retrain").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lowprec.calibrate import setting_problems
from lowprec.drift.estimate_rule import EstimateThresholds
from lowprec.evaluation.metrics import MIN_CLASS_LABELS
from lowprec.evaluation.stats import MIN_INTERVAL_ROWS
from lowprec.errors import InputError
from lowprec.tomlfile import read_toml

CONFIG_VERSION = 1
RECAL_SOURCES = ("healthy", "alarmed", "both")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise InputError(f"drift config: {msg}")


@dataclass(frozen=True)
class Thresholds:
    ne_gap_limit: float = 0.002  # hard limit on |NE_cand/NE_ref - 1| (0.2%)
    ne_gap_allowance: float = 0.001  # CUSUM reference value: gap tolerated indefinitely (0.1%)
    cusum_h: float = 5.0  # CUSUM decision interval (in standard errors)
    cusum_cap: float = 10.0  # CUSUM ceiling, so an alarm clears once the gap is gone
    two_sided: bool = True  # also alarm when the candidate's NE is far BETTER (divergence)
    auc_drop_limit: float = 0.002  # AUC_ref - AUC_cand beyond which a significant drop alarms
    auc_alpha: float = 0.01  # one-sided DeLong level for the AUC drop
    calibration_gap_limit: float = 0.02  # |Σp_cand/Σp_ref - 1|
    clip_rate_ratio: float = 10.0  # warn when clip rate > ratio x max(calibration rate, floor)
    clip_rate_floor: float = 1e-4
    psi_limit: float = 0.1  # warn when PSI(candidate scores | reference deciles) exceeds it
    staleness_ne_limit: float = 0.02  # float NE vs its baseline window: reported, not alarmed
    staleness_calibration_limit: float = 0.05
    min_positives: int = MIN_CLASS_LABELS  # fewer positive (or negative) labels in a window: "too few
    min_negatives: int = MIN_CLASS_LABELS  # labels", no label-based alarm (NE gap, CUSUM, AUC); the CUSUM state carries over

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type == "float":
                v = getattr(self, f.name)
                _check(math.isfinite(v) and v >= 0, f"alarm.{f.name} must be a finite number >= 0, got {v}")
        _check(self.ne_gap_allowance < self.ne_gap_limit,
               "alarm.ne_gap_allowance must be below alarm.ne_gap_limit")
        _check(self.cusum_h > 0, "alarm.cusum_h must be > 0")
        _check(self.cusum_cap >= self.cusum_h, "alarm.cusum_cap must be >= alarm.cusum_h")
        _check(0 < self.auc_alpha < 1, "alarm.auc_alpha must be in (0, 1)")
        _check(self.clip_rate_ratio >= 1, "alarm.clip_rate_ratio must be >= 1")
        _check(self.min_positives >= 0 and self.min_negatives >= 0,
               "alarm.min_positives and alarm.min_negatives must be >= 0")


@dataclass(frozen=True)
class BootstrapConfig:
    replicates: int = 200
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        _check(20 <= self.replicates <= 5000, f"bootstrap.replicates must be in [20, 5000], got {self.replicates}")
        _check(0.5 <= self.confidence < 1, f"bootstrap.confidence must be in [0.5, 1), got {self.confidence}")
        _check(self.seed >= 0, "bootstrap.seed must be >= 0")


@dataclass(frozen=True)
class RecalConfig:
    source: str = "healthy"  # healthy | alarmed | both
    healthy_windows: int = 3  # the latest healthy windows before the first alarm
    method: str = ""  # "" = the method recorded in --calibration CALIB.json, else minmax
    percentile: float = 99.99

    def __post_init__(self) -> None:
        _check(self.source in RECAL_SOURCES, f"recalibrate.source must be one of {RECAL_SOURCES}")
        _check(self.healthy_windows >= 1, "recalibrate.healthy_windows must be >= 1")
        # the rule the recalibration's CalibConfig applies, here at load: a bad value failed only
        # after every window was scored and recorded, and again on every rerun
        for key, problem in setting_problems(self.method or "minmax", self.percentile).items():
            got = f", got {self.percentile:g}" if key == "percentile" else ""
            _check(False, f"recalibrate.{key}: {problem}{got}")


_SECTIONS = {"alarm": Thresholds, "bootstrap": BootstrapConfig, "recalibrate": RecalConfig,
             "estimate": EstimateThresholds}


@dataclass(frozen=True)
class DriftConfig:
    alarm: Thresholds = field(default_factory=Thresholds)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    recalibrate: RecalConfig = field(default_factory=RecalConfig)
    estimate: EstimateThresholds = field(default_factory=EstimateThresholds)  # label-free rule

    def to_json(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **{k: asdict(getattr(self, k)) for k in _SECTIONS}}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "drift config") -> "DriftConfig":
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a table of sections {sorted(_SECTIONS)}")
        body = {k: v for k, v in obj.items() if k != "version"}
        if "version" in obj and obj["version"] != CONFIG_VERSION:
            raise InputError(f"{where}: config version {obj['version']} is not supported")
        unknown = sorted(set(body) - set(_SECTIONS))
        if unknown:
            raise InputError(f"{where}: unknown section {unknown[0]!r} (known: {sorted(_SECTIONS)})")
        try:
            return cls(**{k: _section(k, body.get(k, {}), where) for k in _SECTIONS})
        except InputError as exc:  # the sections' own checks say "drift config: ...": name the file
            text = str(exc)
            if text.startswith("drift config: "):
                raise InputError(f"{where}: {text[len('drift config: '):]}") from None
            raise


def _section(name: str, table: Any, where: str) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(table, dict):
        raise InputError(f"{where}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    for key, value in table.items():
        if key not in known:
            raise InputError(f"{where}: unknown key {name}.{key!r} (known: {sorted(known)})")
        want = known[key].type
        ok = {"bool": isinstance(value, bool), "str": isinstance(value, str),
              "int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}[want]
        if not ok:  # TOML has nan and inf: a threshold of nan never fires, one of inf always does
            raise InputError(f"{where}: {name}.{key} must be a {'finite ' if want == 'float' else ''}{want}, "
                             f"got {value!r}")
    return cls(**{k: (float(v) if known[k].type == "float" else v) for k, v in table.items()})


def load_config(path: str | Path | None) -> DriftConfig:
    """Defaults, overridden by a THRESHOLDS.toml when given."""
    if path is None:
        return DriftConfig()
    return DriftConfig.from_json(read_toml(path, "drift config"), str(path))


@dataclass(frozen=True)
class Signals:
    """What the rule looks at for one window (all from `paired.WindowMeasure`)."""

    ne_gap: float
    ne_gap_lo: float
    ne_gap_hi: float
    ne_gap_se: float
    auc_diff: float  # auc_cand - auc_ref
    auc_p_drop: float
    cal_gap: float
    cal_gap_lo: float
    cal_gap_hi: float
    psi: float
    clipping: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # rate, calib rate
    stale_ne: float | None = None
    stale_calibration: float | None = None
    expected_gap: float = 0.0  # the NE gap the plan was validated with; ne_gap* are relative to it
    positives: int | None = None  # label counts of the window (None: unknown, assumed enough)
    negatives: int | None = None
    expected_cal_gap: float = 0.0  # the calibration gap it was validated with; cal_gap* are relative to it
    rows: int | None = None  # rows of the window (None: unknown, assumed enough)


LABEL_TRIGGERS = ("ne_gap_ci", "cusum_up", "cusum_down", "auc_drop")
INTERVAL_TRIGGERS = ("ne_gap_ci", "cusum_up", "cusum_down", "calibration_gap")  # judged on bootstrap intervals


@dataclass(frozen=True)
class CusumState:
    up: float = 0.0
    down: float = 0.0


@dataclass(frozen=True)
class Decision:
    alarm: bool
    state: CusumState
    triggers: tuple[str, ...]
    reason: str
    warnings: tuple[str, ...] = ()
    staleness: tuple[str, ...] = ()


def _step(prev: float, x: float, se: float, cap: float) -> float:
    if not math.isfinite(x) or not (se >= 0):  # no information (e.g. an empty window)
        return prev
    z = x / se if se > 0 else (0.0 if x == 0 else math.copysign(math.inf, x))
    return min(cap, max(0.0, prev + z))


def cusum_step(prev: CusumState, s: Signals, t: Thresholds) -> CusumState:
    k = t.ne_gap_allowance
    return CusumState(_step(prev.up, s.ne_gap - k, s.ne_gap_se, t.cusum_cap),
                      _step(prev.down, -s.ne_gap - k, s.ne_gap_se, t.cusum_cap))


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.{digits}f}%"


def _label_shortfall(s: Signals, t: Thresholds) -> str:
    """"too few labels: ..." when the window has fewer than min_positives / min_negatives ("" if not)."""
    pos, neg = s.positives, s.negatives
    if pos is None or neg is None or (pos >= t.min_positives and neg >= t.min_negatives):
        return ""
    return f"too few labels: {pos} positives / {neg} negatives (minimum {t.min_positives} / {t.min_negatives})"


def too_few_labels(s: Signals, t: Thresholds) -> str:
    """Why the window's labels cannot carry a label-based alarm ("" when they can)."""
    short = _label_shortfall(s, t)
    return f"{short}: no label-based alarm (NE gap, CUSUM, AUC) for this window" if short else ""


def too_few_rows(s: Signals) -> str:
    """Why the window's bootstrap intervals cannot carry an alarm ("" when they can): fewer than
    stats.MIN_INTERVAL_ROWS rows (their intervals are recorded as undefined)."""
    if s.rows is None or s.rows >= MIN_INTERVAL_ROWS:
        return ""
    return (f"too few rows: {s.rows} (minimum {MIN_INTERVAL_ROWS}) for the bootstrap intervals: no NE gap, "
            f"CUSUM or calibration gap alarm for this window")


def gap_text(s: Signals) -> str:
    """The gap the rule judges, saying when the plan's validated gap was subtracted first."""
    ci = f"{pct(s.ne_gap)} [CI {pct(s.ne_gap_lo)}, {pct(s.ne_gap_hi)}]"
    if not s.expected_gap:
        return ci
    e = s.expected_gap
    return (f"{pct(s.ne_gap + e)} [CI {pct(s.ne_gap_lo + e)}, {pct(s.ne_gap_hi + e)}] minus the plan's "
            f"validated gap {pct(e)} = {ci}")


def cal_gap_text(s: Signals) -> str:
    """The calibration gap the rule judges, net of the plan's validated calibration gap when known."""
    ci = f"{pct(s.cal_gap)} [CI {pct(s.cal_gap_lo)}, {pct(s.cal_gap_hi)}]"
    e = s.expected_cal_gap
    if not e:
        return ci
    return (f"{pct(s.cal_gap + e)} [CI {pct(s.cal_gap_lo + e)}, {pct(s.cal_gap_hi + e)}] minus the plan's "
            f"validated calibration gap {pct(e)} = {ci}")


def _triggers(s: Signals, st: CusumState, t: Thresholds) -> list[tuple[str, str]]:
    out = []
    ci = gap_text(s)
    auc_dropped = s.auc_diff < 0 and s.auc_p_drop < t.auc_alpha
    if s.ne_gap_lo > t.ne_gap_limit:
        out.append(("ne_gap_ci", f"candidate NE worse by {ci}, beyond the {pct(t.ne_gap_limit)} limit"))
    if t.two_sided and s.ne_gap_hi < -t.ne_gap_limit:
        how = (f"lower NE but a significantly lower AUC (DeLong one-sided p={s.auc_p_drop:.2g}): not "
               f"better," if auc_dropped else "(better):")
        out.append(("ne_gap_ci", f"candidate NE departs from the reference by {ci} {how} it no "
                                 f"longer tracks the reference beyond the ±{100 * t.ne_gap_limit:.2f}% limit"))
    if st.up > t.cusum_h:
        out.append(("cusum_up", f"persistent NE gap above the {pct(t.ne_gap_allowance)} allowance "
                                f"(CUSUM {st.up:.1f} > h={t.cusum_h:g})"))
    if t.two_sided and st.down > t.cusum_h:
        out.append(("cusum_down", f"persistent NE gap below -{100 * t.ne_gap_allowance:.2f}% "
                                  f"(CUSUM {st.down:.1f} > h={t.cusum_h:g})"))
    if -s.auc_diff > t.auc_drop_limit and s.auc_p_drop < t.auc_alpha:
        out.append(("auc_drop", f"AUC drop {-s.auc_diff:.4f} > {t.auc_drop_limit:g} "
                                f"(DeLong one-sided p={s.auc_p_drop:.2g})"))
    lim = t.calibration_gap_limit
    if s.cal_gap_lo > lim or s.cal_gap_hi < -lim:
        out.append(("calibration_gap", f"calibration ratio gap {cal_gap_text(s)} beyond ±{100 * lim:.2f}%"))
    return out


def _warnings(s: Signals, t: Thresholds) -> list[str]:
    out, hot = [], []
    for layer, (rate, calib) in sorted(s.clipping.items()):
        if rate > t.clip_rate_ratio * max(calib if calib is not None else 0.0, t.clip_rate_floor):
            hot.append(f"{layer} {rate:.2%} (calibration {'unknown' if calib is None else f'{calib:.2%}'})")
    if hot:
        out.append(f"activation clipping above {t.clip_rate_ratio:g}x its calibration-time rate: "
                   f"{', '.join(hot)}; the static int8 ranges no longer cover the inputs")
    if math.isfinite(s.psi) and s.psi > t.psi_limit:
        out.append(f"score distributions differ: PSI {s.psi:.3f} > {t.psi_limit:g}")
    return out


def _staleness(s: Signals, t: Thresholds) -> list[str]:
    out = []
    if s.stale_ne is not None and math.isfinite(s.stale_ne) and s.stale_ne > t.staleness_ne_limit:
        out.append(f"float model NE {pct(s.stale_ne, 1)} vs its baseline window (staleness: retrain; "
                   f"not a quantization alarm)")
    elif s.stale_ne is not None and math.isfinite(s.stale_ne) and s.stale_ne < -t.staleness_ne_limit:
        out.append(f"float model NE {pct(s.stale_ne, 1)} vs its baseline window: it predicts this window "
                   f"better (the data got easier), not staleness; no retraining indicated")
    sc = s.stale_calibration
    if sc is not None and math.isfinite(sc) and abs(sc) > t.staleness_calibration_limit:
        out.append(f"float model calibration {pct(sc, 1)} vs its baseline window")
    short = _label_shortfall(s, t)
    if out and short:  # the same counts that keep such a window from being the baseline (signals.py)
        return [f"{short}: the float model's NE {pct(s.stale_ne, 1)} and calibration {pct(sc, 1)} vs its "
                f"baseline window say nothing about staleness here (no retraining indicated)"]
    return out


def _gap_name(s: Signals) -> str:
    """What the gap is called: the candidate's log loss over the reference's, which is the NE ratio
    while the window holds both label classes; with one class only NE is undefined (no base-rate
    entropy), and the ratio is of log losses on that class alone."""
    if s.positives == 0 or s.negatives == 0:
        return f"log-loss gap (NE undefined: no {'positive' if s.positives == 0 else 'negative'} labels)"
    return "NE gap"


def decide(s: Signals, prev: CusumState, t: Thresholds) -> Decision:
    """The sequential rule for one window, given the CUSUM state after the previous window."""
    few, few_rows = too_few_labels(s, t), too_few_rows(s)
    state = prev if few or few_rows else cusum_step(prev, s, t)
    trig = [(c, m) for c, m in _triggers(s, state, t)
            if (not few or c not in LABEL_TRIGGERS) and (not few_rows or c not in INTERVAL_TRIGGERS)]
    notes = [n for n in (few_rows, few) if n]
    if trig:
        reason = "ALARM: " + "; ".join(msg for _, msg in trig)
    elif notes:
        reason = f"{'; '.join(notes)}; {_gap_name(s)} {gap_text(s)}"
    else:
        reason = (f"healthy: {_gap_name(s)} {gap_text(s)} within ±{100 * t.ne_gap_limit:.2f}%, "
                  f"CUSUM up {state.up:.1f} / down {state.down:.1f} <= {t.cusum_h:g}")
    warnings = (notes if trig else []) + _warnings(s, t)
    return Decision(bool(trig), state, tuple(dict.fromkeys(c for c, _ in trig)), reason,
                    tuple(warnings), tuple(_staleness(s, t)))
