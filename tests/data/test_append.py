"""`lowprec data append`: a day of logs added to a prepared dataset in place, read as its own files
were, existing windows untouched; refusals leave the dataset as it was."""

from __future__ import annotations

import fcntl
import json
import os

import numpy as np
import pytest

from helpers import run_cli as run
from lowprec.data.dataset import Dataset, window_files
from lowprec.data.windows import window_fingerprint
from lowprec.fileio import sha256_file

from .test_csv_trust import SCHEMA as CSV_SCHEMA

SCHEMA = CSV_SCHEMA.replace("num_embeddings = 3", "num_embeddings = 50") + """
[categorical.tags]
num_embeddings = 20
sep = "|"
hotness = 2
"""
DAY = 86_400
T0 = 1_700_006_400  # 2023-11-15T00:00:00Z


def day_csv(path, days, items, seed=0, n=60):
    rng = np.random.default_rng(seed)
    lines = ["click,ts,price,item,user,tags"]
    for d in days:
        lines += [f"{int(rng.random() < 0.4)},{T0 + d * DAY + 60 * i},{rng.random():.3f},{items[i % len(items)]},"
                  f"u{int(rng.integers(0, 9))},t{i % 3}|t{i % 5}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def state(root):
    """Every file's bytes in the dataset directory (what a refused append must leave alone)."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture
def prepared(tmp_path):
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA)
    src = day_csv(tmp_path / "first.csv", [0, 1, 2], ["a", "b", "c"])
    r = run("data", "prepare", "--format", "csv", "--input", src, "--schema", schema, "--out", tmp_path / "d",
            "--window", "day")
    assert r.exit_code == 0, r.output
    return tmp_path / "d"


def test_a_csv_day_is_appended_as_the_dataset_reads_it(prepared, tmp_path):
    before = Dataset(prepared)
    prints = [window_fingerprint(before, w) for w in range(3)]
    old_files = {w: {k: sha256_file(p) for k, p in window_files(prepared, w).items()} for w in range(3)}
    new = day_csv(tmp_path / "day3.csv", [3, 4], ["b", "zz"], seed=1)  # "zz": never in the vocabulary
    r = run("data", "append", "--data", prepared, "--input", new, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["added"] == [3, 4] and out["added_labels"] == ["2023-11-18", "2023-11-19"] and out["windows"] == 5
    after = Dataset(prepared)
    assert [w.label for w in after.meta.windows] == ["2023-11-15", "2023-11-16", "2023-11-17", "2023-11-18",
                                                     "2023-11-19"]
    assert after.meta.sparse == before.meta.sparse  # same table sizes and encodings: models still score it
    assert [window_fingerprint(after, w) for w in range(3)] == prints  # drift history and training records match
    assert all(sha256_file(p) == old_files[w][k] for w in range(3) for k, p in window_files(prepared, w).items())
    # the new window equals the same rows prepared with the dataset as --vocab-from
    schema = tmp_path / "s.toml"
    r = run("data", "prepare", "--format", "csv", "--input", new, "--schema", schema, "--out", tmp_path / "alone",
            "--window", "day", "--vocab-from", prepared)
    assert r.exit_code == 0, r.output
    alone = Dataset(tmp_path / "alone")
    for w in (0, 1):
        for got, want in zip(after.arrays(3 + w), alone.arrays(w)):
            np.testing.assert_array_equal(got, want)
    appended = after.meta.provenance["appends"]
    assert len(appended) == 1 and appended[0]["windows"] == [3, 4]
    assert appended[0]["vocab_unseen"] == {"item": 60} and appended[0]["inputs"][0]["rows"] == 120
    # every file is listed in the marker: `data prepare --out` may still replace the dataset later
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "first.csv", "--schema", schema,
            "--out", prepared, "--window", "day")
    assert r.exit_code == 0, r.output


def test_refusals_leave_the_dataset_as_it_was(prepared, tmp_path):
    day3 = day_csv(tmp_path / "day3.csv", [3], ["a"], seed=2)
    assert run("data", "append", "--data", prepared, "--input", day3).exit_code == 0
    kept = state(prepared)
    day4 = day_csv(tmp_path / "day4.csv", [4], ["a"], seed=5)
    (tmp_path / "day4-copy.csv").write_bytes(day4.read_bytes())
    for inputs, says in [
        ([day3], "this file is already in"),  # a re-run of the daily job
        ([tmp_path / "copy.csv"], "this file is already in"),  # the same bytes under another name
        ([day_csv(tmp_path / "late.csv", [2], ["a"], seed=3)], "which starts before"),  # a day already prepared
        # the last window's own period (QA 8a item 2: local-midnight files straddle UTC days): said so
        ([day_csv(tmp_path / "mixed.csv", [3, 4], ["a"], seed=4)], "'2023-11-18', the period of"),
        ([tmp_path / "missing.csv"], "not found"),
        ([tmp_path / "day4.csv", tmp_path / "day4.csv"], "is the same file as"),  # new files among themselves
        ([tmp_path / "day4.csv", tmp_path / "day4-copy.csv"], "same sha256"),
    ]:
        if inputs[0].name == "copy.csv":
            inputs[0].write_bytes(day3.read_bytes())
        r = run("data", "append", "--data", prepared, "--input", *inputs)
        assert r.exit_code == 2 and says in r.output, (inputs, r.output)
        assert state(prepared) == kept
    bad = tmp_path / "bad.csv"
    bad.write_text("click,ts,price,item,user,tags\n" + "".join(f"x,{T0 + 9 * DAY},1,a,u,t\n" for _ in range(5)))
    r = run("data", "append", "--data", prepared, "--input", bad, "--max-bad-rows", 2)
    assert r.exit_code == 2 and "exceed --max-bad-rows 2" in r.output
    assert state(prepared) == kept
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no staging directory left behind


def test_generated_and_movielens_datasets_are_refused(tmp_path):
    r = run("data", "synth", "--out", tmp_path / "s", "--windows", 1, "--rows-per-window", 50)
    assert r.exit_code == 0, r.output
    r = run("data", "append", "--data", tmp_path / "s", "--input", day_csv(tmp_path / "x.csv", [0], ["a"]))
    assert r.exit_code == 2 and "cannot be appended to" in r.output and "'synth" in r.output


def test_a_dataset_whose_provenance_names_another_format_is_refused_naming_dataset_json(prepared, tmp_path):
    """A CSV dataset whose dataset.json was edited to claim criteo-tsv: the error names dataset.json,
    not the Criteo reader's "need 26 table sizes"."""
    meta = json.loads((prepared / "dataset.json").read_text())
    meta["provenance"]["source"] = "criteo-tsv"
    (prepared / "dataset.json").write_text(json.dumps(meta))
    kept = state(prepared)
    (tmp_path / "day.tsv").write_text("0" + "\t" * 39 + "\n")
    r = run("data", "append", "--data", prepared, "--input", tmp_path / "day.tsv")
    assert r.exit_code == 2 and "dataset.json: its provenance says the data was read from criteo-tsv" in r.output
    assert "was dataset.json edited?" in r.output and state(prepared) == kept


def test_an_append_killed_before_its_commit_changes_nothing_and_the_next_one_succeeds(prepared, tmp_path,
                                                                                       monkeypatch):
    """The files are renamed in first and dataset.json replaced last: a run that dies in between leaves
    files no window names; the dataset reads as before and the next append writes over them."""
    from lowprec.data import append

    kept = Dataset(prepared).meta
    real = append.atomic_write_text

    def die_at_the_commit(path, text, *a, **k):
        if path.name == "dataset.json":
            raise KeyboardInterrupt
        return real(path, text, *a, **k)

    monkeypatch.setattr(append, "atomic_write_text", die_at_the_commit)
    day3 = day_csv(tmp_path / "day3.csv", [3], ["a"], seed=5)
    with pytest.raises(KeyboardInterrupt):
        append.append_windows(prepared, [day3])
    assert Dataset(prepared).meta == kept and (prepared / "day_3_labels.npy").exists()
    monkeypatch.undo()
    other = day_csv(tmp_path / "day4.csv", [4], ["b"], seed=6, n=10)  # fewer rows than the orphaned files
    r = run("data", "append", "--data", prepared, "--input", other)
    assert r.exit_code == 0, r.output
    assert Dataset(prepared).arrays(3)[2].shape == (10,)


def test_one_append_at_a_time(prepared, tmp_path):
    fd = os.open(prepared, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run("data", "append", "--data", prepared, "--input", day_csv(tmp_path / "d.csv", [3], ["a"]))
        assert r.exit_code == 2 and "another `lowprec data append`" in r.output
    finally:
        os.close(fd)


def test_criteo_files_append_with_the_dataset_table_sizes(tmp_path):
    from lowprec.data.criteo import N_DENSE, N_SPARSE

    good = ["\t".join([str(k % 2), *(str(k + i) for i in range(N_DENSE)),
                       *(f"{k * 977 + j:08x}" for j in range(N_SPARSE))]) for k in range(3)]
    for name, lines in (("day_0.tsv", good), ("day_1.tsv", good[::-1] * 3)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    r = run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path / "day_0.tsv", "--out", tmp_path / "c",
            "--table-size", "77")
    assert r.exit_code == 0, r.output
    r = run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "day_1.tsv", "--json")
    assert r.exit_code == 0, r.output
    ds = Dataset(tmp_path / "c")
    assert [w.label for w in ds.meta.windows] == ["day_0.tsv", "day_1.tsv"] and ds.meta.windows[1].rows == 9
    assert ds.meta.num_embeddings == [77] * 26
    np.testing.assert_array_equal(ds.arrays(1)[1][:3], ds.arrays(0)[1][::-1])  # same hashing of the same ids


def test_the_same_day_under_other_bytes_is_refused(tmp_path):
    """QA 6b item 2: the duplicate check compared raw files' sha256, so a day appended again gzipped,
    unzipped or with CRLF endings went in (the same rows two and three times, exit 0). A new window
    whose rows are exactly an existing window's is refused now; a different day of as many rows is not."""
    import gzip

    from lowprec.data.criteo import N_DENSE, N_SPARSE

    def day(seed, n=120):
        rng = np.random.default_rng(seed)
        return ["\t".join([str(int(rng.integers(0, 2))), *(str(int(rng.integers(0, 99))) for _ in range(N_DENSE)),
                           *(f"{int(rng.integers(0, 1 << 30)):08x}" for _ in range(N_SPARSE))]) for _ in range(n)]

    (tmp_path / "day_0.tsv").write_text("\n".join(day(0)) + "\n")
    assert run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path / "day_0.tsv", "--out",
               tmp_path / "c", "--table-size", "77").exit_code == 0
    (tmp_path / "day_1.tsv").write_text("\n".join(day(1)) + "\n")
    assert run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "day_1.tsv").exit_code == 0
    kept = state(tmp_path / "c")
    (tmp_path / "day_1.tsv.gz").write_bytes(gzip.compress((tmp_path / "day_1.tsv").read_bytes()))
    (tmp_path / "day_0-crlf.tsv").write_bytes("\r\n".join(day(0)).encode() + b"\r\n")
    for again, was in (("day_1.tsv.gz", "day_1.tsv"), ("day_0-crlf.tsv", "day_0.tsv")):
        r = run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / again)
        assert r.exit_code == 2 and f"holds the same 120 rows as {tmp_path / was}, already in" in r.output, r.output
        assert state(tmp_path / "c") == kept
    # a dataset whose inputs carry no rows digest (prepared before lowprec 0.2.0): by its windows' files
    meta = json.loads((tmp_path / "c" / "dataset.json").read_text())
    for run_ in [meta["provenance"], *meta["provenance"].get("appends", [])]:
        for i in run_["inputs"]:
            i.pop("rows_digest")
    (tmp_path / "c" / "dataset.json").write_text(json.dumps(meta))
    kept = state(tmp_path / "c")
    for again, was in (("day_1.tsv.gz", "1 ('day_1.tsv')"), ("day_0-crlf.tsv", "0 ('day_0.tsv')")):
        r = run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / again)
        assert r.exit_code == 2 and f"holds exactly the rows of {tmp_path / 'c'}'s window {was}" in r.output, r.output
        assert state(tmp_path / "c") == kept
    (tmp_path / "day_2.tsv").write_text("\n".join(day(2)) + "\n")  # as many rows, other data: appended
    assert run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "day_2.tsv").exit_code == 0
    # a few rows may repeat by chance: said, not refused
    (tmp_path / "day_3.tsv").write_text("\n".join(day(3, n=5)) + "\n")
    (tmp_path / "day_4.tsv").write_text("\r\n".join(day(3, n=5)) + "\r\n")
    assert run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "day_3.tsv").exit_code == 0
    r = run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "day_4.tsv")
    assert r.exit_code == 0 and "holds the same 5 rows as" in r.output and "count twice" in r.output, r.output
    assert r.output.count("count twice") == 1  # (QA 9a item 7: said once, and recorded)
    meta = json.loads((tmp_path / "c" / "dataset.json").read_text())
    assert any("count twice" in w for w in meta["provenance"]["appends"][-1]["warnings"])
    (tmp_path / "day_5.tsv").write_text("\n".join(day(5, n=5)) + "\n")  # (with digests: said by them)
    (tmp_path / "day_6.tsv").write_text("\r\n".join(day(5, n=5)) + "\r\n")
    assert run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "day_5.tsv").exit_code == 0
    r = run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "day_6.tsv")
    assert r.exit_code == 0 and "holds the same 5 rows as" in r.output and "count twice" in r.output, r.output


