"""Messy inputs a QA pass fed the data commands (2026-12-02): each was a traceback, a silent wrong
window or id, or a false message before. CSV, Criteo TSV and MovieLens."""

from __future__ import annotations

import json
import os

import numpy as np

from lowprec.data.dataset import Dataset
from helpers import run_cli as run

SCHEMA = 'label = "click"\ntime = "ts"\n[dense.price]\n[categorical.item]\nencoding = "vocab"\n'


def prepare(tmp_path, text, name="d", schema=SCHEMA, window="day", *extra):
    (tmp_path / "s.toml").write_text(schema)
    src = tmp_path / f"{name}.csv"
    src.write_bytes(text if isinstance(text, bytes) else text.encode())
    return run("data", "prepare", "--format", "csv", "--input", src, "--schema", tmp_path / "s.toml",
               "--out", tmp_path / name, "--window", window, *extra), src


def test_times_past_year_9998_are_bad_rows_and_append_never_crashes(tmp_path):
    """An ISO time whose UTC lands in year 10000 made a window labelled 10000 (and `never expires`
    dates a window ending there), on which every later append crashed."""
    r, src = prepare(tmp_path, "click,ts,price,item\n1,9999-12-31T23:00:00-05:00,1,a\n0,9999-12-30,1,b\n"
                               "1,2023-11-14T10:00:00,1,a\n0,0001-01-01T01:00:00+05:00,1,b\n", "far", SCHEMA, "year")
    assert r.exit_code == 0, r.output
    assert f"{src}:2: ts = '9999-12-31T23:00:00-05:00' is not a time in years 1-9998" in r.output
    assert f"{src}:3:" in r.output and f"{src}:5:" in r.output
    assert [w.label for w in Dataset(tmp_path / "far").meta.windows] == ["2023"]
    meta = json.loads((tmp_path / "far" / "dataset.json").read_text())
    meta["windows"][-1]["end"] = "10000-01-01T00:00:00Z"  # as a dataset prepared before the limit has it
    (tmp_path / "far" / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "later.csv").write_text("click,ts,price,item\n1,2025-01-01T00:00:00,1,a\n")
    r = run("data", "append", "--data", tmp_path / "far", "--input", tmp_path / "later.csv")
    assert r.exit_code == 2 and "'10000-01-01T00:00:00Z' in dataset.json" in r.output, r.output


def test_numbers_python_reads_but_logs_do_not_mean_are_bad_rows(tmp_path):
    r, src = prepare(tmp_path, "click,ts,price,item\n1,1700000000,1_5,a\n0,1700000001,\u0661\u0662,b\n"
                               "1_0,1700000002,1,a\n1,1_700_000_003,1,a\n0,1700000004,2.5,b\n")
    assert r.exit_code == 0, r.output
    for line in (2, 3, 4, 5):
        assert f"{src}:{line}:" in r.output, (line, r.output)
    ds = Dataset(tmp_path / "d")
    assert ds.meta.windows[0].rows == 1 and np.allclose(ds.arrays(0)[0][:, 0], 2.5)  # (transform none by default)


def test_blank_lines_of_spaces_are_ignored(tmp_path):
    r, src = prepare(tmp_path, "click,ts,price,item\n1,1700000000,1,a\n   \n\t\n0,1700000001,2,b\n")
    assert r.exit_code == 0 and "bad row:" not in r.output, r.output
    assert Dataset(tmp_path / "d").meta.windows[0].rows == 2


