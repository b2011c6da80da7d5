"""`lowprec --nproc N data prepare|append` (csv, criteo-tsv) under torchrun: ranks read shares of the input into
rank 0's output, and the dataset is the one process's, byte for byte; errors are one process's."""

from __future__ import annotations

import gzip
import subprocess
import sys

from tests.distributed.conftest import RANK_TIMEOUT_S, REPO, WAIT_S, env, in_process, kill_rank_when, start_ranks

SCHEMA = """
label = "click"
time = "ts"
[dense.price]
[categorical.item]
encoding = "vocab"
num_embeddings = 40
[categorical.user]
num_embeddings = 50
"""


def write_log(path, n, seed=0, bad_every=0, t0=1_700_000_000):
    lines = ["click,ts,price,item,user,note"]
    for i in range(n):
        note = f'"a note\nover lines {i}"' if i % 13 == 0 else f"n{i}"  # quoted line breaks: cuts land in some
        row = f"{(i + seed) % 3 == 0:d},{t0 + i * 97},{i % 17 * 0.5},it{(i * 7 + seed) % 60},u{i % 23},{note}"
        lines.append("1,2" if bad_every and i % bad_every == 5 else row)
    path.write_text("\n".join(lines) + "\n")
    return path


def nproc_prepare(*args, part_bytes=700):
    cmd = [sys.executable, "-m", "lowprec", "--nproc", "2", "data", "prepare", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, cwd=REPO,
                          env=env(LOWPREC_CSV_PART_BYTES=str(part_bytes)))