def test_the_same_rows_twice_in_one_run_are_refused(tmp_path):
    """QA 8a item 1: one run given the same day under other bytes (day.csv and day.csv.gz) counted its
    rows twice, silently: two identical windows under --window file, every row twice in one window
    under --window day. The inputs' rows digests are compared within the run as across runs; a rows:N
    dataset (windows never align with files) also sees a day appended again re-encoded."""
    import gzip

    header = "t,y,x,c\n"
    body = "".join(f"2024-03-10T{i % 24:02d}:{i % 60:02d}:00Z,{i % 7 == 0:d},{i},c{i}\n" for i in range(200))
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\ntime = "t"\n[dense.x]\n[categorical.c]\nnum_embeddings = 100\n')
    (tmp_path / "day.csv").write_text(header + body)
    (tmp_path / "day.csv.gz").write_bytes(gzip.compress((header + body).encode()))
    (tmp_path / "crlf.csv").write_bytes((header + body).replace("\n", "\r\n").encode())
    for window in ("file", "day", "rows:64"):
        r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "day.csv", tmp_path / "day.csv.gz",
                "--schema", schema, "--out", tmp_path / f"d-{window[:3]}", "--window", window)
        assert r.exit_code == 2 and "day.csv.gz holds the same 200 rows as" in r.output, r.output
        assert not (tmp_path / f"d-{window[:3]}").exists()
    assert run("data", "prepare", "--format", "csv", "--input", tmp_path / "day.csv", "--schema", schema,
               "--out", tmp_path / "r", "--window", "rows:64").exit_code == 0
    kept = state(tmp_path / "r")
    r = run("data", "append", "--data", tmp_path / "r", "--input", tmp_path / "crlf.csv")
    assert r.exit_code == 2 and f"holds the same 200 rows as {tmp_path / 'day.csv'}, already in" in r.output, r.output
    assert state(tmp_path / "r") == kept
    few = "".join(body.splitlines(keepends=True)[:5])  # a few rows may repeat by chance: said, not refused
    (tmp_path / "few.csv").write_text(header + few)
    (tmp_path / "few.csv.gz").write_bytes(gzip.compress((header + few).encode()))
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "few.csv", tmp_path / "few.csv.gz",
            "--schema", schema, "--out", tmp_path / "few")
    assert r.exit_code == 0 and "few.csv.gz holds the same 5 rows as" in r.output, r.output
    tsv = "".join(f"{i % 2}" + "\t1" * 13 + "\tab" * 26 + "\n" for i in range(150))  # criteo-tsv alike
    (tmp_path / "a.tsv").write_text(tsv)
    (tmp_path / "a.tsv.gz").write_bytes(gzip.compress(tsv.encode()))
    r = run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path / "a.tsv", tmp_path / "a.tsv.gz",
            "--out", tmp_path / "c", "--table-size", "77")
    assert r.exit_code == 2 and "a.tsv.gz holds the same 150 rows as" in r.output, r.output