def test_criteo_tsv_reads_a_bom_and_blank_lines_as_csv_does(tmp_path):
    """QA 6b item 5: a UTF-8 byte-order mark made a Criteo file's first row bad (label '\\ufeff0'), and
    a line of spaces was a bad row ("1 tab-separated fields"); the CSV reader takes both. Same rows,
    same ids, with and without them; a BOM further down is still data (a bad row)."""
    from lowprec.data.criteo import N_DENSE, N_SPARSE

    rows = ["\t".join([str(k % 2), *(str(k + i) for i in range(N_DENSE)), *(f"{k * 31 + j:08x}" for j in range(N_SPARSE))])
            for k in range(4)]
    (tmp_path / "plain.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "messy.tsv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join([rows[0], rows[1], "   ", " \t ", *rows[2:]]).encode()
                                         + b"\r\n")
    for name in ("plain", "messy"):
        r = run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path / f"{name}.tsv", "--out",
                tmp_path / name, "--table-size", "50")
        assert r.exit_code == 0 and "4 rows, 0 bad rows skipped" in r.output, r.output
    for a, b in zip(Dataset(tmp_path / "plain").arrays(0), Dataset(tmp_path / "messy").arrays(0)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "inner.tsv").write_bytes(("\n".join(rows[:2]) + "\n").encode() + b"\xef\xbb\xbf" + rows[2].encode() + b"\n")
    r = run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path / "inner.tsv", "--out", tmp_path / "i",
            "--table-size", "50")
    assert r.exit_code == 0 and f"{tmp_path / 'inner.tsv'}:3:" in r.output, r.output


def test_yyyymmdd_times_read_as_unix_seconds_are_warned_about(tmp_path):
    r, _ = prepare(tmp_path, "click,ts,price,item\n1,20231114,1,a\n0,20231115,1,b\n1,1700000000,1,a\n")
    assert r.exit_code == 0, r.output
    assert "2 row(s) have a ts that reads as a YYYYMMDD date" in r.output and 'time_format = "iso"' in r.output
    meta = Dataset(tmp_path / "d").meta
    assert any("YYYYMMDD" in w for w in meta.provenance["warnings"])


def test_a_value_spelled_like_the_reserved_vocabulary_entry_does_not_block_appends(tmp_path):
    r, _ = prepare(tmp_path, "click,ts,price,item\n1,2023-11-14T10:00:00,1,<missing or unknown>\n"
                             "0,2023-11-14T11:00:00,2,b\n")
    assert r.exit_code == 0, r.output
    (tmp_path / "m2.csv").write_text("click,ts,price,item\n1,2023-11-15T10:00:00,1,<missing or unknown>\n"
                                     "0,2023-11-15T11:00:00,1,zzz\n")
    r = run("data", "append", "--data", tmp_path / "d", "--input", tmp_path / "m2.csv")
    assert r.exit_code == 0, r.output
    ds = Dataset(tmp_path / "d")
    first, second = ds.arrays(0)[1][:, 0], ds.arrays(1)[1][:, 0]
    assert first[0] == second[0] != 0 and second[1] == 0  # the same value, the same id; unseen -> 0


def test_inputs_that_are_not_files_are_named_for_what_they_are(tmp_path):
    (tmp_path / "s.toml").write_text(SCHEMA)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "la").symlink_to(tmp_path / "lb")
    (tmp_path / "lb").symlink_to(tmp_path / "la")
    for path, says in [(tmp_path / "fifo", "is not a regular file"), (tmp_path / "la", "symlink loop")]:
        r = run("data", "prepare", "--format", "csv", "--input", path, "--schema", tmp_path / "s.toml",
                "--out", tmp_path / "o")
        assert r.exit_code == 2 and says in r.output, r.output
    (tmp_path / "ok.csv").write_text("click,ts,price,item\n1,1700000000,1,a\n")
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "ok.csv", "--schema", tmp_path / "s.toml",
            "--out", tmp_path / "la")
    assert r.exit_code == 2 and "symlink loop" in r.output and "Traceback" not in r.output, r.output


def test_criteo_fields_with_nul_bytes_are_bad_rows(tmp_path):
    good = "\t".join(["1"] + ["12"] * 13 + ["ab"] * 26)
    nul_int = "\t".join(["1", "12\x00"] + ["12"] * 12 + ["ab"] * 26)
    nul_label = "\t".join(["1\x00"] + ["12"] * 13 + ["ab"] * 26)
    (tmp_path / "day_0.tsv").write_bytes(f"{good}\n{nul_int}\n{nul_label}\n{good}\n".encode())
    r = run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path / "day_0.tsv", "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert f"{tmp_path / 'day_0.tsv'}:2:" in r.output and f"{tmp_path / 'day_0.tsv'}:3:" in r.output
    assert "NUL byte" in r.output and Dataset(tmp_path / "c").meta.windows[0].rows == 2


