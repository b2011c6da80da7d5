"""Issue 15, lost data: outputs never replace what is not theirs; readers recover a half-done swap.

Every command's --out/--report is refused (exit 2, nothing touched) unless it is absent, empty or
a lowprec output of the same kind (fileio.claim_output); window SPECs are checked against the
dataset before anything is allocated; CALIB.json and its row counts commit as one.
"""

import json
import os
import resource
import subprocess
import sys

import pytest

from helpers import REPO, make_tiny_dataset, run_cli as run
from lowprec.fileio import MARKER, atomic_dir, resolve_output


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust-out")
    data = make_tiny_dataset(root / "data", windows=3, rows=600)
    r = run("train", "--data", data, "--windows", "0", "--out", root / "model", "--epochs", 1)
    assert r.exit_code == 0, r.output
    return root


def user_dir(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    return path


def untouched(path):
    return sorted(p.name for p in path.iterdir()) == ["notes.txt"] and (path / "notes.txt").read_text() == "mine"


def test_convert_into_a_users_directory_is_refused(base, tmp_path):
    target = user_dir(tmp_path / "mine")
    r = run("convert", "--model", base / "model", "--precision", "int8", "--out", target)
    assert r.exit_code == 2 and "not a lowprec artifact" in r.output and untouched(target)


def test_convert_onto_its_own_model_is_refused(base):
    before = sorted(p.name for p in (base / "model").iterdir())
    r = run("convert", "--model", base / "model", "--precision", "int8", "--out", base / "model")
    assert r.exit_code == 2 and "would replace the input" in r.output
    assert sorted(p.name for p in (base / "model").iterdir()) == before


def test_train_onto_a_dataset_is_refused(base, tmp_path):
    data = make_tiny_dataset(tmp_path / "other", windows=1, rows=100)
    before = sorted(p.name for p in data.iterdir())
    r = run("train", "--data", base / "data", "--windows", "0", "--out", data, "--epochs", 1)
    assert r.exit_code == 2 and "not a lowprec model (it is a lowprec dataset)" in r.output
    assert sorted(p.name for p in data.iterdir()) == before


def test_each_writer_refuses_a_users_directory(base, tmp_path):
    cases = {
        "synth": ["data", "synth", "--out", "{t}", "--windows", "1", "--rows-per-window", "10"],
        "train": ["train", "--data", base / "data", "--windows", "0", "--out", "{t}"],
        "import": ["import", "--format", "torchrec", "--state-dict", base / "model" / "model.safetensors",
                   "--data", base / "data", "--out", "{t}"],
        "demo": ["demo", "--out", "{t}"],
        "search-report": ["search", "--model", base / "model", "--data", base / "data", "--calib-windows", "1",
                          "--eval-windows", "2", "--out", tmp_path / "plan.json", "--report", "{t}"],
        "drift-report": ["drift", "--reference", base / "model", "--candidate", base / "model", "--data",
                         base / "data", "--windows", "2", "--db", tmp_path / "d.sqlite", "--report", "{t}"],
    }
    for name, args in cases.items():
        target = user_dir(tmp_path / name)
        r = run(*[str(a).replace("{t}", str(target)) for a in args])
        assert r.exit_code == 2 and "refusing to replace it" in r.output, (name, r.output[-300:])
        assert untouched(target), name
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "d.sqlite").exists()


def test_calibrate_and_search_refuse_to_overwrite_a_users_file(base, tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}\n')
    r = run("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1", "--out", mine)
    assert r.exit_code == 2 and "not a lowprec calibration file" in r.output
    r = run("search", "--model", base / "model", "--data", base / "data", "--calib-windows", "1",
            "--eval-windows", "2", "--out", mine)
    assert r.exit_code == 2 and "not a lowprec plan file" in r.output
    assert mine.read_text() == '{"mine": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["notes.json"]


def test_the_same_kind_is_replaced_and_empty_directories_are_used(base, tmp_path):
    (tmp_path / "art").mkdir()
    for _ in range(2):
        r = run("convert", "--model", base / "model", "--precision", "int8", "--out", tmp_path / "art")
        assert r.exit_code == 0, r.output
    assert (tmp_path / "art" / MARKER).read_text().splitlines()[0] == "artifact"


