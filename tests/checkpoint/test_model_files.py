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
