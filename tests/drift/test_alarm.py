"""Thresholds config (TOML, validation, JSON round trip) and the sequential alarm rule."""

import dataclasses

import pytest

from lowprec.drift.alarm import CusumState, DriftConfig, Signals, Thresholds, decide, load_config
from lowprec.errors import InputError

T = Thresholds()


def sig(gap=0.0, se=0.0004, half=None, **kw):
    half = 1.96 * se if half is None else half
    base = dict(ne_gap=gap, ne_gap_lo=gap - half, ne_gap_hi=gap + half, ne_gap_se=se, auc_diff=0.0,
                auc_p_drop=0.5, cal_gap=0.0, cal_gap_lo=-0.001, cal_gap_hi=0.001, psi=0.0)
    base.update(kw)
    return Signals(**base)


def run(seq, t=T):
    state, out = CusumState(), []
    for s in seq:
        d = decide(s, state, t)
        state = d.state
        out.append(d)
    return out


def test_defaults_and_toml_overrides(tmp_path):
    assert load_config(None) == DriftConfig()
    p = tmp_path / "t.toml"
    p.write_text("[alarm]\nne_gap_limit = 0.005\ncusum_h = 4\ntwo_sided = false\n"
                 "[bootstrap]\nreplicates = 100\n[recalibrate]\nsource = 'both'\n")
    c = load_config(p)
    assert c.alarm.ne_gap_limit == 0.005 and c.alarm.cusum_h == 4.0 and not c.alarm.two_sided
    assert c.bootstrap.replicates == 100 and c.recalibrate.source == "both"
    assert c.alarm.ne_gap_allowance == T.ne_gap_allowance  # untouched keys keep their defaults
    assert DriftConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("text, words", [
    ("[alarm]\nne_gap_limt = 0.01\n", ["alarm", "ne_gap_limt"]),
    ("[alarms]\nne_gap_limit = 0.01\n", ["alarms"]),
    ("[alarm]\ncusum_h = 'five'\n", ["cusum_h", "float"]),
    ("[alarm]\ntwo_sided = 1\n", ["two_sided", "bool"]),
    ("[bootstrap]\nreplicates = 2.5\n", ["replicates", "int"]),
    ("[alarm]\nne_gap_allowance = 0.01\n", ["ne_gap_allowance", "below"]),
    ("[alarm]\nne_gap_limit = -1\n", ["ne_gap_limit"]),
    ("[alarm]\nne_gap_limit = nan\n", ["ne_gap_limit", "finite float"]),
    ("[alarm]\ncusum_h = inf\n", ["cusum_h", "finite float"]),
    ("[recalibrate]\nsource = 'never'\n", ["recalibrate.source"]),
    # the recalibration's CalibConfig rule, at load (it failed after every window was recorded)
    ("[recalibrate]\npercentile = 10\n", ["recalibrate.percentile", "(50, 100]", "got 10"]),
    ("[recalibrate]\nmethod = 'percentile'\npercentile = 50\n", ["recalibrate.percentile", "got 50"]),
    ("[recalibrate]\nmethod = 'magic'\n", ["recalibrate.method", "'magic'"]),
    ("[alarm\n", ["not a valid UTF-8 TOML drift config"]),
])
def test_bad_config_names_the_key(tmp_path, text, words):
    p = tmp_path / "t.toml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_config(p)
    for w in words:
        assert w in str(e.value)
    assert str(e.value).startswith(f"{p}: ") or "not found" in str(e.value)  # the TOML file named once


def test_one_noisy_window_does_not_alarm_but_a_persistent_gap_does():
    noisy = [sig(0.0), sig(0.0025, se=0.0008), sig(0.0), sig(0.0003), sig(0.0)]
    assert not any(d.alarm for d in run(noisy))
    # a gap of 0.15% (between the 0.1% allowance and the 0.2% limit), se 0.02%: z = 2.5 per window
    small = run([sig(0.0015, se=0.0002, half=0.0004)] * 4)
    assert [d.alarm for d in small] == [False, False, True, True]
    assert small[2].triggers == ("cusum_up",) and "persistent" in small[2].reason
    assert [round(d.state.up, 6) for d in small] == [2.5, 5.0, 7.5, 10.0]