def test_an_output_without_its_list_of_entries_is_not_replaced(base, tmp_path):
    """A dataset assembled by hand (TorchRec's day files beside a dataset.json, the user's notes and
    raw logs with them) or an older output has no marker listing what lowprec wrote: replacing it
    would delete whatever else it holds, so it is refused whole, for every kind written whole."""
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "dataset.json").write_text('{"format": "lowprec-dataset"}')
    (hand / "NOTES.md").write_text("mine")
    (hand / "raw").mkdir()
    before = sorted(p.name for p in hand.iterdir())
    r = run("data", "synth", "--out", hand, "--windows", "2", "--rows-per-window", "50")
    assert r.exit_code == 2 and "no list of the files lowprec wrote" in r.output, r.output
    assert sorted(p.name for p in hand.iterdir()) == before
    legacy = tmp_path / "legacy"  # a model written before markers: recognised by its config.json
    r = run("train", "--data", base / "data", "--windows", "0", "--out", legacy, "--epochs", 1)
    assert r.exit_code == 0, r.output
    (legacy / MARKER).unlink()
    r = run("train", "--data", base / "data", "--windows", "0", "--out", legacy, "--epochs", 1)
    assert r.exit_code == 2 and "lowprec model but no list" in r.output, r.output
    assert sorted(p.name for p in legacy.iterdir()) == ["config.json", "model.safetensors"]
    (legacy / MARKER).write_text("model\n")  # an older marker: its kind, no entries
    r = run("convert", "--model", base / "model", "--precision", "int8", "--out", legacy)
    assert r.exit_code == 2 and "not a lowprec artifact (it is a lowprec model)" in r.output, r.output
    r = run("train", "--data", base / "data", "--windows", "0", "--out", legacy, "--epochs", 1)
    assert r.exit_code == 2 and "no list of the files" in r.output, r.output


def test_an_output_holding_a_users_files_is_not_replaced(base, tmp_path):
    """Replacing an output swaps in a new directory and deletes the old one: a file the user put
    into it (notes, a drift database) would go with it. The marker lists what lowprec wrote."""
    art = tmp_path / "art"
    r = run("convert", "--model", base / "model", "--precision", "int8", "--out", art)
    assert r.exit_code == 0, r.output
    (art / "NOTES.md").write_text("mine")
    (art / "experiments").mkdir()
    before = sorted(p.name for p in art.iterdir())
    r = run("convert", "--model", base / "model", "--precision", "int4", "--out", art)
    assert r.exit_code == 2 and "NOTES.md, experiments" in r.output and "did not write" in r.output
    assert sorted(p.name for p in art.iterdir()) == before and (art / "NOTES.md").read_text() == "mine"
    r = run("train", "--data", base / "data", "--windows", "0", "--out", base / "model", "--epochs", 1)
    assert r.exit_code == 0, r.output  # nothing foreign in it: replaced as before


def test_a_users_file_inside_an_outputs_subdirectory_is_not_replaced_either(base, tmp_path):
    """QA 6c item 2: the marker listed top-level names only, so `convert --out ART` onto an artifact
    whose torchrec/ held the user's NOTES.md exited 0 and deleted both. It lists every entry now,
    `torchrec/` and what is inside; an older marker (top-level names) still replaces as before."""
    from lowprec.fileio import MARKER

    art = tmp_path / "art"
    r = run("convert", "--model", base / "model", "--precision", "int8", "--export", "torchrec", "--out", art)
    assert r.exit_code == 0, r.output
    subs = [p for p in art.iterdir() if p.is_dir()]
    assert subs, "an artifact exported for TorchRec has a subdirectory"
    listed = (art / MARKER).read_text().splitlines()
    assert f"{subs[0].name}/" in listed and any(x.startswith(f"{subs[0].name}/") and x != f"{subs[0].name}/" for x in listed)
    (subs[0] / "NOTES.md").write_text("mine")
    r = run("convert", "--model", base / "model", "--precision", "int4", "--out", art)
    assert r.exit_code == 2 and f"{subs[0].name}/NOTES.md" in r.output and "did not write" in r.output, r.output
    assert (subs[0] / "NOTES.md").read_text() == "mine"
    (subs[0] / "NOTES.md").unlink()
    # a listed file the user replaced by a directory of their own is theirs too (QA 7 item 3)
    saved = (art / "manifest.json").read_bytes()
    (art / "manifest.json").unlink()
    (art / "manifest.json").mkdir()
    (art / "manifest.json" / "mine.txt").write_text("mine")
    r = run("convert", "--model", base / "model", "--precision", "int4", "--out", art)
    assert r.exit_code == 2 and "manifest.json/" in r.output and (art / "manifest.json" / "mine.txt").is_file(), r.output
    (art / "manifest.json" / "mine.txt").unlink()
    (art / "manifest.json").rmdir()
    (art / "manifest.json").write_bytes(saved)
    from lowprec.outputmarker import RECURSIVE

    old = [x if x.startswith("#") else x.rstrip("/") for x in listed  # an older lowprec's marker: top-level names
           if x != RECURSIVE and (x.startswith("#") or "/" not in x.rstrip("/"))]
    (art / MARKER).write_text("".join(f"{x}\n" for x in old))
    r = run("convert", "--model", base / "model", "--precision", "int4", "--out", art)
    assert r.exit_code == 0, r.output


