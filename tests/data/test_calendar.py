"""Calendar windows in a time zone (a CSV schema's window_timezone): period keys against a per-row
datetime reference across daylight-saving changes, and local-day files appended day after day."""
from __future__ import annotations

import datetime as dt
import zoneinfo

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import run_cli as run
from lowprec.data.calendar import period_info, period_keys
from lowprec.data.dataset import Dataset

ZONES = ["America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham", "UTC"]
# instants around 2024's daylight-saving changes and a year's turn, +- 2 days
AROUND = [dt.datetime(2024, 3, 10, 10, tzinfo=dt.timezone.utc), dt.datetime(2024, 3, 31, 1, tzinfo=dt.timezone.utc),
          dt.datetime(2024, 4, 6, 15, tzinfo=dt.timezone.utc), dt.datetime(2024, 11, 3, 9, tzinfo=dt.timezone.utc),
          dt.datetime(2023, 12, 31, 12, tzinfo=dt.timezone.utc)]


def reference(t: float, zone: str, period: str) -> str:
    local = dt.datetime.fromtimestamp(int(np.floor(t)), zoneinfo.ZoneInfo(zone))
    return {"day": f"{local:%Y-%m-%d}", "month": f"{local:%Y-%m}", "year": f"{local:%Y}"}[period]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ZONES), st.sampled_from(AROUND), st.sampled_from(["day", "month", "year"]),
       st.lists(st.integers(-2 * 86400, 2 * 86400), min_size=1, max_size=40))
def test_period_keys_in_a_zone_equal_a_per_row_reference(zone, centre, period, offsets):
    ts = np.array([centre.timestamp() + o + 0.25 for o in offsets])
    got = [str(k) for k in period_keys(ts, period, zone)]
    assert got == [reference(t, zone, period) for t in ts]


@pytest.mark.parametrize("zone", ZONES)
def test_period_keys_in_a_zone_at_every_quarter_hour_edge(zone):
    """Every quarter-hour (and a second either side) for two days around each change: where a wrong
    offset (another instant's) moves a row across midnight, which random times rarely hit."""
    centre = np.array([c.timestamp() for c in AROUND])[:, None]
    steps = np.arange(-2 * 86400, 2 * 86400, 900)[None, :]
    ts = (centre + steps).reshape(-1, 1) + np.array([-1.0, 0.0, 1.0])[None, :]
    ts = ts.reshape(-1)
    for period in ("day", "month"):
        got = [str(k) for k in period_keys(ts, period, zone)]
        assert got == [reference(t, zone, period) for t in ts]


def test_period_info_gives_local_midnights_with_their_offsets():
    assert period_info(np.datetime64("2024-03-10", "D"), "America/Los_Angeles") == {
        "label": "2024-03-10", "start": "2024-03-10T00:00:00-08:00", "end": "2024-03-11T00:00:00-07:00"}
    assert period_info(np.datetime64("2024-03-10", "D")) == {
        "label": "2024-03-10", "start": "2024-03-10T00:00:00Z", "end": "2024-03-11T00:00:00Z"}


def test_local_day_files_append_day_after_day(tmp_path):
    """QA 8a item 2: files cut at local midnight straddled two UTC days, so every next day's append was
    refused. With window_timezone the windows are that zone's days: one file, one window."""
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\ntime = "t"\nwindow_timezone = "America/Los_Angeles"\n'
                      '[dense.x]\n[categorical.c]\nnum_embeddings = 100\n')
    for day in (8, 9, 10, 11):  # 2024-03-10: daylight saving time begins at 02:00
        def off(h):  # (the local offset at that hour)
            return "-08:00" if day < 10 or (day == 10 and h < 2) else "-07:00"
        rows = [f"2024-03-{day:02d}T{h:02d}:30:00{off(h)},{h % 2},{h},c{h}" for h in (0, 1, 3, 12, 23)]
        (tmp_path / f"day{day}.csv").write_text("t,y,x,c\n" + "\n".join(rows) + "\n")
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "day8.csv", "--schema", schema,
            "--out", tmp_path / "d", "--window", "day")
    assert r.exit_code == 0, r.output
    for day in (9, 10, 11):
        r = run("data", "append", "--data", tmp_path / "d", "--input", tmp_path / f"day{day}.csv")
        assert r.exit_code == 0, r.output
    windows = Dataset(tmp_path / "d").meta.windows
    assert [(w.label, w.rows) for w in windows] == [(f"2024-03-{d:02d}", 5) for d in (8, 9, 10, 11)]
    assert windows[2].start == "2024-03-10T00:00:00-08:00" and windows[2].end == "2024-03-11T00:00:00-07:00"
    bad = tmp_path / "bad.toml"
    bad.write_text(schema.read_text().replace("America/Los_Angeles", "-08:00"))
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "day8.csv", "--schema", bad,
            "--out", tmp_path / "e", "--window", "day")
    assert r.exit_code == 2 and "key 'window_timezone': '-08:00' is not an IANA time zone name" in r.output, r.output
