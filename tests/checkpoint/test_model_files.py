"""The files a model, an artifact or a window is made of: anything but a regular file is refused
before it is opened (a FIFO would block open() forever), the shard index is part of a model's
identity, and a tensor missing from an index is named as such (qa-1b items 2, 6, 12, 13, 14)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from helpers import REPO, make_tiny_dataset, random_float_model, run_cli as run
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError

TABLE = "embeddings.0.bag.weight"
INDEX = "model.safetensors.index.json"


def shard_model(model: Path, out: Path, bounds=((0, 20), (20, 40), (40, 60)), record_index: bool = False) -> Path:
    """A copy of `model` with table 0 in row-range shards t0-I.safetensors and an index; config.json
    records the sha256 of every .safetensors file (and of the index if `record_index`)."""
    state = load_file(str(model / "model.safetensors"))
    out.mkdir()
    save_file({k: v for k, v in state.items() if k != TABLE}, str(out / "rest.safetensors"))
    wmap: dict = {k: "rest.safetensors" for k in state if k != TABLE}
    wmap[TABLE] = []
    for i, (lo, hi) in enumerate(bounds):
        save_file({"rows": state[TABLE][lo:hi].contiguous()}, str(out / f"t0-{i}.safetensors"))
        wmap[TABLE].append({"file": f"t0-{i}.safetensors", "tensor": "rows", "rows": [lo, hi]})
    (out / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    cfg = json.loads((model / "config.json").read_text())
    names = sorted(p.name for p in out.glob("*.safetensors")) + ([INDEX] if record_index else [])
    cfg["sha256"] = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-files")
    data = make_tiny_dataset(root / "data", windows=2, rows=300, tables=(60, 20, 8))
    random_float_model(Dataset(data), root / "model")
    shard_model(root / "model", root / "sharded")
    r = run("convert", "--model", root / "model", "--precision", "int4", "--out", root / "art")
    assert r.exit_code == 0, r.output
    return root


_CHILD = """
import json, sys
from click.testing import CliRunner
from lowprec.cli import main
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(main, args)
    print(json.dumps([r.exit_code, r.output]), flush=True)
"""


def _run_bounded(*commands: list) -> list[tuple[int, str]]:
    """CLI commands in one child process, bounded: a regression that blocks fails, never hangs CI."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    steps = json.dumps([[str(a) for a in c] for c in commands])
    r = subprocess.run([sys.executable, "-c", _CHILD, steps], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(json.loads(line)) for line in r.stdout.splitlines()]


def _copy_with(src: Path, dst: Path, name: str, make) -> Path:
    shutil.copytree(src, dst)
    (dst / name).unlink()
    make(dst / name)
    return dst


def test_fifo_or_directory_where_a_file_belongs_is_refused_at_once(base, tmp_path):
    """Before: a FIFO as a row shard blocked open() forever (also under --nproc, past any timeout);
    a directory there got an "ulimit -v" hint; a FIFO as model.safetensors, weights.safetensors or a
    window's .npy was called missing."""
    fifo_shard = _copy_with(base / "sharded", tmp_path / "fifo_shard", "t0-1.safetensors", os.mkfifo)
    dir_shard = _copy_with(base / "sharded", tmp_path / "dir_shard", "t0-1.safetensors", os.mkdir)
    fifo_single = _copy_with(base / "model", tmp_path / "fifo_single", "model.safetensors", os.mkfifo)
    fifo_art = _copy_with(base / "art", tmp_path / "fifo_art", "weights.safetensors", os.mkfifo)
    fifo_data = _copy_with(base / "data", tmp_path / "fifo_data", "day_1_sparse.npy", os.mkfifo)
    data, model = base / "data", base / "model"
    cases = [
        (fifo_shard, data, "t0-1.safetensors: not a regular file (a FIFO)"),
        (dir_shard, data, "t0-1.safetensors: not a regular file (a directory)"),
        (fifo_single, data, "model.safetensors: not a regular file (a FIFO)"),
        (fifo_art, data, "weights.safetensors: not a regular file (a FIFO)"),
        (model, fifo_data, "window 1: " + str(fifo_data / "day_1_sparse.npy") + ": not a regular file (a FIFO)"),
    ]
    results = _run_bounded(*[["eval", "--model", m, "--data", d, "--windows", "1"] for m, d, _ in cases])
    for (m, _, said), (code, output) in zip(cases, results):
        assert code == 2 and said in output, (m, output)
        assert "ulimit" not in output and "missing" not in output and "Traceback" not in output, output