def test_hard_limit_alarms_at_once_and_alarm_clears_after_the_gap_goes():
    seq = [sig(0.004, se=0.0002, half=0.001)] + [sig(0.0, se=0.0004)] * 3
    ds = run(seq)
    assert ds[0].alarm and "ne_gap_ci" in ds[0].triggers and "beyond" in ds[0].reason
    assert ds[0].state.up == T.cusum_cap  # 15 standard errors, capped
    # back to zero gap: z = -0.001/0.0004 = -2.5 per window: 10 -> 7.5 (alarm) -> 5.0 (clear)
    assert [d.alarm for d in ds[1:]] == [True, False, False]


def test_two_sided_divergence():
    better = sig(-0.05, se=0.003, half=0.005)
    d = run([better])[0]
    assert d.alarm and set(d.triggers) == {"ne_gap_ci", "cusum_down"} and "better" in d.reason
    one = dataclasses.replace(T, two_sided=False)
    assert not run([better] * 3, one)[-1].alarm


def test_auc_and_calibration_rules():
    assert run([sig(auc_diff=-0.003, auc_p_drop=0.001)])[0].triggers == ("auc_drop",)
    assert not run([sig(auc_diff=-0.003, auc_p_drop=0.2)])[0].alarm  # not significant
    assert not run([sig(auc_diff=-0.001, auc_p_drop=1e-6)])[0].alarm  # significant but small
    cal = sig(cal_gap=0.03, cal_gap_lo=0.025, cal_gap_hi=0.035)
    assert run([cal])[0].triggers == ("calibration_gap",)
    assert not run([sig(cal_gap=0.03, cal_gap_lo=0.015, cal_gap_hi=0.045)])[0].alarm


def test_warnings_and_staleness_never_alarm():
    s = sig(clipping={"bottom.0": (0.18, 0.0), "top.0": (0.00001, 0.0), "top.1": (0.02, None)},
            psi=0.4, stale_ne=0.37, stale_calibration=-0.4)
    d = run([s])[0]
    assert not d.alarm
    assert len(d.warnings) == 2
    assert "bottom.0 18.00%" in d.warnings[0] and "top.1" in d.warnings[0] and "top.0" not in d.warnings[0]
    assert "PSI" in d.warnings[1]
    assert len(d.staleness) == 2 and "not a quantization alarm" in d.staleness[0]


def test_a_window_with_too_few_labels_is_not_called_stale():
    """A window with 5 positives (QA: float NE +6438% vs its baseline) read "staleness: retrain" while
    its own alarm said "too few labels". The counts that keep it from being the baseline also keep its
    staleness from being judged; a recalibration's reason on it does not say "retrain" either."""
    few = dict(stale_ne=64.382, stale_calibration=468.523, positives=5, negatives=7995)
    d = run([sig(**few)])[0]
    assert "too few labels" in d.reason
    assert d.staleness == ("too few labels: 5 positives / 7995 negatives (minimum 30 / 30): the float model's "
                           "NE +6438.2% and calibration +46852.3% vs its baseline window say nothing about "
                           "staleness here (no retraining indicated)",)
    enough = run([sig(**{**few, "positives": 30, "negatives": 30})])[0]
    assert "retrain;" in enough.staleness[0] and "calibration +46852.3%" in enough.staleness[1]
    assert run([sig(positives=5, negatives=7995)])[0].staleness == ()  # nothing to say: nothing said
    from lowprec.drift.recalibration import _recal_reason

    before = {"ne_gap": 0.01, "stale_ne": 64.382, "ref_ne": 60.0, "ctr": 5 / 8000, "rows": 8000}
    assert "retrain" not in _recal_reason("healthy", [5, 6], 7, False, before, None, T)
    before.update(ctr=0.2, ref_ne=0.9)
    assert "retraining, not recalibration" in _recal_reason("healthy", [5, 6], 7, False, before, None, T)