def test_a_rerun_is_refused_before_its_file_is_read(tmp_path):
    """QA 8a item 5: a rerun of the daily job parsed the whole day and printed its bad rows, then
    refused the file by its sha256, which is known before reading."""
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 100\n')
    (tmp_path / "a.csv").write_text("y,x,c\n1,1,a\n0,2,b\n")
    (tmp_path / "b.csv").write_text("y,x,c\n1,nan,a\n0,3,b\n1,4,c\n")
    assert run("data", "prepare", "--format", "csv", "--input", tmp_path / "a.csv", "--schema", schema,
               "--out", tmp_path / "d").exit_code == 0
    r = run("data", "append", "--data", tmp_path / "d", "--input", tmp_path / "b.csv")
    assert r.exit_code == 0 and "bad row: " in r.output, r.output
    r = run("data", "append", "--data", tmp_path / "d", "--input", tmp_path / "b.csv")
    assert r.exit_code == 2 and "b.csv: this file is already in" in r.output and "bad row" not in r.output, r.output


def test_rows_windows_go_on_numbering_the_dataset_rows(prepared, tmp_path):
    """`--window rows:N`: appended windows continue the dataset's row numbering, labels included."""
    schema = tmp_path / "s.toml"
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "first.csv", "--schema", schema,
            "--out", tmp_path / "r", "--window", "rows:100")
    assert r.exit_code == 0, r.output
    r = run("data", "append", "--data", tmp_path / "r", "--input", day_csv(tmp_path / "more.csv", [3], ["a"], n=150))
    assert r.exit_code == 0, r.output
    got = [(w.label, w.start, w.end) for w in Dataset(tmp_path / "r").meta.windows]
    assert got == [("rows 0-99", "0", "100"), ("rows 100-179", "100", "180"),
                   ("rows 180-279", "180", "280"), ("rows 280-329", "280", "330")]