def test_two_ranks_write_one_process_dataset_byte_for_byte(tmp_path):
    a = write_log(tmp_path / "a.csv", 300, bad_every=40)
    b = tmp_path / "b.csv.gz"
    b.write_bytes(gzip.compress(write_log(tmp_path / "b.csv", 200, seed=3).read_bytes()))
    (tmp_path / "s.toml").write_text(SCHEMA)
    args = ["--format", "csv", "--input", a, b, "--schema", tmp_path / "s.toml", "--window", "day"]
    one = in_process("data", "prepare", *args, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    two = nproc_prepare(*args, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    said = one.output.splitlines()[-1]
    assert two.stdout.splitlines()[-1] == said.replace(str(tmp_path / "one"), str(tmp_path / "two"))
    assert "bad row: " in two.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and ".parts" not in names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_too_many_bad_rows_stop_the_job_as_one_process_does(tmp_path):
    a = write_log(tmp_path / "a.csv", 400, bad_every=30)
    (tmp_path / "s.toml").write_text(SCHEMA)
    args = ["--format", "csv", "--input", a, "--schema", tmp_path / "s.toml", "--max-bad-rows", "4"]
    one = in_process("data", "prepare", *args, "--out", tmp_path / "one")
    assert one.exit_code == 2
    two = nproc_prepare(*args, "--out", tmp_path / "two", part_bytes=500)
    assert two.returncode == 2, two.stderr
    message = one.output.strip().splitlines()[-1]
    assert "5 bad rows exceed --max-bad-rows 4" in message
    assert message in two.stderr.splitlines()
    assert not (tmp_path / "two").exists() and not list(tmp_path.glob(".two*"))


def test_other_data_commands_and_formats_refuse_several_processes(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lowprec", "--nproc", "2", "data", "synth", "--out", tmp_path / "s"],
                       capture_output=True, text=True, timeout=WAIT_S, cwd=REPO, env=env())
    assert r.returncode == 2 and r.stderr.count("`data synth` does not run data-parallel") == 1, r.stderr
    r = nproc_prepare("--format", "movielens", "--input", tmp_path / "ml", "--out", tmp_path / "m")
    assert r.returncode == 2 and r.stderr.count("--format movielens is read by one process") == 1, r.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_criteo_tsv_on_two_ranks_prepares_and_appends_as_one_process(tmp_path):
    """Criteo TSV days (a plain file cut into parts, a gzip one whole) on 2 ranks: the dataset, then
    the dataset after appending a day, byte for byte as one process writes them."""
    import shutil

    from tests.data.test_parts import tsv_line

    def day(path, n, seed, gz=False):
        text = "".join(tsv_line(i * seed, "hex" if i % 41 == 7 else "good") + "\n" for i in range(n))
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
        return path

    d0, d1 = day(tmp_path / "d0.tsv", 300, 1), day(tmp_path / "d1.tsv.gz", 200, 3, gz=True)
    d2 = day(tmp_path / "d2.tsv", 250, 5)
    args = ["--format", "criteo-tsv", "--input", d0, d1, "--table-size", "1000"]
    one = in_process("data", "prepare", *args, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    two = nproc_prepare(*args, "--out", tmp_path / "two", part_bytes=9000)
    assert two.returncode == 0, two.stderr
    shutil.copytree(tmp_path / "one", tmp_path / "one-appended")
    assert in_process("data", "append", "--data", tmp_path / "one-appended", "--input", d2).exit_code == 0
    shutil.copytree(tmp_path / "two", tmp_path / "two-appended")
    cmd = [sys.executable, "-m", "lowprec", "--nproc", "2", "data", "append", "--data", tmp_path / "two-appended",
           "--input", d2]
    appended = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=WAIT_S, cwd=REPO,
                              env=env(LOWPREC_CSV_PART_BYTES="9000"))
    assert appended.returncode == 0, appended.stderr
    for a, b in (("one", "two"), ("one-appended", "two-appended")):
        names = sorted(p.name for p in (tmp_path / a).iterdir())
        assert names == sorted(p.name for p in (tmp_path / b).iterdir())
        for name in names:
            got, want = (tmp_path / b / name).read_bytes(), (tmp_path / a / name).read_bytes()
            assert got == want.replace(str(tmp_path / a).encode(), str(tmp_path / b).encode()), (b, name)


def test_two_ranks_append_a_day_as_one_process_does(tmp_path):
    """The daily job at scale: `--nproc 2 data append` reads the new day on both ranks (vocabularies
    frozen) and leaves the dataset byte for byte as a one-process append does."""
    import shutil

    (tmp_path / "s.toml").write_text(SCHEMA)
    day0, day1 = write_log(tmp_path / "d0.csv", 200), write_log(tmp_path / "d1.csv", 300, seed=5, bad_every=50,
                                                                 t0=1_700_200_000)
    made = in_process("data", "prepare", "--format", "csv", "--input", day0, "--schema", tmp_path / "s.toml",
                      "--out", tmp_path / "one", "--window", "day")
    assert made.exit_code == 0, made.output
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    one = in_process("data", "append", "--data", tmp_path / "one", "--input", day1)
    assert one.exit_code == 0, one.output
    cmd = [sys.executable, "-m", "lowprec", "--nproc", "2", "data", "append", "--data", tmp_path / "two",
           "--input", day1]
    two = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=WAIT_S, cwd=REPO,
                         env=env(LOWPREC_CSV_PART_BYTES="900"))
    assert two.returncode == 0, two.stderr
    said = one.output.splitlines()[-1]
    assert two.stdout.splitlines()[-1] == said.replace(str(tmp_path / "one"), str(tmp_path / "two"))
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        if name != "dataset.json":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    text = (tmp_path / "two" / "dataset.json").read_text()
    assert text == (tmp_path / "one" / "dataset.json").read_text().replace(str(tmp_path / "one"), str(tmp_path / "two"))
    again = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=WAIT_S, cwd=REPO, env=env())
    assert again.returncode == 2 and "this file is already in" in again.stderr


def test_a_killed_reading_rank_fails_the_job_and_leaves_nothing(tmp_path, monkeypatch):
    """Rank 1 dies while the ranks read (once part 1 of ~18 is read, the shares ~9 parts each): rank 0
    stops at the barrier with RankFailure (exit 3), within the collective timeout, and neither --out
    nor a staging directory is left."""
    import time

    src = write_log(tmp_path / "a.csv", 60_000)
    (tmp_path / "s.toml").write_text(SCHEMA)
    out = tmp_path / "out"
    args = ("data", "prepare", "--format", "csv", "--input", src, "--schema", tmp_path / "s.toml", "--out", out)
    monkeypatch.setenv("LOWPREC_CSV_PART_BYTES", "200000")
    def part_1_read() -> None:
        deadline = time.monotonic() + WAIT_S
        while not list(tmp_path.glob(".*out*/.parts/part-000001.json")) and time.monotonic() < deadline:
            time.sleep(0.02)

    procs = start_ranks([args, args], tmp_path)
    waited = kill_rank_when(procs, part_1_read)
    err = (tmp_path / "rank0.err").read_text()
    assert procs[0].returncode == 3, err[-3000:]
    assert "RankFailure" in err and "reading the shares" in err, err[-3000:]
    assert waited < 2 * float(RANK_TIMEOUT_S)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "out" in p.name], list(tmp_path.iterdir())