def test_a_window_of_too_few_rows_never_alarms_on_its_bootstrap_intervals():
    """A 1-row window alarmed (exit 1) on "calibration ratio gap -2.40% [CI -2.40%, -2.40%]": every
    Poisson replicate of one row gives the same ratio. Below 100 rows the interval rules (NE gap CI,
    CUSUM, calibration gap CI) are off and the reason says "too few rows"; the CUSUM carries over."""
    one = dict(ne_gap=0.0109, ne_gap_lo=0.0109, ne_gap_hi=0.0109, ne_gap_se=0.0, cal_gap=-0.024,
               cal_gap_lo=-0.024, cal_gap_hi=-0.024)
    d = decide(sig(**one, rows=1, positives=1, negatives=0), CusumState(2.0, 1.0), T)
    assert not d.alarm and d.state == CusumState(2.0, 1.0), d.reason
    assert d.reason.startswith("too few rows: 1 (minimum 100) for the bootstrap intervals") and "too few labels" in d.reason
    # enough labels of each class but 80 rows: still no interval rule; DeLong's AUC rule still applies
    d = decide(sig(**one, rows=80, positives=40, negatives=40, auc_diff=-0.05, auc_p_drop=1e-4), CusumState(), T)
    assert d.alarm and d.triggers == ("auc_drop",) and any("too few rows: 80" in w for w in d.warnings)
    d = decide(sig(**one, rows=100, positives=50, negatives=50), CusumState(), T)  # from 100 rows: judged
    assert d.alarm and "calibration_gap" in d.triggers and "ne_gap_ci" in d.triggers


def test_missing_standard_error_leaves_the_cusum_alone():
    d = decide(sig(0.01, se=float("nan"), half=float("nan")), CusumState(3.0, 1.0), T)
    assert d.state == CusumState(3.0, 1.0) and not d.alarm


def test_gap_is_judged_against_the_validated_gap():
    from types import SimpleNamespace

    from lowprec.drift.signals import expected_gap, signals_for
    from lowprec.evaluation.stats import Interval

    assert expected_gap({"plan": {"validated": {"ne_increase": -0.007}}}) == -0.007
    assert expected_gap({"plan": {"validated": None}}) == 0.0 and expected_gap(None) == 0.0

    def measure(gap):  # a window whose paired NE gap is `gap` with a tight interval
        return SimpleNamespace(
            reference={"ne": 0.9, "calibration": 1.0}, clipping={}, psi=0.0,
            ne_gap=Interval(gap, gap - 0.001, gap + 0.001, 0.0005),
            delong=SimpleNamespace(diff=0.0, p_drop=0.5), cal_gap=Interval(0.0, -0.001, 0.001, 0.0005))

    # A plan accepted at -0.7% (sharing regularised it) stays healthy while the gap stays there ...
    steady = run([signals_for(measure(-0.007), None, {}, -0.007) for _ in range(6)])
    assert not any(d.alarm for d in steady)
    # ... but the same windows judged against zero alarm, and a move of the gap alarms either way.
    assert run([signals_for(measure(-0.007), None, {}, 0.0)])[0].alarm
    moved = run([signals_for(measure(-0.047), None, {}, -0.007)])[0]
    assert moved.alarm and "validated gap -0.70%" in moved.reason


def test_calibration_gap_is_judged_against_the_plans_validated_gap():
    from types import SimpleNamespace as NS

    from lowprec.drift.signals import expected_calibration_gap, signals_for

    manifest = {"plan": {"validated": {"ne_increase": -0.016, "calibration_gap": -0.065}}}
    assert expected_calibration_gap(manifest) == -0.065
    assert expected_calibration_gap({"plan": {"validated": {"ne_increase": 0.0}}}) == 0.0  # older plans
    assert expected_calibration_gap(None) == 0.0
    iv = lambda e, lo, hi: NS(estimate=e, lo=lo, hi=hi, se=0.001)  # noqa: E731
    m = NS(reference={"ne": 0.9, "calibration": 1.0, "ctr": 0.25}, rows=20000, clipping={},
           ne_gap=iv(-0.016, -0.018, -0.014), delong=NS(diff=0.004, p_drop=0.9), psi=0.01,
           cal_gap=iv(-0.0655, -0.068, -0.063))
    s = signals_for(m, None, {}, -0.016, expected_calibration_gap(manifest))
    assert s.cal_gap == pytest.approx(-0.0005) and s.cal_gap_lo == pytest.approx(-0.003)
    d = decide(s, CusumState(), T)
    assert not d.alarm and "calibration_gap" not in d.triggers
    # the same raw gap judged against 0 (an artifact without a validated gap) alarms, as before
    raw = decide(signals_for(m, None, {}, -0.016), CusumState(), T)
    assert raw.alarm and raw.triggers == ("calibration_gap",)
    # a gap that moved 3 points beyond the validated one alarms, and the reason says what was subtracted
    moved = dataclasses.replace(s, cal_gap=-0.03, cal_gap_lo=-0.033, cal_gap_hi=-0.027)
    d = decide(moved, CusumState(), T)
    assert d.alarm and "minus the plan's validated calibration gap -6.50% = -3.00%" in d.reason