def test_a_fifo_as_a_json_file_a_labels_file_or_a_state_dict_is_refused_at_once(base, tmp_path):
    """The same class through the other readers: a FIFO as config.json or manifest.json was called
    "not found", as a window's labels file "pending" (drift), as a TorchRec state dict "not found"."""
    fifo_config = _copy_with(base / "model", tmp_path / "fifo_config", "config.json", os.mkfifo)
    fifo_manifest = _copy_with(base / "art", tmp_path / "fifo_manifest", "manifest.json", os.mkfifo)
    fifo_labels = _copy_with(base / "data", tmp_path / "fifo_labels", "day_1_labels.npy", os.mkfifo)
    os.mkfifo(tmp_path / "sd.safetensors")
    data = base / "data"
    cases = [
        (["eval", "--model", fifo_config, "--data", data, "--windows", "1"], "config.json: not a regular file (a FIFO)"),
        (["inspect", fifo_manifest], "manifest.json: not a regular file (a FIFO)"),
        (["drift", "--reference", base / "model", "--candidate", base / "art", "--data", fifo_labels,
          "--windows", "1", "--db", tmp_path / "h.sqlite", "--report", tmp_path / "rep"],
         "day_1_labels.npy: not a regular file (a FIFO)"),
        (["import", "--format", "torchrec", "--state-dict", tmp_path / "sd.safetensors", "--data", data,
          "--out", tmp_path / "imp"], "sd.safetensors: not a regular file (a FIFO)"),
    ]
    for (args, said), (code, output) in zip(cases, _run_bounded(*[a for a, _ in cases])):
        assert code == 2 and said in output and "Traceback" not in output, (args[0], output)
    assert not (tmp_path / "h.sqlite").exists() and not (tmp_path / "imp").exists()

def _swap_index_files(model: Path, dst: Path) -> Path:
    """A copy of sharded `model` whose index swaps the files of two equal-sized shards of table 0:
    rows 0-19 now read 20-39's weights and back. Shard files and config.json are unchanged."""
    shutil.copytree(model, dst)
    index = json.loads((dst / INDEX).read_text())
    parts = index["weight_map"][TABLE]
    parts[0]["file"], parts[1]["file"] = parts[1]["file"], parts[0]["file"]
    (dst / INDEX).write_text(json.dumps(index))
    return dst


