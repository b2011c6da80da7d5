"""Issue 15, tracebacks instead of exit 2: each bad input or fault below exits 2 with a message
naming the file (before: a Python traceback, exit 1, or NaN printed with exit 0)."""

import contextlib
import gc
import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from helpers import make_tiny_dataset, run_cli as run, resign_manifest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust-err")
    data = make_tiny_dataset(root / "data", windows=3, rows=400)
    assert run("train", "--data", data, "--windows", "0", "--out", root / "model", "--epochs", 1).exit_code == 0
    r = run("convert", "--model", root / "model", "--precision", "int4", "--layer-precision", "int8",
            "--out", root / "art")
    assert r.exit_code == 0, r.output
    assert run("calibrate", "--model", root / "model", "--data", data, "--windows", "1",
               "--out", root / "calib.json").exit_code == 0
    return root


@pytest.mark.parametrize("size", ["0", "-5"])
def test_batch_size_must_be_positive(base, size):
    for cmd in (["eval", "--model", base / "model"], ["calibrate", "--model", base / "model", "--out", base / "c.json"],
                ["train", "--out", base / "never"]):
        r = run(*cmd, "--data", base / "data", "--windows", "2", "--batch-size", size)
        assert r.exit_code == 2 and "--batch-size" in r.output and "nan" not in r.output.lower(), (cmd, r.output)
    assert not (base / "never").exists() and not (base / "c.json").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**63), "99999999999999999999"])
def test_a_seed_out_of_range_is_refused_before_anything_is_written(base, tmp_path, seed):
    """qa-common 3: `train --seed -1` and a seed beyond int64 were exit 4 (numpy's "expected
    non-negative integer", torch.manual_seed's overflow), and `demo` did so after ~20 s, leaving a
    half-written --out. Every --seed is now click's range check: exit 2 before anything runs."""
    for cmd in (["train", "--data", base / "data", "--windows", "0", "--out", tmp_path / "m"],
                ["demo", "--out", tmp_path / "demo"], ["data", "synth", "--out", tmp_path / "s"]):
        r = run(*cmd, "--seed", seed)
        assert r.exit_code == 2 and "Invalid value for '--seed'" in r.output and "0<=x<=9223372036854775807" in r.output, \
            (cmd, r.output)
    assert list(tmp_path.iterdir()) == []


def test_the_largest_seed_trains(base, tmp_path):
    r = run("train", "--data", base / "data", "--windows", "0", "--out", tmp_path / "m", "--epochs", 1,
            "--seed", 2**63 - 1)
    assert r.exit_code == 0, r.output


def copy_with(src, dst, name, text):
    import shutil

    shutil.copytree(src, dst)
    (dst / name).write_text(text)
    return dst