def test_a_recalibration_verdict_speaks_of_what_alarmed_and_what_was_measured():
    """QA 6b item 3: window 8 alarmed on the calibration gap alone; the verdict quoted an NE gap that
    never alarmed ("+0.02% -> +0.01%") and said the healthy windows' ranges "do not cover window 8's
    inputs" (fixed text) where clipping measured ~1e-5. It now quotes the signals that alarmed and
    says what the measured clipping says."""
    from types import SimpleNamespace as NS

    from lowprec.drift.recalibration import _recal_reason

    before = {"ne_gap": 0.0002, "cal_gap": 0.028, "auc_diff": -0.0001, "triggers": ["calibration_gap"]}
    m = NS(ne_gap=NS(estimate=0.0001), cal_gap=NS(estimate=0.027), delong=NS(diff=-0.0001),
           clipping={"bottom.0": {"clip_rate": 1e-5}})
    quiet = NS(triggers=("calibration_gap",), warnings=())
    text = _recal_reason("healthy", [5, 6, 7], 8, False, before, (m, quiet), T)
    assert "calibration gap +2.80% -> +2.70%" in text and "NE gap" not in text.split(":")[0]
    assert "still alarms on calibration_gap" in text and "do cover window 8's inputs" in text
    clipped = NS(triggers=("ne_gap_ci",), warnings=("activation clipping above 10x its calibration-time rate: "
                                                     "bottom.0 7.00% (calibration 0.00%); the static int8 ranges",))
    before = {"ne_gap": 0.03, "triggers": ["ne_gap_ci", "cusum_up"]}
    text = _recal_reason("healthy", [5, 6, 7], 8, False, before, (NS(**{**vars(m), "ne_gap": NS(estimate=0.029)}), clipped), T)
    assert text.count("NE gap +3.00% -> +2.90%") == 1 and "do not cover window 8's inputs (activation clipping" in text
    fp32 = NS(**{**vars(m), "clipping": {}})
    assert "no static int8 layer" in _recal_reason("healthy", [7], 8, False, before, (fp32, quiet), T)


def test_a_window_of_one_label_class_speaks_of_a_log_loss_gap_not_an_ne_gap():
    """QA 6b item 6: a window without positives printed "NE gap +0.08% [CI ...]" though its NE is
    undefined (null in the record): the ratio there is of log losses over negatives alone."""
    d = decide(sig(0.0008, positives=0, negatives=5000), CusumState(), T)
    assert "log-loss gap (NE undefined: no positive labels) +0.08%" in d.reason and "NE gap +" not in d.reason
    assert "NE gap +0.08%" in decide(sig(0.0008, positives=20, negatives=5000), CusumState(), T).reason


def test_each_alarm_a_run_asks_about_is_recalibrated_once_from_its_first_window():
    """QA 9b item 1: a run over a backlog of two alarms (windows 8-10 and 13-15) recalibrated only
    the older; QA 8c item 1: a daily run asking for day 10 of an alarm begun on day 8 recalibrated
    again. Each alarm is known by its first window."""
    from lowprec.drift.recalibration import alarm_starts

    alarm = {8, 9, 10, 13, 14, 15}
    rows = [{"window": w, "alarm": w in alarm} for w in range(5, 16)]
    assert alarm_starts(rows, list(range(5, 16))) == [8, 13]
    assert alarm_starts(rows, [10]) == [8] and alarm_starts(rows, [15]) == [13]
    assert alarm_starts(rows, [5, 6, 11]) == []
    gap = [r for r in rows if r["window"] != 9]  # (a window never recorded does not end an alarm)
    assert alarm_starts(gap, [10]) == [8]