def test_an_append_that_commits_while_another_waits_is_kept(prepared, tmp_path, monkeypatch):
    """The dataset's windows are read under the lock: read before it, an append that committed in
    between was overwritten (its files renamed over, its windows left out of dataset.json)."""
    import contextlib

    from lowprec.data import append

    real = append._exclusive
    day3, day4 = day_csv(tmp_path / "d3.csv", [3], ["a"], seed=7), day_csv(tmp_path / "d4.csv", [4], ["b"], seed=8)

    @contextlib.contextmanager
    def another_commits_first(root):
        monkeypatch.setattr(append, "_exclusive", real)
        append.append_windows(prepared, [day3])
        with real(root):
            yield

    monkeypatch.setattr(append, "_exclusive", another_commits_first)
    append.append_windows(prepared, [day4])
    assert [w.label for w in Dataset(prepared).meta.windows][3:] == ["2023-11-18", "2023-11-19"]


def test_a_file_name_used_again_is_warned(tmp_path):
    """`--window file` labels a window by its file: a daily export under one name gave every
    appended window the same label, which `label:` specs then match several times."""
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = day_csv(tmp_path / "a" / "today.csv", [0], ["a"], seed=1)
    second = day_csv(tmp_path / "b" / "today.csv", [1], ["b"], seed=2)
    assert run("data", "prepare", "--format", "csv", "--input", first, "--schema", schema,
               "--out", tmp_path / "d").exit_code == 0
    r = run("data", "append", "--data", tmp_path / "d", "--input", second)
    assert r.exit_code == 0 and "new window label(s) ['today.csv'] are already labels of earlier windows" in r.output
    assert "already labels" in Dataset(tmp_path / "d").meta.provenance["appends"][0]["warnings"][0]