def test_a_symlinked_output_is_written_through(base, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    r = run("convert", "--model", base / "model", "--precision", "int8", "--out", tmp_path / "link")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link").is_symlink() and (target / "manifest.json").is_file()


def test_an_output_under_a_regular_file_is_refused_naming_it(base, tmp_path):
    (tmp_path / "afile").write_text("x")
    for args in (("convert", "--model", base / "model", "--precision", "int8", "--out", tmp_path / "afile" / "a"),
                 ("train", "--data", base / "data", "--windows", "0", "--out", tmp_path / "afile" / "m"),
                 ("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1",
                  "--out", tmp_path / "afile" / "sub" / "c.json"),
                 ("data", "synth", "--out", tmp_path / "afile" / "d", "--windows", "1", "--rows-per-window", 50)):
        r = run(*args)
        assert r.exit_code == 2 and "afile is not a directory" in r.output, (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_huge_window_spec_is_refused_before_any_allocation(base):
    """`0-99999999999` once built a set of 10**11 ints (20 GB, OOM-killed). Run it in a child
    limited to 3 GB of data: exit 2 with the dataset's range, not MemoryError."""
    limit = 3 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "lowprec.cli", "eval", "--model", str(base / "model"),
                           "--data", str(base / "data"), "--windows", "0-99999999999"],
                          capture_output=True, text=True, preexec_fn=cap, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "it has windows 0-2" in proc.stderr


def test_calibration_pair_commits_as_one(base, tmp_path, monkeypatch):
    """A writer that dies after the row counts are written but before CALIB.json leaves the old,
    verifying pair (before: the counts were replaced first and the old JSON no longer verified)."""
    import lowprec.calibrate as cal

    out = tmp_path / "calib.json"
    r = run("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1", "--out", out)
    assert r.exit_code == 0, r.output
    first = cal.load_calibration(out)

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands in for SIGKILL between the two writes

    monkeypatch.setattr(cal, "atomic_write_text", killed)
    r = run("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "2", "--out", out)
    assert r.exit_code != 0
    again = cal.load_calibration(out)  # still verifies, still the first calibration
    assert again["windows"] == first["windows"] == [1]


def test_a_killed_calibrates_row_count_temporary_is_swept_by_the_next(base, tmp_path, monkeypatch):
    """The row counts were written to `.STEM.counts.tmp-PID.safetensors`: no host, so no writer could
    be told dead, and a killed run's file stayed beside the calibration for ever. It is named like
    every other temporary now, and the next calibrate to that path removes a dead writer's."""
    import socket
    from pathlib import Path

    import lowprec.calibrate as cal
    from lowprec.fileio import sha256_file as real_sha

    def dead_pid() -> int:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait(timeout=60)
        return proc.pid

    out = tmp_path / "calib.json"
    left = []

    def killed(path, *a, **k):
        left.append(Path(path))
        raise KeyboardInterrupt  # stands in for SIGKILL while the counts are written

    monkeypatch.setattr(cal, "sha256_file", killed)
    r = run("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1", "--out", out)
    assert r.exit_code != 0 and len(left) == 1
    assert left[0].name.startswith(f".calib.counts.safetensors.tmp-{socket.gethostname()}-{os.getpid()}-")
    assert not left[0].exists()  # removed by the run that made it
    dead = tmp_path / f".calib.counts.safetensors.tmp-{socket.gethostname()}-{dead_pid()}-abc00000"
    dead.write_bytes(b"half a file")  # what a SIGKILLed run leaves
    monkeypatch.setattr(cal, "sha256_file", real_sha)
    r = run("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1", "--out", out)
    assert r.exit_code == 0, r.output
    side = json.loads(out.read_text())["row_counts"]["file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["calib.json", side])


def test_calibration_files_get_normal_permissions(base, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "calib.json"
        r = run("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1", "--out", out)
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    side = out.parent / json.loads(out.read_text())["row_counts"]["file"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert oct(side.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["calib.json", side.name])


def test_model_and_artifact_files_get_normal_permissions(base, tmp_path):
    """safetensors writes its files 0600: a model another user (the server) must read was unreadable."""
    old = os.umask(0o022)
    try:
        assert run("train", "--data", base / "data", "--windows", "0", "--out", tmp_path / "m",
                   "--epochs", 1).exit_code == 0
        assert run("convert", "--model", tmp_path / "m", "--precision", "int8", "--out", tmp_path / "a").exit_code == 0
    finally:
        os.umask(old)
    files = [p for d in ("m", "a") for p in (tmp_path / d).iterdir()]
    assert files and all(oct(p.stat().st_mode & 0o777) == oct(0o644) for p in files), \
        [(p.name, oct(p.stat().st_mode & 0o777)) for p in files]


def test_a_kill_between_the_two_renames_is_recovered_on_read(base, tmp_path):
    """The writer moved the old dataset aside and died before renaming the new one in: the next
    reader (not only the next writer) puts the old one back."""
    data = make_tiny_dataset(tmp_path / "data", windows=3, rows=600)
    data.rename(tmp_path / "data.lowprec-old")
    r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 0, r.output
    assert (data / "dataset.json").is_file() and not (tmp_path / "data.lowprec-old").exists()
    model = tmp_path / "model"
    r = run("train", "--data", data, "--windows", "0", "--out", model, "--epochs", 1)
    model.rename(tmp_path / "model.lowprec-old")
    r = run("eval", "--model", model, "--data", data, "--windows", "2")
    assert r.exit_code == 0, r.output


def test_resolve_output_leaves_complete_outputs_alone(tmp_path):
    with atomic_dir(tmp_path / "x", "report") as t:
        (t / "index.html").write_text("new")
    (tmp_path / "x.lowprec-old").mkdir()  # a stale backup beside a complete output: the output wins
    assert resolve_output(tmp_path / "x") == tmp_path / "x"
    assert (tmp_path / "x" / "index.html").read_text() == "new"


def test_an_output_inside_an_input_directory_is_refused(base, tmp_path):
    """Writing into an input changes it (and a later rewrite of the input then refuses to delete
    the stranger): convert into the model, calibrate into the dataset, train into the dataset."""
    model, data = base / "model", base / "data"
    before = {d: sorted(p.name for p in d.iterdir()) for d in (model, data)}
    for args in [("convert", "--model", model, "--precision", "int8", "--out", model / "int8"),
                 ("calibrate", "--model", model, "--data", data, "--windows", "1", "--out", data / "c.json"),
                 ("train", "--data", data, "--windows", "0", "--epochs", 1, "--out", data / "m")]:
        r = run(*args)
        assert r.exit_code == 2 and "lies inside the input" in r.output, (args, r.output)
    assert {d: sorted(p.name for p in d.iterdir()) for d in (model, data)} == before


def test_a_shard_plan_is_lowprecs_own_when_the_artifact_is_replaced(base, tmp_path):
    art = tmp_path / "art"
    assert run("convert", "--model", base / "model", "--precision", "int8", "--out", art).exit_code == 0
    r = run("shard", art, "--ranks", "2")
    assert r.exit_code == 0, r.output
    r = run("convert", "--model", base / "model", "--precision", "int4", "--out", art)
    assert r.exit_code == 0, r.output
    assert not (art / "shard-plan.json").exists()  # (a plan of the old artifact's tables went with it)


def test_json_with_an_integer_past_pythons_digit_limit_is_not_valid_json(base, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"format": "lowprec-plan", "version": 1' + ', "x": 1' + "0" * 5000 + "}")
    r = run("convert", "--model", base / "model", "--plan", plan, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "not valid JSON" in r.output and "Traceback" not in r.output, r.output
