"""Issue 15, data: out-of-range times, real line numbers of bad bytes, more located bad rows, and
vocabularies that mean the same thing on every day (--vocab-from, encoding fingerprints)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowprec.data.csvschema import TIME_FORMATS
from lowprec.data.dataset import Dataset
from helpers import run_cli as run

SCHEMA = """
label = "click"
time = "ts"

[dense.price]

[categorical.item]
encoding = "vocab"

[categorical.user]
num_embeddings = 3
"""


def write_csv(path, rows, header="click,ts,price,item,user"):
    path.write_bytes((header + "\n").encode() + b"".join(r if isinstance(r, bytes) else (r + "\n").encode()
                                                          for r in rows))
    return path


@pytest.fixture
def schema(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(SCHEMA)
    return p


def day_rows(items, ts0, n=200, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{int(rng.random() < 0.4)},{ts0 + i},{rng.random():.3f},{items[i % len(items)]},u{i % 5}"
            for i in range(n)]


def test_times_far_out_of_range_are_bad_rows_not_nat_windows(tmp_path, schema):
    rows = day_rows(["a", "b"], 1_700_000_000, 20)
    rows[2] = "1,1700000000000000,1.0,a,u1"  # milliseconds read as seconds: year ~53 million
    rows[4] = "1,-1e300,1.0,a,u1"
    csv = write_csv(tmp_path / "t.csv", rows)
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "d",
            "--window", "month", "--json")
    assert r.exit_code == 0, r.output
    assert f"{csv}:4: ts = '1700000000000000' is not a time in years 1-9998 as time_format 'auto' reads it (unix seconds, or ISO 8601)" in r.output
    assert f"{csv}:6:" in r.output
    meta = Dataset(tmp_path / "d").meta
    assert [w.label for w in meta.windows] == ["2023-11"] and sum(w.rows for w in meta.windows) == 18


def test_an_unreadable_time_gets_the_hint_its_value_suggests(tmp_path):
    rows = day_rows(["a"], 1_700_000_000, 20)
    rows[1] = "1,1700000000123,1.0,a,u1"  # milliseconds
    rows[2] = "1,2023-13-45,1.0,a,u1"  # a broken date: no hint about units
    csv = write_csv(tmp_path / "t.csv", rows)
    for fmt, says in (("auto", 'set time_format = "unix_ms"'), ("iso", 'a number: set time_format = "unix"')):
        schema = tmp_path / f"{fmt}.toml"
        schema.write_text(SCHEMA.replace('time = "ts"', f'time = "ts"\ntime_format = "{fmt}"'))
        r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / fmt)
        # (read as iso every row is bad: exit 2, nothing written)
        assert r.exit_code in (0, 2) and f"{csv}:3: ts = '1700000000123'" in r.output and says in r.output, r.output
        line4 = next(line for line in r.output.splitlines() if f"{csv}:4:" in line)
        assert "set time_format" not in line4 and line4.endswith(f"reads it ({TIME_FORMATS[fmt]})"), line4


def test_a_bad_utf8_byte_is_reported_at_its_line(tmp_path, schema):
    rows = day_rows(["a", "b"], 1_700_000_000, 400)
    rows[300] = b"0,1700000300,1.0,caf\xe9,u1\n"  # line 302 (header is line 1), far past the first read
    csv = write_csv(tmp_path / "t.csv", rows)
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "d")
    assert r.exit_code == 0, r.output
    assert f"{csv}:302: not valid UTF-8 (byte(s) b'\\xe9'" in r.output
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["provenance"]["bad_rows"]["count"] == 1


def test_more_bad_rows_can_be_located(tmp_path, schema):
    rows = day_rows(["a"], 1_700_000_000, 100)
    for i in range(0, 60, 2):
        rows[i] = f"maybe,{1_700_000_000 + i},1,a,u1"
    csv = write_csv(tmp_path / "t.csv", rows)
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "d",
            "--show-bad-rows", "25")
    assert r.exit_code == 0, r.output
    assert r.output.count("bad row: ") == 25
    examples = json.loads((tmp_path / "d" / "dataset.json").read_text())["provenance"]["bad_rows"]["examples"]
    assert len(examples) == 25 and examples[-1].startswith(f"{csv}:50:")
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "e",
            "--show-bad-rows", "-1")
    assert r.output.count("bad row: ") == 30


def test_vocab_from_keeps_ids_and_mismatched_encodings_are_refused(tmp_path, schema):
    day1 = write_csv(tmp_path / "day1.csv", day_rows(["apple", "pear", "fig"], 1_700_000_000))
    day2 = write_csv(tmp_path / "day2.csv", day_rows(["fig", "kiwi", "apple"], 1_700_100_000, seed=1))
    assert run("data", "prepare", "--format", "csv", "--input", day1, "--schema", schema,
               "--out", tmp_path / "d1").exit_code == 0
    assert run("train", "--data", tmp_path / "d1", "--windows", "0", "--out", tmp_path / "m",
               "--epochs", 1).exit_code == 0
    # day 2 on its own: "fig" takes id 1, which meant "apple" in training -> refused
    assert run("data", "prepare", "--format", "csv", "--input", day2, "--schema", schema,
               "--out", tmp_path / "alone").exit_code == 0
    r = run("eval", "--model", tmp_path / "m", "--data", tmp_path / "alone", "--windows", "0")
    assert r.exit_code == 2 and "table 'item' was trained on ids encoded as vocab:" in r.output
    assert "--vocab-from" in r.output
    # with the training vocabulary: same ids, unseen "kiwi" -> reserved row 0, counted
    r = run("data", "prepare", "--format", "csv", "--input", day2, "--schema", schema,
            "--out", tmp_path / "d2", "--vocab-from", tmp_path / "d1", "--json")
    assert r.exit_code == 0, r.output
    d1, d2 = Dataset(tmp_path / "d1"), Dataset(tmp_path / "d2")
    assert d2.meta.sparse[0].encoding == d1.meta.sparse[0].encoding
    assert d2.meta.num_embeddings == d1.meta.num_embeddings == [4, 3]
    items2 = np.asarray(d2.arrays(0)[1][:, 0])
    assert items2[:3].tolist() == [3, 0, 1]  # fig, kiwi (unseen), apple as numbered on day 1
    prov = d2.meta.provenance
    assert prov["vocab_unseen"] == {"item": 67} and prov["vocab_from"] == str(tmp_path / "d1")
    r = run("eval", "--model", tmp_path / "m", "--data", tmp_path / "d2", "--windows", "0")
    assert r.exit_code == 0, r.output
    # files written before fingerprints (no "encodings") still load and are not compared
    meta = json.loads((tmp_path / "alone" / "dataset.json").read_text())
    del meta["encodings"]
    (tmp_path / "alone" / "dataset.json").write_text(json.dumps(meta))
    assert run("eval", "--model", tmp_path / "m", "--data", tmp_path / "alone", "--windows", "0").exit_code == 0


def test_an_edited_vocabulary_is_refused_by_vocab_from(tmp_path, schema):
    """--vocab-from trusted vocab_NAME.json as it found it: an edited file numbered the new data
    differently from the training data, and eval then advised the --vocab-from just used."""
    day1 = write_csv(tmp_path / "day1.csv", day_rows(["apple", "pear", "fig"], 1_700_000_000))
    assert run("data", "prepare", "--format", "csv", "--input", day1, "--schema", schema,
               "--out", tmp_path / "d1").exit_code == 0
    vocab = tmp_path / "d1" / "vocab_item.json"
    values = json.loads(vocab.read_text())
    for edited, says in ((values[:1] + values[:0:-1], "not the one"), (values[:2] + values[1:2], "twice")):
        vocab.write_text(json.dumps(edited))
        r = run("data", "prepare", "--format", "csv", "--input", day1, "--schema", schema,
                "--out", tmp_path / "d2", "--vocab-from", tmp_path / "d1")
        assert r.exit_code == 2 and "vocab_item.json" in r.output and says in r.output, r.output
        assert not (tmp_path / "d2").exists()


def test_hash_collisions_are_counted_in_provenance(tmp_path, schema):
    csv = write_csv(tmp_path / "t.csv", day_rows(["a"], 1_700_000_000, 50))  # users u0..u4 -> 2 ids
    assert run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema,
               "--out", tmp_path / "d").exit_code == 0
    meta = Dataset(tmp_path / "d").meta
    ids = np.unique(np.asarray(Dataset(tmp_path / "d").arrays(0)[1][:, 1]))
    assert meta.provenance["hash_collisions"]["user"] == {
        "distinct_values": 5, "distinct_ids": len(ids), "colliding_values": 5 - len(ids),
        "counted_all_values": True}
    assert len(ids) <= 2 and meta.sparse[1].encoding == "hash:blake2b-64-utf8:n=3"


def test_rows_at_unix_time_zero_are_kept_and_said(tmp_path, schema):
    """Exports write 0 where the time is unknown: those rows make a 1970 window of their own, so the
    run says how many there are (stderr and provenance `warnings`); a dataset without them says nothing."""
    rows = day_rows(["a", "b"], 1_700_000_000, 40)
    rows[3] = "1,0,1.0,a,u1"
    rows[7] = "0,1970-01-01T00:00:00Z,1.0,b,u2"
    csv = write_csv(tmp_path / "t.csv", rows)
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "d",
            "--window", "month")
    assert r.exit_code == 0, r.output
    assert "warning: 2 row(s) have ts = 1970-01-01T00:00:00Z (unix time 0)" in r.output
    meta = Dataset(tmp_path / "d").meta
    assert [(w.label, w.rows) for w in meta.windows] == [("1970-01", 2), ("2023-11", 38)]
    assert any("unix time 0" in w for w in meta.provenance["warnings"]) and "in the window of that date" in r.output
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "f",
            "--window", "file")  # (QA 6a item 4: they stay in the file's window, not one of their date)
    assert r.exit_code == 0 and "unix time 0), which usually stands for a missing timestamp; they were kept, in " \
        "their file's window" in r.output, r.output
    clean = write_csv(tmp_path / "c.csv", day_rows(["a", "b"], 1_700_000_000, 40))
    r = run("data", "prepare", "--format", "csv", "--input", clean, "--schema", schema, "--out", tmp_path / "e",
            "--window", "month")
    assert r.exit_code == 0 and "unix time 0" not in r.output


def test_an_uncapped_vocabulary_past_the_limit_stops_with_advice(tmp_path, schema, monkeypatch):
    """A vocab column without num_embeddings grows in memory with every new value: past the limit
    (small here) the run stops, exit 2, naming the column and both ways out, and writes nothing; a
    cap lifts it (values past the cap share id 0)."""
    from lowprec.data import csvencode

    monkeypatch.setattr(csvencode, "UNCAPPED_VOCAB_LIMIT", 5)
    csv = write_csv(tmp_path / "t.csv", day_rows([f"i{k}" for k in range(8)], 1_700_000_000, 40))
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "d")
    assert r.exit_code == 2, r.output
    assert "[categorical.item]: the vocabulary of column 'item' passed 5 distinct values" in r.output
    assert "num_embeddings" in r.output and 'encoding = "hash"' in r.output
    assert not (tmp_path / "d").exists()
    capped = tmp_path / "capped.toml"
    capped.write_text(SCHEMA.replace('encoding = "vocab"', 'encoding = "vocab"\nnum_embeddings = 7'))
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", capped, "--out", tmp_path / "e", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1]) is not None
    assert Dataset(tmp_path / "e").meta.provenance["vocab_overflow"]["item"] > 0


_UNDER_A_DATA_LIMIT = r"""
import resource, sys
import torch  # noqa: F401  (loaded before the limit is set: it is not what is measured)
from lowprec.cli import main
from lowprec.data import csvencode
from lowprec.memory import _kib_field, headroom_bytes