def test_append_from_inside_the_dataset_stages_beside_it(prepared, tmp_path, monkeypatch):
    """`--data .` staged the new windows inside the dataset (the parent of "." is "."), where a killed
    run would leave a directory that is not the dataset's."""
    from lowprec.data import append

    seen = []
    real = append.temporary_sibling

    def record(root):
        seen.append(root)
        return real(root)

    monkeypatch.setattr(append, "temporary_sibling", record)
    monkeypatch.chdir(prepared)
    r = run("data", "append", "--data", ".", "--input", day_csv(tmp_path / "d3.csv", [3], ["a"]))
    assert r.exit_code == 0, r.output
    assert seen == [prepared] and len(Dataset(prepared).meta.windows) == 4


def _warned(output):
    return [line for line in output.splitlines() if line.startswith("warning:")]


def test_append_warnings_name_the_windows_as_the_dataset_numbers_and_labels_them(tmp_path):
    """The new windows are prepared in a staging dataset numbered from 0: its warnings named the
    staging index and (rows:N) label, on stderr and in provenance, pointing at an earlier, healthy
    window; and every rows:N append warned that its staging labels `rows 0-...` repeat earlier ones."""
    (tmp_path / "s.toml").write_text('label = "clicked"\ntime = "ts"\n[dense.price]\n[categorical.user]\n'
                                     'encoding = "vocab"\n')
    day = "ts,clicked,price,user\n{0},1,{2},u1\n{1},0,2.5,u2\n"
    (tmp_path / "day1.csv").write_text(day.format(1700000000, 1700000060, 1.5))
    (tmp_path / "day2.csv").write_text(day.format(1700086400, 1700086460, 3.5))
    (tmp_path / "day3.csv").write_text("ts,clicked,price,user\n")
    (tmp_path / "pos.csv").write_text("ts,clicked,price,user\n1700172800,1,1,u1\n")
    csv = ("--format", "csv", "--schema", tmp_path / "s.toml")
    assert run("data", "prepare", *csv, "--input", tmp_path / "day1.csv", "--out", tmp_path / "ds").exit_code == 0
    r = run("data", "append", "--data", tmp_path / "ds", "--input", tmp_path / "day2.csv", tmp_path / "day3.csv")
    assert r.exit_code == 0, r.output
    assert len(_warned(r.output)) == 1 and _warned(r.output)[0].startswith("warning: window 2 ('day3.csv') holds no rows")
    recorded = Dataset(tmp_path / "ds").meta.provenance["appends"][-1]["warnings"]
    assert len(recorded) == 1 and recorded[0].startswith("window 2 ('day3.csv') holds no rows")

    r = run("data", "prepare", *csv, "--input", tmp_path / "day1.csv", "--out", tmp_path / "dr", "--window", "rows:1")
    assert r.exit_code == 0 and [w.split(" (1 row")[0] for w in _warned(r.output)] == [
        "warning: window 0 ('rows 0-0') holds only positives", "warning: window 1 ('rows 1-1') holds only negatives"]
    r = run("data", "append", "--data", tmp_path / "dr", "--input", tmp_path / "pos.csv")
    assert r.exit_code == 0 and [w.split(" (1 row")[0] for w in _warned(r.output)] == [
        "warning: window 2 ('rows 2-2') holds only positives"], r.output  # and no "labels already used"
    meta = Dataset(tmp_path / "dr").meta
    assert [w.label for w in meta.windows] == ["rows 0-0", "rows 1-1", "rows 2-2"]
    assert meta.provenance["appends"][-1]["warnings"] == [_warned(r.output)[0][len("warning: "):]]