@pytest.mark.parametrize("kind", ["dataset", "config", "manifest", "calibration", "plan"])
def test_a_json_list_where_an_object_is_expected(base, tmp_path, kind):
    data, model, art = base / "data", base / "model", base / "art"
    if kind == "dataset":
        data = copy_with(data, tmp_path / "d", "dataset.json", "[1, 2]")
        r = run("eval", "--model", model, "--data", data, "--windows", "2")
    elif kind == "config":
        model = copy_with(model, tmp_path / "m", "config.json", "[]")
        r = run("eval", "--model", model, "--data", data, "--windows", "2")
    elif kind == "manifest":
        art = copy_with(art, tmp_path / "a", "manifest.json", '["x"]')
        r = run("inspect", art)
    else:
        path = tmp_path / f"{kind}.json"
        path.write_text("[]")
        flag = "--calibration" if kind == "calibration" else "--plan"
        extra = ["--precision", "int8"] if kind == "calibration" else []
        r = run("convert", "--model", model, flag, path, *extra, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "must hold a JSON object, found list" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("where", ["model", "manifest"])
def test_nested_structures_of_the_wrong_type(base, tmp_path, where):
    if where == "model":
        cfg = json.loads((base / "model" / "config.json").read_text())
        cfg["model"]["tables"] = "t0"
        model = copy_with(base / "model", tmp_path / "m", "config.json", json.dumps(cfg))
        r = run("eval", "--model", model, "--data", base / "data", "--windows", "2")
    else:
        man = json.loads((base / "art" / "manifest.json").read_text())
        man["layers"] = [1]
        art = copy_with(base / "art", tmp_path / "a", "manifest.json", json.dumps(resign_manifest(man)))
        r = run("eval", "--model", art, "--data", base / "data", "--windows", "2")
    assert r.exit_code == 2, r.output


def test_huge_num_embeddings_are_refused_before_allocating(base, tmp_path):
    meta = json.loads((base / "data" / "dataset.json").read_text())
    meta["num_embeddings"][0] = 10**12
    data = copy_with(base / "data", tmp_path / "d", "dataset.json", json.dumps(meta))
    r = run("train", "--data", data, "--windows", "0", "--out", tmp_path / "m")
    assert r.exit_code == 2 and "num_embeddings 1000000000000" in r.output
    meta["num_embeddings"][0] = 2**31 - 1  # fits int32, not this machine at dim 16
    (data / "dataset.json").write_text(json.dumps(meta))
    r = run("train", "--data", data, "--windows", "0", "--out", tmp_path / "m", "--embedding-dim", 4096)
    assert r.exit_code == 2 and "GiB" in r.output and "'t0'" in r.output
    cfg = json.loads((base / "model" / "config.json").read_text())
    cfg["model"]["tables"][0]["num_embeddings"] = 10**12
    model = copy_with(base / "model", tmp_path / "m2", "config.json", json.dumps(cfg))
    r = run("eval", "--model", model, "--data", base / "data", "--windows", "2")
    assert r.exit_code == 2 and "config.json implies" in r.output


def test_a_non_utf8_recipe(base, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(b"[windows]\ncalibrate = \"1\"\n# caf\xe9\n")
    r = run("search", "--model", base / "model", "--data", base / "data", "--recipe", recipe,
            "--out", tmp_path / "plan.json")
    assert r.exit_code == 2 and "r.toml" in r.output and "UTF-8" in r.output


def test_convert_says_when_int8_layers_fall_back_to_dynamic_ranges(base, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1, "tables": {}, "kind": "search",
                                "layers": {"top.0": {"precision": "int8"}}}))
    r = run("convert", "--model", base / "model", "--plan", plan, "--layer-precision", "int8", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "go with --precision" in r.output and not (tmp_path / "x").exists()
    r = run("convert", "--model", base / "model", "--plan", plan, "--out", tmp_path / "a")
    assert r.exit_code == 0 and "warning: layers ['top.0'] are int8 with dynamic" in r.stderr, r.output
    calib = json.loads((base / "calib.json").read_text())
    calib["layers"].pop("top.0")
    (tmp_path / "c.json").write_text(json.dumps(calib))
    for counts in base.glob("calib.counts-*"):  # the row-count sidecar it names
        (tmp_path / counts.name).write_bytes(counts.read_bytes())
    r = run("convert", "--model", base / "model", "--plan", plan, "--calibration", tmp_path / "c.json",
            "--out", tmp_path / "b")
    assert r.exit_code == 0 and "the calibration has no range for them" in r.stderr, r.output
    r = run("convert", "--model", base / "model", "--plan", plan, "--calibration", base / "calib.json",
            "--out", tmp_path / "c")
    assert r.exit_code == 0 and "dynamic" not in r.stderr, r.output


def test_unsigned_ids_object_arrays_and_a_directory_as_input_are_named_plainly(base, tmp_path):
    import shutil

    import numpy as np

    data = tmp_path / "d"
    shutil.copytree(base / "data", data)
    sparse = data / "day_2_sparse.npy"
    np.save(sparse, np.load(sparse).astype(np.uint32))
    r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 2 and "ids must be signed integers (int32 or int64; -1 pads a bag), found uint32" in r.output
    np.save(sparse, np.array([[object()]] * 3, dtype=object), allow_pickle=True)
    r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 2 and "declares Python objects" in r.output and "never unpickles" in r.output, r.output
    r = run("data", "prepare", "--format", "criteo-tsv", "--input", tmp_path, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "is a directory; give the files themselves" in r.output, r.output


def _tampered(base, tmp_path, name, write):
    """A copy of the base dataset whose file `name` is rewritten by `write(path)`."""
    import shutil

    data = tmp_path / "d"
    shutil.copytree(base / "data", data)
    write(data / name)
    return data


def _np_save(make):
    return lambda path: np.save(path, make(np.load(path)))


@pytest.mark.parametrize("name, write, said", [
    ("day_2_labels.npy", lambda p: p.write_bytes(b""), "unreadable .npy (empty file (0 bytes): still being written"),
    ("day_2_dense.npy", lambda p: p.write_bytes(b""), "unreadable .npy (empty file (0 bytes)"),
    ("day_2_sparse.npy", lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<   \n" + b"x" * 64),
     "unreadable .npy ("),
    ("day_2_dense.npy", _np_save(lambda a: np.zeros(len(a), dtype=[("a", "<f4"), ("b", "<i4")])),
     "dense features must be real numbers (float, integer or bool), found [('a', '<f4'), ('b', '<i4')] (records)"),
    ("day_2_dense.npy", _np_save(lambda a: (a + 1j * a).astype(np.complex64)),
     "dense features must be real numbers (float, integer or bool), found complex64 (complex numbers)"),
    ("day_2_dense.npy", _np_save(lambda a: a.astype("U8")), "found <U8 (strings)"),
    ("day_2_labels.npy", _np_save(lambda a: a.astype("U1")),
     "labels must be numbers 0/1 (integer, bool or float), found <U1 (strings)"),
])
def test_a_window_file_numpy_cannot_read_or_of_the_wrong_dtype_is_named(base, tmp_path, name, write, said):
    """qa-common 2, 6, 7 and qa-2 2: an empty (0-byte) .npy (a copy cut short, a labels job that
    creates the file before filling it), a garbled header and a structured dense file were exit 4
    (EOFError, TokenError, TypeError); complex or string dense features were read (silently cast),
    and string labels said "label 0 is not 0 or 1". Every one is exit 2 naming the file, for eval
    as for drift."""
    data = _tampered(base, tmp_path, name, write)
    r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 2 and f"Error: {data / name}: " in r.output and said in r.output, r.output
    r = run("drift", "--reference", base / "model", "--candidate", base / "art", "--data", data, "--windows", "2",
            "--db", tmp_path / "db.sqlite", "--report", tmp_path / "rep")
    assert r.exit_code == 2 and f"Error: {data / name}: " in r.output and said in r.output, r.output


@pytest.mark.parametrize("name", ["day_2_dense.npy", "day_2_sparse.npy"])
def test_eval_of_a_window_missing_a_file_or_holding_a_directory_names_it(base, tmp_path, name):
    """qa-common 1 and 5: eval fingerprints the windows it scores (were they trained on?) before it
    reads them, and that fingerprint stat()ed a missing file (exit 4, FileNotFoundError) and called
    a directory in its place "cannot write ... nothing was replaced" (an input called an output)."""
    data = _tampered(base, tmp_path, name, lambda p: p.unlink())
    r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 2 and f"Error: window 2: missing {data / name}" in r.output, r.output
    (data / name).mkdir()
    r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 2 and f"Error: window 2: {data / name}: not a regular file (a directory)" in r.output, r.output


def test_dense_beyond_float32_and_a_bad_label_are_named_without_numpy_warnings(base, tmp_path):
    """qa-common 6: a finite float64 dense value beyond float32's range became Inf in the cast (with
    numpy's overflow warning and its source line on stderr) and was called "NaN or Inf"; qa-2 5: a
    label that is not 0/1 did not name the labels file."""
    import warnings

    def big(a):
        a = a.astype(np.float64)
        a[9, 1] = 1e300
        return a

    data = _tampered(base, tmp_path, "day_2_dense.npy", _np_save(big))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warning would be exit 4 here
        r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 2 and ("Error: window 2 row 9: dense feature 'd1' is 1e+300, beyond float32's range "
                                 "(|x| <= 3.4e38)") in r.output, r.output
    labels = data / "day_2_labels.npy"
    y = np.load(labels).astype(np.float32)
    y.reshape(-1)[7] = 0.5
    np.save(labels, y)
    (data / "day_2_dense.npy").write_bytes((base / "data" / "day_2_dense.npy").read_bytes())
    r = run("eval", "--model", base / "model", "--data", data, "--windows", "2")
    assert r.exit_code == 2 and f"Error: window 2 row 7: label 0.5 is not 0 or 1 (in {labels})" in r.output, r.output


def test_a_config_that_fails_its_own_checks_names_the_file(base, tmp_path):
    cfg = json.loads((base / "model" / "config.json").read_text())
    cfg["model"]["embedding_dim"] = 8  # the bottom MLP ends at another width
    model = copy_with(base / "model", tmp_path / "m", "config.json", json.dumps(cfg))
    r = run("eval", "--model", model, "--data", base / "data", "--windows", "2")
    assert r.exit_code == 2 and f"{model / 'config.json'}: " in r.output and "embedding_dim=8" in r.output, r.output


def test_a_manifest_that_drops_or_misdescribes_a_table(base, tmp_path):
    """`inspect` shows the manifest's `tables`: one that drops a table, or lists sharing the table
    is not served with, would misreport the artifact."""
    man = json.loads((base / "art" / "manifest.json").read_text())
    dropped = dict(man, tables=man["tables"][:-1])
    shared = dict(man, tables=[dict(man["tables"][0], sharing={"kind": "hot", "ratio": 4}), *man["tables"][1:]])
    for i, (edited, says) in enumerate(((dropped, "missing ['t"), (shared, "lists sharing {'kind': 'hot'"))):
        art = copy_with(base / "art", tmp_path / f"a{i}", "manifest.json", json.dumps(resign_manifest(edited)))
        for cmd in (["inspect", art], ["eval", "--model", art, "--data", base / "data", "--windows", "2"]):
            r = run(*cmd)
            assert r.exit_code == 2 and "manifest.json" in r.output and says in r.output, (cmd, r.output)


def test_a_hand_edit_of_the_manifest_that_stays_consistent_is_refused(base, tmp_path):
    """QA 6c item 1: manifest.json is not among the files its sha256 map covers, so an edit that kept it
    self-consistent (two tables' serving entries swapped, a transform's seed, a layer's range with its
    qparams) passed inspect and eval and changed the scores. Its content hash is recorded and checked
    now; a manifest from before it was recorded still loads."""
    from lowprec.checkpoint.artifact import CONTENT

    man = json.loads((base / "art" / "manifest.json").read_text())
    assert CONTENT in man
    swapped = json.loads(json.dumps(man))
    a, b = swapped["serving"][0], swapped["serving"][1]
    a["name"], b["name"] = b["name"], a["name"]
    for i, (edited, what) in enumerate(((swapped, "serving swapped"), (dict(man, created="2020-01-01"), "a date"))):
        art = copy_with(base / "art", tmp_path / f"e{i}", "manifest.json", json.dumps(edited))
        for cmd in (["inspect", art], ["eval", "--model", art, "--data", base / "data", "--windows", "2"]):
            r = run(*cmd)
            assert r.exit_code == 2 and "manifest.json: edited after conversion" in r.output, (what, cmd, r.output)
    deleted = {k: v for k, v in man.items() if k != CONTENT}  # the hash deleted with the edit (QA 7 item 1)
    art = copy_with(base / "art", tmp_path / "deleted", "manifest.json", json.dumps(dict(deleted, serving=swapped["serving"])))
    r = run("eval", "--model", art, "--data", base / "data", "--windows", "2")
    assert r.exit_code == 2 and f"has no {CONTENT}, which lowprec 0.2.0" in r.output, r.output
    older = dict(deleted, lowprec_version="0.1.0")  # written by a lowprec before the hash was recorded
    art = copy_with(base / "art", tmp_path / "old", "manifest.json", json.dumps(older))
    assert run("eval", "--model", art, "--data", base / "data", "--windows", "2").exit_code == 0


@pytest.mark.parametrize("value", ["int9", 5, None, "fp16", "int2"])
def test_a_corrupt_precision_in_a_manifest(base, tmp_path, value):
    man = json.loads((base / "art" / "manifest.json").read_text())
    man["layers"]["top.0"]["precision"] = value  # int8 weights on disk
    art = copy_with(base / "art", tmp_path / "a", "manifest.json", json.dumps(resign_manifest(man)))
    for cmd in (["inspect", art], ["eval", "--model", art, "--data", base / "data", "--windows", "2"]):
        r = run(*cmd)
        assert r.exit_code == 2 and "layer 'top.0'" in r.output, (cmd, r.output)
    man = json.loads((base / "art" / "manifest.json").read_text())
    man["physical_tables"][0]["precision"] = "fp16"  # int4 rows on disk
    (art / "manifest.json").write_text(json.dumps(resign_manifest(man)))
    r = run("eval", "--model", art, "--data", base / "data", "--windows", "2")
    assert r.exit_code == 2 and "physical table 't0'" in r.output


@contextlib.contextmanager
def tmpfs(path, options):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_names_the_output_and_leaves_nothing(base, tmp_path):
    with tmpfs(tmp_path / f"small-{uuid.uuid4().hex[:6]}", "size=256k") as small:
        r = run("data", "synth", "--out", small / "d", "--windows", "2", "--rows-per-window", "20000")
        assert r.exit_code == 2 and "No space left on device" in r.output and str(small / "d") in r.output
        r = run("calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1",
                "--out", small / "sub" / "calib.json")
        assert r.exit_code in (0, 2)  # small enough to fit; then fill the disk and retry
        filler = small / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            fh.write(b"\0" * (1 << 20))
        r = run("convert", "--model", base / "model", "--precision", "fp32", "--out", small / "art")
        assert r.exit_code == 2 and "ENOSPC" in r.output and "art" in r.output, r.output
        assert sorted(p.name for p in small.iterdir() if not p.name.startswith("filler")) in (["sub"], [])


def test_a_disk_that_fills_in_the_middle_of_a_table(tmp_path):
    """numpy's tofile reported a short write as a bare OSError (no errno) and the writer's cleanup
    freed the space before the disk-full check looked: a traceback. 2 MB of fp32 rows, 1 MB disk."""
    assert run("data", "synth", "--out", tmp_path / "d", "--windows", "1", "--rows-per-window", "300",
               "--scale", "0.001").exit_code == 0
    assert run("train", "--data", tmp_path / "d", "--windows", "0", "--out", tmp_path / "m").exit_code == 0
    with tmpfs(tmp_path / f"mid-{uuid.uuid4().hex[:6]}", "size=1m") as small:
        r = run("convert", "--model", tmp_path / "m", "--precision", "fp32", "--out", small / "art")
        assert r.exit_code == 2 and "ENOSPC" in r.output and "art" in r.output, r.output
        assert list(small.iterdir()) == []


def test_a_failed_write_gives_the_space_back_at_once(tmp_path):
    """A writer that hit a full disk closed its files only when garbage collection reached the
    traceback that held it: the unlinked files kept their space, so a caller in the same process
    (an API user, the disk-full test above in a long serial run) found the disk still full. The
    dataset and tensor-file writers now close their files before the error propagates."""
    assert run("data", "synth", "--out", tmp_path / "d", "--windows", "1", "--rows-per-window", "300",
               "--scale", "0.001").exit_code == 0
    assert run("train", "--data", tmp_path / "d", "--windows", "0", "--out", tmp_path / "m").exit_code == 0
    with tmpfs(tmp_path / f"gc-{uuid.uuid4().hex[:6]}", "size=1m") as small:
        total = os.statvfs(small).f_blocks
        gc.disable()  # what holds the space until a collection is what this test is about
        try:
            for cmd in (["data", "synth", "--out", small / "d", "--windows", "2", "--rows-per-window", "20000"],
                        ["convert", "--model", tmp_path / "m", "--precision", "fp32", "--out", small / "art"]):
                r = run(*cmd)
                assert r.exit_code == 2 and "ENOSPC" in r.output, r.output
                assert list(small.iterdir()) == [] and os.statvfs(small).f_bfree == total, cmd[0]
        finally:
            gc.enable()


def test_a_read_only_output_directory(base, tmp_path):
    with tmpfs(tmp_path / f"ro-{uuid.uuid4().hex[:6]}", "size=1m,ro") as ro:
        for cmd in (["data", "synth", "--out", ro / "d", "--windows", "1", "--rows-per-window", "10"],
                    ["convert", "--model", base / "model", "--precision", "int8", "--out", ro / "a"],
                    ["calibrate", "--model", base / "model", "--data", base / "data", "--windows", "1",
                     "--out", ro / "c.json"]):
            r = run(*cmd)
            assert r.exit_code == 2 and "Read-only file system" in r.output and str(ro) in r.output, (cmd, r.output)


@pytest.mark.parametrize("error, said", [
    (IsADirectoryError(21, "Is a directory", "/in/day_2_dense.npy"), "cannot open /in/day_2_dense.npy: Is a directory [EISDIR]"),
    (PermissionError(13, "Permission denied", "/in/day_2_dense.npy"), "cannot open /in/day_2_dense.npy: Permission denied [EACCES]"),
    (OSError(28, "No space left on device", "/out/x"), "cannot write /out/x: No space left on device [ENOSPC]; nothing was replaced")])
def test_a_read_failure_is_not_called_a_write(base, monkeypatch, error, said):
    """An OSError the user can fix that reaches the CLI unwrapped was always "cannot write PATH: ...;
    nothing was replaced", also for an input being read (qa-common 5: `eval` told the user its input
    window file was an output). Only the errnos that writes alone raise say "write" now."""
    from lowprec.data.dataset import Dataset

    def fails(*a, **k):
        raise error

    monkeypatch.setattr(Dataset, "arrays", fails)
    r = run("eval", "--model", base / "model", "--data", base / "data", "--windows", "2")
    assert r.exit_code == 2 and r.output.endswith(f"Error: {said}\n"), r.output
    assert r.output.count("cannot") == 1 and ("nothing was replaced" in r.output) == ("write" in said), r.output


def test_json_to_a_full_or_closed_stdout_names_stdout(base, tmp_path):
    """qa-common 8: `inspect ART --json > /dev/full` said "cannot write an output: ..." and with
    stdout closed (`>&-`) the JSON was dropped silently, exit 0. Both are exit 2 naming stdout; a
    closed stdout is refused as --json is parsed, before the command writes anything."""
    import sys

    import lowprec

    root = Path(lowprec.__file__).resolve().parents[1]  # the lowprec this test imported
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "lowprec", "inspect", str(base / "art"), "--json"], cwd=root,
                           stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith(
        "Error: cannot write the --json result to stdout: No space left on device [ENOSPC]"), p.stderr
    with open("/dev/full", "w") as full:  # the plain table, not --json: also stdout, not "a file" (QA 6a item 3)
        p = subprocess.run([sys.executable, "-m", "lowprec", "inspect", str(base / "art")], cwd=root,
                           stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith(
        "Error: cannot write the result to stdout: No space left on device [ENOSPC]"), p.stderr
    p = subprocess.run([sys.executable, "-m", "lowprec", "data", "synth", "--out", str(tmp_path / "d"), "--windows", "1",
                        "--rows-per-window", "10", "--json"], cwd=root, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, env=env, timeout=300, preexec_fn=lambda: os.close(1))
    assert p.returncode == 2 and "Invalid value for '--json': stdout is closed" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "d").exists()


def test_a_bug_exits_4_in_one_line_never_1_which_drift_means_as_an_alarm(monkeypatch, tmp_path):
    """An unexpected exception inside a command (a lowprec bug) is not an alarm for a cron job
    reading drift's exit code: exit 4, one line naming the exception and where; LOWPREC_DEBUG=1
    adds the traceback."""
    from lowprec.cli import data as data_cli

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(data_cli, "synth_config", broken)
    r = run("data", "synth", "--out", tmp_path / "x", "--windows", "1", "--rows-per-window", "10")
    assert r.exit_code == 4, r.output
    assert "internal error, a bug in lowprec: KeyError: 'boom' at " in r.output and "LOWPREC_DEBUG=1" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x").exists()
    monkeypatch.setenv("LOWPREC_DEBUG", "1")
    r = run("data", "synth", "--out", tmp_path / "x", "--windows", "1", "--rows-per-window", "10")
    assert r.exit_code == 4 and "Traceback" in r.output


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] . "
                                                                "DefaultCPUAllocator: can't allocate memory: you tried "
                                                                "to allocate 4096 bytes. Error code 12")])