csvencode.MEMORY_CHECK_EVERY = 4096  # ask often, so a small CSV reaches the limit
csvencode.MEMORY_RESERVE = 400 << 20
limit = _kib_field("/proc/self/status", "VmData") + (480 << 20)
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
left = headroom_bytes()
assert 0 < left <= limit - _kib_field("/proc/self/status", "VmData") + (1 << 20), left
main(sys.argv[1:])
"""


def test_a_vocabulary_that_outgrows_the_memory_left_stops_with_advice(tmp_path):
    """A capped vocabulary (num_embeddings 100M) grew its dict until the kernel killed the run, or,
    under a data limit, spun on failed allocations with nothing said. Here the process has a real
    data limit (RLIMIT_DATA) 480 MiB above what it holds: the run stops while the dict could still
    grow, exit 2, naming the column and the ways out, and writes nothing."""
    import subprocess
    import sys

    s = tmp_path / "s.toml"
    s.write_text('label = "click"\n[dense.price]\n[categorical.user]\nencoding = "vocab"\n'
                 'num_embeddings = 100_000_000\n')
    csv = tmp_path / "t.csv"
    with open(csv, "w") as f:
        f.write("click,price,user\n")
        f.writelines(f"{i % 2},{i % 7},user-{i:012d}\n" for i in range(1_000_000))
    r = subprocess.run([sys.executable, "-c", _UNDER_A_DATA_LIMIT, "data", "prepare", "--format", "csv",
                        "--input", str(csv), "--schema", str(s), "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "[categorical.user]: the vocabulary of column 'user' holds " in r.stderr
    assert "of memory is left to this process" in r.stderr and 'encoding = "hash"' in r.stderr
    assert not (tmp_path / "d").exists()


def test_broken_quoting_is_a_bad_row_naming_its_lines_never_swallowed_rows(tmp_path, schema):
    """Python's csv module, lenient by default, read a quote left open as one cell running to the
    next quote: the rows between vanished into it and the run said "0 bad rows". `1,"2"x` read as
    '2x'. Now each is a bad row located at its first line, naming the lines it ran over, and the rows
    after it are read."""
    ok = [f"{i % 2},{1_700_000_000 + i},1.0,a,u1,fine" for i in range(6)]
    rows = [ok[0], '1,1700000100,1.0,"b,u1,open', ok[1], ok[2], '0,1700000200,1.0,c,u1,"closed', ok[3],
            '1,1700000300,"2"x,a,u1,x', ok[4], ok[5]]
    csv = write_csv(tmp_path / "q.csv", rows, header="click,ts,price,item,user,note")
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "d",
            "--json")
    assert r.exit_code == 0, r.output
    assert f"{csv}:3: malformed quoting" in r.output and "runs over lines 3-6: is a quote left open until line 6?" in r.output
    assert f"{csv}:8: malformed quoting" in r.output  # `"2"x`
    assert json.loads(r.stdout.strip().splitlines()[-1])["bad_rows_by_reason"] == {"quoting": 2}
    assert Dataset(tmp_path / "d").meta.windows[0].rows == 4  # rows 2, 7, 9, 10: the lines 4-5 went with line 3
    # a quote open to the end of the file: one bad row over the rest of the file, not a cell holding it
    csv = write_csv(tmp_path / "eof.csv", ok[:2] + ['1,1700000400,1.0,"z,u1,x'] + ok[2:],
                    header="click,ts,price,item,user,note")
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "e")
    assert r.exit_code == 0 and f"{csv}:4: malformed quoting (unexpected end of data); the record runs over lines 4-8" in r.output


def test_line_breaks_in_quoted_cells_and_long_cells(tmp_path, schema):
    """Quoted cells may hold line breaks (legal CSV): kept in a column nobody reads, with a warning
    naming the first place; a bad row in a column the schema reads. A 200 KB cell stopped the whole
    run (the csv module's 128 KiB field limit): it is read."""
    rows = [f"{i % 2},{1_700_000_000 + i},1.0,a,u1,fine" for i in range(4)]
    rows[1] = '0,1700000001,1.0,a,u1,"two\nlines"'
    rows[2] = '1,1700000002,1.0,"it\nem",u1,x'
    rows[3] = "1,1700000003,1.0,a,u1," + "n" * 200_000
    csv = write_csv(tmp_path / "m.csv", rows, header="click,ts,price,item,user,note")
    r = run("data", "prepare", "--format", "csv", "--input", csv, "--schema", schema, "--out", tmp_path / "d",
            "--json")
    assert r.exit_code == 0, r.output
    assert f"{csv}:5: column 'item' holds a line break; the record runs over lines 5-6" in r.output
    assert f"1 record(s) run over several lines, the first at {csv}:3-4" in r.output
    meta = Dataset(tmp_path / "d").meta
    assert meta.windows[0].rows == 3 and any("run over several lines" in w for w in meta.provenance["warnings"])


def test_a_file_given_twice_is_refused_by_path_link_or_bytes(tmp_path, schema):
    """The same log named twice (a shell glob and a name, a symlink, a hard link, a copy) would count
    every row twice: prepare refuses it, CSV and Criteo TSV alike, before anything is written."""
    import os

    csv = write_csv(tmp_path / "a.csv", day_rows(["a", "b"], 1_700_000_000, 30))
    (tmp_path / "link.csv").symlink_to(csv)
    os.link(csv, tmp_path / "hard.csv")
    (tmp_path / "copy.csv").write_bytes(csv.read_bytes())
    for other, says in [(csv, "is the same file as"), (tmp_path / "link.csv", "is the same file as"),
                        (tmp_path / "hard.csv", "is the same file as"), (tmp_path / "copy.csv", "same sha256")]:
        r = run("data", "prepare", "--format", "csv", "--input", csv, other, "--schema", schema,
                "--out", tmp_path / "d", "--window", "day")
        assert r.exit_code == 2 and says in r.output and str(other) in r.output, r.output
        assert not (tmp_path / "d").exists()
    tsv = tmp_path / "day_0.tsv"
    tsv.write_text("\t".join(["1"] + ["3"] * 13 + ["0a"] * 26) + "\n")
    (tmp_path / "day_1.tsv").write_bytes(tsv.read_bytes())
    for other, says in [(tsv, "is the same file as"), (tmp_path / "day_1.tsv", "same sha256")]:
        r = run("data", "prepare", "--format", "criteo-tsv", "--input", tsv, other, "--out", tmp_path / "c")
        assert r.exit_code == 2 and says in r.output, r.output
        assert not (tmp_path / "c").exists()