def test_a_failed_prepare_says_nothing_about_windows_it_never_wrote(tmp_path):
    """`window 0 ('day3.csv') holds no rows ... commands skip it` was printed just before `no valid
    rows` refused the run: a warning about a dataset that was never written."""
    (tmp_path / "s.toml").write_text('label = "clicked"\n[dense.price]\n[categorical.user]\nnum_embeddings = 9\n')
    (tmp_path / "empty.csv").write_text("ts,clicked,price,user\n")
    r = run("data", "prepare", "--format", "csv", "--schema", tmp_path / "s.toml", "--input", tmp_path / "empty.csv",
            "--out", tmp_path / "out")
    assert r.exit_code == 2 and "no valid rows" in r.output and not _warned(r.output), r.output


def test_a_file_without_rows_appends_an_empty_window_or_says_there_is_nothing_to_append(prepared, tmp_path):
    """A quiet day's header-only file was "no valid rows" (exit 2) for `data append`, although `data
    prepare --window file` writes the same file as an empty window with a warning: the daily job broke
    on a quiet day. Now under one window per file (csv `--window file`, criteo-tsv by file) it is an
    empty window with prepare's warning, and a second quiet day's file (the same bytes) is one too; a
    dataset windowed by time or row count says what the file holds and that nothing is appended."""
    schema = tmp_path / "s.toml"
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "first.csv", "--schema", schema,
            "--out", tmp_path / "f", "--window", "file")
    assert r.exit_code == 0, r.output
    header = (tmp_path / "first.csv").read_text().splitlines()[0] + "\n"
    for name in ("quiet1.csv", "quiet2.csv"):
        (tmp_path / name).write_text(header)
        r = run("data", "append", "--data", tmp_path / "f", "--input", tmp_path / name)
        assert r.exit_code == 0 and _warned(r.output)[0].startswith(f"warning: window {name[5]} ('{name}') holds no rows"), r.output
    assert [(w.label, w.rows) for w in Dataset(tmp_path / "f").meta.windows] == \
        [("first.csv", 180), ("quiet1.csv", 0), ("quiet2.csv", 0)]
    before = state(tmp_path / "f")
    r = run("data", "append", "--data", tmp_path / "f", "--input", tmp_path / "quiet1.csv")  # the same run again
    assert r.exit_code == 2 and "already in" in r.output and "add its empty window twice" in r.output, r.output
    assert state(tmp_path / "f") == before
    before = state(prepared)  # --window day: no row, no window
    r = run("data", "append", "--data", prepared, "--input", tmp_path / "quiet1.csv")
    assert r.exit_code == 2 and f"no valid rows in {tmp_path / 'quiet1.csv'} (a header line only): nothing to " \
        f"append. {prepared} makes its windows from the rows' times (--window day)" in r.output, r.output
    assert state(prepared) == before

    from lowprec.data.criteo import N_DENSE, N_SPARSE

    line = "\t".join(["1", *("3" for _ in range(N_DENSE)), *(f"{j:08x}" for j in range(N_SPARSE))]) + "\n"
    (tmp_path / "c0.tsv").write_text(line * 3)
    (tmp_path / "c1.tsv").write_text("")
    for out, extra in (("c", ()), ("cr", ("--rows-per-window", "2"))):
        r = run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path / "c0.tsv", "--out", tmp_path / out,
                "--table-size", "77", *extra)
        assert r.exit_code == 0, r.output
    r = run("data", "append", "--data", tmp_path / "c", "--input", tmp_path / "c1.tsv")
    assert r.exit_code == 0 and _warned(r.output)[0].startswith("warning: window 1 ('c1.tsv') holds no rows"), r.output
    assert [w.rows for w in Dataset(tmp_path / "c").meta.windows] == [3, 0]
    r = run("data", "append", "--data", tmp_path / "cr", "--input", tmp_path / "c1.tsv")
    assert r.exit_code == 2 and "no valid rows in" in r.output and "c1.tsv (empty): nothing to append" in r.output \
        and "by row count (every 2 rows)" in r.output, r.output