def test_running_out_of_memory_is_said_as_such_not_as_a_bug(monkeypatch, tmp_path, error):
    """Under a memory limit, eval and search exited 4 ('internal error, a bug in lowprec: MemoryError')."""
    from lowprec.cli import data as data_cli

    def no_memory(*a, **k):
        raise error

    monkeypatch.setattr(data_cli, "synth_config", no_memory)
    r = run("data", "synth", "--out", tmp_path / "x", "--windows", "1", "--rows-per-window", "10")
    assert r.exit_code == 2 and r.output.startswith("Error: out of memory (") and "a bug" not in r.output, r.output
    assert not (tmp_path / "x").exists()


def test_out_of_memory_suggests_only_the_running_commands_options(monkeypatch, tmp_path):
    """The message suggested --batch-size or --max-rows to every command, also to import, which has neither."""
    import lowprec.data.dataset as dataset

    def no_memory(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(dataset, "Dataset", no_memory)
    (tmp_path / "s.safetensors").write_bytes(b"x")
    for args, hint in ((["import", "--format", "torchrec", "--state-dict", tmp_path / "s.safetensors"], None),
                       (["eval", "--model", tmp_path / "m", "--windows", "0"], "try a smaller --batch-size, and see"),
                       (["calibrate", "--model", tmp_path / "m", "--windows", "0", "--out", tmp_path / "c.json"],
                        "try a smaller --batch-size or --max-rows, and see")):
        r = run(*args, "--data", tmp_path / "d", *(["--out", tmp_path / "o"] if args[0] == "import" else []))
        assert r.exit_code == 2 and r.output.startswith("Error: out of memory ("), r.output
        assert "README's \"Models larger than RAM\"" in r.output, r.output
        if hint is None:
            assert "--batch-size" not in r.output and "--max-rows" not in r.output and "try" not in r.output, r.output
        else:
            assert hint in r.output, r.output