def test_movielens_overflowing_ids_and_millisecond_times_are_bad_rows(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Action\n2,B (1995),Drama\n")
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1100000000\n"
                                     "2,1,5.0,99999999999999999999\n99999999999999999999,2,1.0,1100000100\n"
                                     "3,2,1.0,1100000300000\n4,2,3.0,1100000400\n")
    r = run("data", "prepare", "--format", "movielens", "--input", src, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    for line in (3, 4, 5):
        assert f"ratings.csv:{line}:" in r.output, (line, r.output)
    assert "milliseconds?" in r.output
    meta = Dataset(tmp_path / "o").meta
    assert sum(w.rows for w in meta.windows) == 2 and all(w.label == "2004" for w in meta.windows)


def test_an_iso_time_under_a_unix_format_suggests_iso_not_the_format_already_set(tmp_path):
    """The hint under time_format = "unix" said `numbers are read with time_format = "unix" or
    "unix_ms"`: the format already set, and the only advice when a whole ISO column stops the run."""
    for fmt in ("unix", "unix_ms"):
        schema = SCHEMA.replace('time = "ts"\n', f'time = "ts"\ntime_format = "{fmt}"\n')
        good = "1700000000" + "000" * (fmt == "unix_ms")
        r, src = prepare(tmp_path, f"click,ts,price,item\n1,2023-11-14T10:00:00Z,1,a\n0,{good},1,b\n1,nope,1,a\n",
                         fmt, schema)
        assert r.exit_code == 0, r.output
        assert (f"{src}:2: ts = '2023-11-14T10:00:00Z' is not a time in years 1-9998 as time_format '{fmt}' reads "
                f"it") in r.output and 'set time_format = "iso" or "auto")' in r.output, r.output
        assert f"time_format = \"{fmt}\" or" not in r.output and "numbers are read with" not in r.output
        assert f"{src}:4: ts = 'nope' is not a time in years 1-9998 as time_format '{fmt}' reads it (unix " in r.output


def test_the_first_day_of_year_1_is_in_years_1_9998_as_the_message_says(tmp_path):
    """0001-01-01 was refused as "not a time in years 1-9998" (the bound was 0001-01-02)."""
    r, src = prepare(tmp_path, "click,ts,price,item\n1,0001-01-01T00:00:00Z,1,a\n0,0001-01-01,1,b\n"
                               "1,0000-12-31T23:00:00-02:00,1,a\n0,2020-01-01,1,b\n", "y1", SCHEMA, "day")
    assert r.exit_code == 0, r.output
    assert [w.label for w in Dataset(tmp_path / "y1").meta.windows] == ["0001-01-01", "2020-01-01"]
    assert [line.split(": ")[1].rsplit(":", 1)[1] for line in r.output.splitlines() if "bad row:" in line] == ["4"]


def test_user_toml_and_json_files_with_a_utf8_bom_are_read(tmp_path):
    """Notepad saves a BOM: a schema with one was `not valid TOML (Invalid statement (at line 1,
    column 1))`, and so were recipes, drift configs and plan/calibration JSON files edited that way."""
    from lowprec.data.csvschema import load_schema
    from lowprec.drift.alarm import load_config
    from lowprec.fileio import read_json
    from lowprec.recipe import load_recipe

    (tmp_path / "s.toml").write_bytes(b"\xef\xbb\xbf" + SCHEMA.encode())
    assert load_schema(tmp_path / "s.toml").time == "ts"
    (tmp_path / "r.toml").write_bytes(b'\xef\xbb\xbf[windows]\ntrain = "0"\n')
    assert load_recipe(tmp_path / "r.toml")["windows"]["train"] == "0"
    (tmp_path / "d.toml").write_bytes(b"\xef\xbb\xbf[alarm]\nne_gap_limit = 0.01\n")  # (all three: one reader)
    assert load_config(tmp_path / "d.toml").alarm.ne_gap_limit == 0.01
    (tmp_path / "p.json").write_bytes(b'\xef\xbb\xbf{"format": "lowprec-plan"}')
    assert read_json(tmp_path / "p.json", "plan") == {"format": "lowprec-plan"}


def test_a_schema_description_that_is_not_text_is_refused(tmp_path):
    import pytest

    from lowprec.data.csvschema import load_schema
    from lowprec.errors import InputError

    (tmp_path / "s.toml").write_text("description = 5\n" + SCHEMA)
    with pytest.raises(InputError, match=r"s\.toml: key 'description' must be str, got 5"):
        load_schema(tmp_path / "s.toml")
    (tmp_path / "s.toml").write_text('description = "clicks"\n' + SCHEMA)
    assert load_schema(tmp_path / "s.toml").source["description"] == "clicks"


def test_movielens_reads_numbers_and_fields_as_the_csv_reader_does(tmp_path):
    """int(b"1_0") is 10: `1_0` became user 10 and `964982_900` a time; a fifth field was kept
    silently; a line of spaces was a bad row "list index out of range". Same in movies.csv."""
    src = tmp_path / "ml"
    src.mkdir()
    (src / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Comedy\n2,B (1996),Drama\n   \n"
                                    "\u0663,C (1997),Action\n1_0,D (1998),Action\n3,E (1999),Action,extra\n")
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1_0,2,5.0,964982800\n"
                                     "2,2,4,964982_900\n3,1,2.0,964983000,999\n   \n\t\n2,1,0_5,964983100\n"
                                     "\u0663,1,4.0,964983200\n 4 ,2,3.0,964983300\n")
    r = run("data", "prepare", "--format", "movielens", "--input", src, "--out", tmp_path / "o", "--show-bad-rows", -1)
    assert r.exit_code == 0, r.output
    bad = sorted(line.split(": ")[1].rsplit("/", 1)[1] for line in r.output.splitlines() if "bad row:" in line)
    assert bad == ["movies.csv:5", "movies.csv:6", "movies.csv:7", "ratings.csv:3", "ratings.csv:4",
                   "ratings.csv:5", "ratings.csv:8", "ratings.csv:9"], r.output
    assert "5 fields, the header has 4" in r.output and "'1_0' is not a plain decimal integer" in r.output
    assert "list index" not in r.output
    assert sorted(np.load(tmp_path / "o" / "ids_user.npy").tolist()) == [1, 4]