def test_an_empty_csv_is_an_empty_window_as_a_header_only_one(tmp_path):
    """QA 8a item 4: a 0-byte CSV (a quiet day's empty export) was refused (`empty file (expected a
    header row)`), though README and errors.md say an empty or header-only file is an empty window
    under --window file (criteo-tsv took it)."""
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\ntime = "t"\n[dense.x]\n[categorical.c]\nnum_embeddings = 100\n')
    (tmp_path / "a.csv").write_text("t,y,x,c\n" + "".join(f"2024-03-10T01:00:{i:02d}Z,{i % 2},{i},c{i}\n" for i in range(40)))
    (tmp_path / "quiet.csv").write_bytes(b"")
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "a.csv", tmp_path / "quiet.csv",
            "--schema", schema, "--out", tmp_path / "d")
    assert r.exit_code == 0 and "holds no rows" in r.output, r.output
    assert [w.rows for w in Dataset(tmp_path / "d").meta.windows] == [40, 0]
    (tmp_path / "quiet2.csv").write_bytes(b"")
    r = run("data", "append", "--data", tmp_path / "d", "--input", tmp_path / "quiet2.csv")
    assert r.exit_code == 0 and [w.rows for w in Dataset(tmp_path / "d").meta.windows] == [40, 0, 0], r.output
    assert run("data", "prepare", "--format", "csv", "--input", tmp_path / "a.csv", "--schema", schema,
               "--out", tmp_path / "t", "--window", "day").exit_code == 0
    r = run("data", "append", "--data", tmp_path / "t", "--input", tmp_path / "quiet2.csv")
    assert r.exit_code == 2 and "quiet2.csv (empty)" in r.output and "nothing to append" in r.output, r.output
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "quiet.csv", "--schema", schema,
            "--out", tmp_path / "none")
    assert r.exit_code == 2 and "no valid rows in" in r.output and "quiet.csv (empty)" in r.output, r.output