def test_the_shard_index_is_part_of_the_model_identity(base, tmp_path):
    """Before: swapping two equal-sized shards in the index gave other weights under the same
    weights_sha256, so a calibration of the original was accepted for it (and listing the index
    in config.json's sha256 was refused)."""
    from lowprec.checkpoint.float_model import load_float_model, weights_sha256

    swapped = _swap_index_files(base / "sharded", tmp_path / "swapped")
    a, _ = load_float_model(base / "sharded")
    b, _ = load_float_model(swapped)
    assert not a.state_dict()[TABLE].equal(b.state_dict()[TABLE])  # other weights ...
    assert weights_sha256(base / "sharded") != weights_sha256(swapped)  # ... so another identity
    calib = tmp_path / "calib.json"
    assert run("calibrate", "--model", base / "sharded", "--data", base / "data", "--windows", "1",
               "--out", calib).exit_code == 0
    r = run("convert", "--model", swapped, "--precision", "int4", "--calibration", calib, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "--calibration was measured on model sha256" in r.output, r.output
    assert not (tmp_path / "a").exists()
    # the index may be listed in config.json's sha256: accepted, verified, and the same identity
    listed = shard_model(base / "model", tmp_path / "listed", record_index=True)
    assert weights_sha256(listed) == weights_sha256(base / "sharded")
    assert load_float_model(listed)[0].state_dict()[TABLE].equal(a.state_dict()[TABLE])
    _swap_index_files(listed, tmp_path / "listed_swapped")
    r = run("eval", "--model", tmp_path / "listed_swapped", "--data", base / "data", "--windows", "1")
    assert r.exit_code == 2 and f"{INDEX}: sha256 does not match the one recorded beside it" in r.output, r.output


def test_a_sharded_model_with_no_recorded_sha256_is_identified_by_its_shards_too(base, tmp_path):
    """With nothing recorded in config.json, a sharded model's identity was the hash of its index
    alone: rewriting a shard's rows kept it, so a calibration of the old weights was accepted (QA 5,
    item 6). Now every file the index names is hashed with it: the same identity as when
    config.json records those hashes, and another one once a shard changes."""
    from lowprec.checkpoint.float_model import weights_sha256

    bare = shutil.copytree(base / "sharded", tmp_path / "bare")
    cfg = json.loads((bare / "config.json").read_text())
    cfg.pop("sha256")
    (bare / "config.json").write_text(json.dumps(cfg))
    assert weights_sha256(bare) == weights_sha256(base / "sharded")
    rows = load_file(str(bare / "t0-1.safetensors"))
    save_file({"rows": rows["rows"] + 1}, str(bare / "t0-1.safetensors"))
    assert weights_sha256(bare) != weights_sha256(base / "sharded")
    (bare / "t0-2.safetensors").unlink()
    with pytest.raises(InputError, match="shard file 't0-2.safetensors' is missing"):
        weights_sha256(bare)

def test_single_file_identity_is_unchanged_and_artifacts_of_sharded_models_pair_with_them(base, tmp_path):
    """A model.safetensors model's identity is still its recorded sha256. An artifact converted
    from a sharded model records the model's identity (before: its per-file map, which no check
    could match, so compare/drift refused an artifact against its own source)."""
    from lowprec.checkpoint.float_model import weights_sha256

    cfg = json.loads((base / "model" / "config.json").read_text())
    assert weights_sha256(base / "model") == cfg["sha256"]["model.safetensors"]
    art = tmp_path / "art"
    assert run("convert", "--model", base / "sharded", "--precision", "int4", "--out", art).exit_code == 0
    source = json.loads((art / "manifest.json").read_text())["source"]["sha256"]
    assert source == weights_sha256(base / "sharded")
    r = run("compare", "--reference", base / "sharded", "--candidate", art, "--data", base / "data", "--windows", "1")
    assert r.exit_code == 0, r.output


def test_records_of_the_older_sharded_identity_are_refused_saying_why(base, tmp_path):
    """lowprec <= 0.1.0 hashed a sharded model's per-file map without the index: such a record no
    longer matches, and the refusal says why rather than only "another model"."""
    from lowprec.checkpoint.convert import check_calibration_model
    from lowprec.errors import InputError
    from lowprec.checkpoint.float_model import weights_sha256

    recorded = json.loads((base / "sharded" / "config.json").read_text())["sha256"]
    old = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()
    with pytest.raises(InputError, match=f"recorded by an older lowprec.*left out {INDEX}"):
        check_calibration_model({"model_sha256": old}, weights_sha256(base / "sharded"), base / "sharded")
    with pytest.raises(InputError) as exc:
        check_calibration_model({"model_sha256": "0" * 64}, weights_sha256(base / "sharded"), base / "sharded")
    assert "older lowprec" not in str(exc.value)


def test_a_tensor_missing_from_the_index_is_named(base, tmp_path):
    """Before: "t0-0.safetensors is listed with a sha256 but holds no tensor read here"."""
    shutil.copytree(base / "sharded", tmp_path / "m")
    index = json.loads((tmp_path / "m" / INDEX).read_text())
    del index["weight_map"][TABLE]
    (tmp_path / "m" / INDEX).write_text(json.dumps(index))
    for cmd in (("eval", "--data", base / "data", "--windows", "1"),
                ("convert", "--precision", "int4", "--out", tmp_path / "a")):
        r = run(cmd[0], "--model", tmp_path / "m", *cmd[1:])
        assert r.exit_code == 2 and f"tensors do not match config.json (missing ['{TABLE}']" in r.output, r.output


def test_a_table_in_row_shards_is_looked_up_by_part_not_joined(tmp_path):
    """Before: loading joined a sharded table into anonymous memory (torch.cat of the parts), so a
    row-sharded model needed its tables' bytes in RAM. Now the lookups gather each batch's rows from
    the parts: the same logits bit for bit (multi-hot bags, ids in every part), no table-sized tensor."""
    import torch

    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.model.parted import PartedBag

    ds = Dataset(make_tiny_dataset(tmp_path / "d", windows=1, rows=400, tables=(60, 20, 8), hotness=(4, 1, 2)))
    random_float_model(ds, tmp_path / "m")
    shard_model(tmp_path / "m", tmp_path / "s", bounds=((0, 7), (7, 8), (8, 60)))
    one, _ = load_float_model(tmp_path / "m")
    parted, _ = load_float_model(tmp_path / "s")
    assert isinstance(parted.embeddings[0], PartedBag)
    assert all(p.shape != (60, 8) for p in parted.parameters())  # the table is not a parameter copy
    dense, sparse, _ = ds.arrays(0)
    dense, sparse = torch.from_numpy(dense.copy()), torch.from_numpy(sparse.copy()).long()
    with torch.no_grad():
        assert torch.equal(one(dense, sparse), parted(dense, sparse))
    assert torch.equal(parted.state_dict()[TABLE], one.state_dict()[TABLE])  # (joined on demand)
    said = [run("eval", "--model", tmp_path / m, "--data", tmp_path / "d", "--windows", "0", "--json") for m in "sm"]
    assert said[0].exit_code == 0 and said[0].output.splitlines()[-1] == said[1].output.splitlines()[-1], said[0].output


def test_a_step_needing_a_sharded_table_whole_is_refused_naming_it_and_its_bytes(base, monkeypatch):
    """search's table forms need the whole table: joining it where the process may not allocate
    it is an InputError naming the table and the bytes (not an out-of-memory hint about --batch-size)."""
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.checkpoint.mapped import LogicalTable
    from lowprec.errors import InputError

    model, _ = load_float_model(base / "sharded")

    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(LogicalTable, "tensor", no_memory)
    with pytest.raises(InputError, match=r"table 't0' \(embeddings.0.bag.weight\) is stored in 3 row shards, "
                                         r"and this step needs it whole in memory \(1,920 bytes\)"):
        model.embeddings[0].weight


def test_any_npy_read_refuses_a_fifo_without_blocking(tmp_path):
    """read_npy (window files, and every other .npy lowprec maps) checks before np.load opens."""
    import signal

    from lowprec.data.npyfiles import read_npy
    from lowprec.errors import InputError

    os.mkfifo(tmp_path / "x.npy")

    def timed_out(*_):
        raise TimeoutError("read_npy blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(20)  # a regression fails here instead of hanging the run
    try:
        with pytest.raises(InputError, match=r"x.npy: not a regular file \(a FIFO\)"):
            read_npy(tmp_path / "x.npy")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_drift_history_of_the_older_sharded_identity_is_refused_saying_why(base, tmp_path):
    from lowprec.checkpoint.float_model import weights_sha256
    from lowprec.drift.store import DriftStore
    from lowprec.errors import InputError

    recorded = json.loads((base / "sharded" / "config.json").read_text())["sha256"]
    old = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()
    with DriftStore(tmp_path / "db.sqlite") as store:
        store.check_pair(str(base / "sharded"), old, str(base / "art"), "c" * 64)
        with pytest.raises(InputError, match=f"another pair.*recorded by an older lowprec.*left out {INDEX}"):
            store.check_pair(str(base / "sharded"), weights_sha256(base / "sharded"), str(base / "art"), "c" * 64)