def test_user_toml_files_may_be_named_pipes(tmp_path):
    """`--recipe <(generate-recipe)` or a FIFO: a recipe, schema or drift config need not be a regular
    file (a first cut of the shared TOML reader refused anything but one as "not found")."""
    import os
    import threading

    from lowprec.recipe import load_recipe

    fifo = tmp_path / "r.toml"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text('[windows]\ntrain = "0"\n'), daemon=True)
    writer.start()
    assert load_recipe(fifo)["windows"]["train"] == "0"
    writer.join(10)


def test_a_row_dated_in_the_future_is_a_bad_row(tmp_path):
    """QA 8a item 3: one row of a day dated 2099 (a device clock ahead) made a window of its own 75
    years on, exit 0, and every later `data append` was refused as late. Rows dated more than a
    day after the run's clock are bad rows, named by FILE:LINE; the day's other rows are kept."""
    r, src = prepare(tmp_path, "click,ts,price,item\n1,2024-03-11T01:00:00Z,1,a\n0,2099-03-11T02:00:00Z,1,b\n"
                               "0,2024-03-11T03:00:00Z,1,b\n", "skew", SCHEMA, "day")
    assert r.exit_code == 0, r.output
    assert f"{src}:3: ts = '2099-03-11T02:00:00Z' is more than a day after the time it was read" in r.output, r.output
    assert [w.label for w in Dataset(tmp_path / "skew").meta.windows] == ["2024-03-11"]
    (tmp_path / "next.csv").write_text("click,ts,price,item\n1,2024-03-12T01:00:00Z,1,a\n0,2024-03-12T02:00:00Z,1,b\n")
    r = run("data", "append", "--data", tmp_path / "skew", "--input", tmp_path / "next.csv")
    assert r.exit_code == 0 and [w.label for w in Dataset(tmp_path / "skew").meta.windows] == ["2024-03-11", "2024-03-12"]