def test_two_quiet_days_in_one_run_are_not_copies(tmp_path):
    """QA 9a item 4: two header-only (or empty) files in one run have the same bytes, and were refused
    as 'a copy given twice would count its rows twice', though they hold no rows."""
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 100\n')
    (tmp_path / "a.csv").write_text("y,x,c\n" + "".join(f"{i % 2},{i},c{i}\n" for i in range(30)))
    for name, text in (("q1.csv", "y,x,c\n"), ("q2.csv", "y,x,c\n"), ("z1.csv", ""), ("z2.csv", "")):
        (tmp_path / name).write_text(text)
    r = run("data", "prepare", "--format", "csv", "--input", *(tmp_path / n for n in ("a.csv", "q1.csv", "q2.csv")),
            "--schema", schema, "--out", tmp_path / "d")
    assert r.exit_code == 0, r.output
    r = run("data", "append", "--data", tmp_path / "d", "--input", tmp_path / "z1.csv", tmp_path / "z2.csv")
    assert r.exit_code == 0, r.output
    assert [w.rows for w in Dataset(tmp_path / "d").meta.windows] == [30, 0, 0, 0, 0]
    (tmp_path / "b.csv").write_bytes((tmp_path / "a.csv").read_bytes())  # rows twice: still refused
    r = run("data", "prepare", "--format", "csv", "--input", tmp_path / "a.csv", tmp_path / "b.csv",
            "--schema", schema, "--out", tmp_path / "e")
    assert r.exit_code == 2 and "holds the same bytes as" in r.output, r.output
