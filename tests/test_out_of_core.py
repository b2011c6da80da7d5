"""Models larger than the memory a process may use: every command works through read-only mappings.

The acceptance test runs convert, eval (float and artifact), calibrate and search on a 512 MB
model in one child whose RLIMIT_DATA (private writable memory: heap, anonymous mappings) is the
interpreter's baseline plus half the model; read-only file mappings do not count against it. (Half,
not a third: search and eval hold fixed-size buffers, e.g. 1M-bin AUC histograms, of ~90 MB.) A loader that copies the
model into memory (safetensors' load_file, the old loader) fails there. Also: streamed writing,
index/row-shard models, FBGEMM min/max blocks against the reference path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import load_float_model, save_float_model, write_float_model
from lowprec.checkpoint.tensorfile import TensorFileWriter
from lowprec.data.dataset import Dataset
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.quant import fbgemm_minmax, rowwise
from lowprec.train import TrainConfig, model_config_for
from tests.helpers import make_tiny_dataset

BIG_ROWS = 2_000_000  # x 64 dims x 4 bytes = 512 MB: table t0


def _pieces(seed: int, block_rows: int = 1 << 17):
    """Random weights (uniform in +-0.1) in row blocks, never the whole tensor at once."""
    def pieces(name: str, shape: tuple[int, ...]):
        g = torch.Generator().manual_seed(seed + sum(map(ord, name)))
        for start in range(0, shape[0], block_rows):
            yield torch.empty((min(block_rows, shape[0] - start), *shape[1:])).uniform_(-0.1, 0.1, generator=g)
    return pieces


def test_writer_streams_pieces_and_safetensors_reads_it(tmp_path):
    t = torch.randn(10, 6)
    w = TensorFileWriter(tmp_path / "x.safetensors", metadata={"k": "v"}, header_reserve=16)
    w.add("a", torch.arange(5, dtype=torch.uint8))
    with w.stream("t", torch.float32, (10, 6)) as put:
        for piece in t.split(3):
            put(piece)
    with pytest.raises(ValueError, match="bytes written"):
        with w.stream("short", torch.float32, (2, 2)) as put:
            put(torch.ones(1, 2))
    w.close()  # the header outgrew its 16-byte reserve: rewritten once
    got = load_file(str(tmp_path / "x.safetensors"))
    assert torch.equal(got["t"], t) and torch.equal(got["a"], torch.arange(5, dtype=torch.uint8))


@pytest.mark.parametrize("reserve", [16, 64 << 10])  # the header outgrows its reserve, or fits it
def test_writer_aligns_tensors_asked_to_on_cache_lines(tmp_path, reserve):
    """align=64 tensors start at a file offset that is a multiple of 64 (tables are served in place
    from the mapping: fp16 rows at 8 mod 64 straddled cache lines); the pads are zero-filled
    entries, every byte stays indexed, and safetensors reads every tensor back unchanged."""
    import json as _json
    import struct

    from lowprec.checkpoint.tensorfile import ALIGN, PAD_PREFIX

    path = tmp_path / "x.safetensors"
    w = TensorFileWriter(path, header_reserve=reserve)
    parts = {"odd": torch.arange(13, dtype=torch.uint8), "t0": torch.randn(7, 8, dtype=torch.float16),
             "small": torch.arange(3, dtype=torch.int32), "t1": torch.randn(5, 3)}
    w.add("odd", parts["odd"])
    w.add("t0", parts["t0"], align=ALIGN)
    w.add("small", parts["small"])
    with w.stream("t1", torch.float32, (5, 3), align=ALIGN) as put:
        put(parts["t1"])
    w.close()
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = _json.loads(raw[8:8 + n])
    assert (8 + n) % ALIGN == 0
    for name in ("t0", "t1"):
        assert (8 + n + header[name]["data_offsets"][0]) % ALIGN == 0, name
    spans = sorted(v["data_offsets"] for v in header.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no holes
    got = load_file(str(path))
    assert all(torch.equal(got[k], v) for k, v in parts.items())
    pads = [k for k in got if k.startswith(PAD_PREFIX)]
    assert pads and all(int(got[k].sum()) == 0 for k in pads)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fbgemm_minmax_blocks_equal_reference_path(monkeypatch, bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(1001, 16, generator=g) * torch.rand(1001, 1, generator=g) * 3
    x[7] = 0.25  # constant row
    monkeypatch.setattr(fbgemm_minmax, "_FBGEMM_BLOCK", 16 * 97)  # many blocks, a ragged last one
    fast = fbgemm_minmax.fbgemm_minmax_rows(x, bits)
    ref = torch.empty_like(fast)
    enc = rowwise._encode_minmax(x, bits)
    rowwise._packed_codes(x, bits, enc, ref[:, 4:])
    ref[:, :4] = torch.cat((enc.scale, enc.bias), 1).half().view(torch.uint8)
    assert torch.equal(fast, ref)
    x[900, 3] = float("nan")
    assert fbgemm_minmax.fbgemm_minmax_rows(x, bits) is None
    with pytest.raises(ValueError, match="row 900"):
        rowwise.fused_rows(x, bits)


def _reference_rows(x, bits):
    enc = rowwise._encode_minmax(x, bits)
    ref = torch.empty(x.shape[0], rowwise.fused_row_bytes(x.shape[1], bits), dtype=torch.uint8)
    rowwise._packed_codes(x, bits, enc, ref[:, 4:])
    ref[:, :4] = torch.cat((enc.scale, enc.bias), 1).half().view(torch.uint8)
    return ref


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fbgemm_minmax_large_values_same_bytes_or_same_refusal(monkeypatch, bits):
    """Without a magnitude limit of its own, the FBGEMM path takes exactly the tables the reference
    accepts (finite values, fp16 scale and bias) and gives the same bytes; the rest it hands back."""
    monkeypatch.setattr(fbgemm_minmax, "_FBGEMM_BLOCK", 16 * 7)
    g = torch.Generator().manual_seed(bits)
    u = torch.rand(50, 16, generator=g)
    cases = {"wide": u * 130000 - 65000, "edge": torch.full((50, 16), -65504.0), "tall": torch.cat((torch.zeros(50, 1), u[:, 1:] * 500000), 1),
             "tiny": u * 1e-6 - 5e-7}
    for name, x in cases.items():
        try:
            ref = _reference_rows(x, bits)
        except ValueError:
            ref = None
        fast = fbgemm_minmax.fbgemm_minmax_rows(x, bits)
        assert (fast is None) == (ref is None), name
        assert ref is None or torch.equal(fast, ref), name
    tall = fbgemm_minmax.fbgemm_minmax_rows(cases["tall"], bits)
    assert (tall is None) == (bits == 2)  # int2's scale 500000 / 3 is beyond fp16; int4's is not
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = u.clone()
        x[-1, -1] = bad  # the last value of the last (ragged) block
        assert fbgemm_minmax.fbgemm_minmax_rows(x, bits) is None
        with pytest.raises(ValueError, match="row 49"):
            rowwise.fused_rows(x, bits)


def test_output_mapping_reused_only_when_free():
    a = fbgemm_minmax.huge_empty(8 << 20)
    b = fbgemm_minmax.huge_empty(8 << 20)
    assert a.data_ptr() != b.data_ptr()  # `a` is alive
    a[:4] = 7
    ptr = b.data_ptr()
    del b
    c = fbgemm_minmax.huge_empty(6 << 20)
    assert c.data_ptr() == ptr and a[:4].tolist() == [7] * 4
    keep = c[:8]
    del c
    assert fbgemm_minmax.huge_empty(6 << 20).data_ptr() != ptr  # a view of it is alive
    del keep


def _small_model(tmp_path):
    ds = Dataset(make_tiny_dataset(tmp_path / "d", windows=2, rows=300, tables=(500, 20, 8)))
    from lowprec.model.dlrm import DLRM

    model = DLRM(model_config_for(ds.meta, TrainConfig(windows=(0,))))
    save_float_model(model, tmp_path / "m")
    return ds, model


def test_index_and_row_shard_model_loads_and_converts_like_one_file(tmp_path):
    ds, model = _small_model(tmp_path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_bytes((tmp_path / "m" / "config.json").read_bytes())
    big = "embeddings.0.bag.weight"
    save_file({k: v for k, v in state.items() if k != big}, str(sharded / "rest.safetensors"))
    wmap: dict = {k: "rest.safetensors" for k in state if k != big}
    wmap[big] = []
    for i, (lo, hi) in enumerate([(0, 120), (120, 121), (121, 500)]):
        save_file({"rows": state[big][lo:hi].contiguous()}, str(sharded / f"t0-{i}.safetensors"))
        wmap[big].append({"file": f"t0-{i}.safetensors", "tensor": "rows", "rows": [lo, hi]})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    cfg = json.loads((sharded / "config.json").read_text())
    cfg["sha256"] = {}  # these files were not written by lowprec: nothing recorded to check
    (sharded / "config.json").write_text(json.dumps(cfg))
    loaded, _ = load_float_model(sharded)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    plan = Plan.uniform(Precision.INT4)
    convert(tmp_path / "m", plan, tmp_path / "a1", chunk_bytes=4096)
    convert(sharded, plan, tmp_path / "a2", chunk_bytes=1 << 20)
    a1, a2 = (load_file(str(tmp_path / a / "weights.safetensors")) for a in ("a1", "a2"))
    assert a1.keys() == a2.keys() and all(torch.equal(a1[k], a2[k]) for k in a1)


@pytest.mark.parametrize("precision", [Precision.INT4, Precision.INT8, Precision.FP8, Precision.FP16])
def test_convert_names_the_table_row_of_a_nan_in_a_later_chunk(tmp_path, precision):
    """Encoders that refuse NaN/Inf are not preceded by a separate pass over each chunk; the error
    still names the row in the table (not in the chunk), as the pre-pass (FP8's) does."""
    from lowprec.errors import InputError

    _small_model(tmp_path)
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    state["embeddings.0.bag.weight"][333, 2] = float("nan")
    save_file(state, str(weights))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["sha256"] = {}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="row 333 holds NaN or Inf"):
        convert(tmp_path / "m", Plan.uniform(precision), tmp_path / "a", chunk_bytes=4096)
    assert not (tmp_path / "a").exists()


def test_tampered_model_fails_after_streaming_and_writes_nothing(tmp_path):
    _, _ = _small_model(tmp_path)
    path = tmp_path / "m" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    from lowprec.errors import InputError

    with pytest.raises(InputError, match="model.safetensors: sha256 does not match"):
        convert(tmp_path / "m", Plan.uniform(Precision.INT8), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(InputError, match="sha256 does not match"):
        load_float_model(tmp_path / "m")


_CHILD = """
import ctypes, gc, json, resource, sys
import torch, fbgemm_gpu, lowprec.cli, lowprec.serve.runtime, lowprec.search.driver
from lowprec.cli import main
baseline = int([l for l in open("/proc/self/status") if l.startswith("VmData")][0].split()[1]) * 1024
limit = baseline + {extra}
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
for args in json.loads(sys.argv[1]):
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            sys.exit(f"{{args[0]}} exited {{exc.code}}")
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # as a new process would start: the CLI keeps freed heap
    vm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmData")][0]
    print("DONE", args[0], (int(vm) * 1024 - baseline) >> 20, "MiB above baseline", flush=True)
if len(sys.argv) > 2:  # the old loader: safetensors' load_file copies the model into memory
    import safetensors.torch
    try:
        safetensors.torch.load_file(sys.argv[2])
    except Exception as exc:
        print("OLD LOADER FAILED", type(exc).__name__, exc)
"""


def _run_limited(extra: int, steps: list[tuple], old_loader_on: Path | None = None) -> subprocess.CompletedProcess:
    """Run CLI commands one after another in one child whose RLIMIT_DATA is its own VmData after
    importing torch, fbgemm_gpu and the CLI (the interpreter's baseline) plus `extra` bytes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    steps_json = json.dumps([[str(a) for a in s] for s in steps])
    extra_args = [str(old_loader_on)] if old_loader_on else []
    return subprocess.run([sys.executable, "-c", _CHILD.format(extra=extra), steps_json, *extra_args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_commands_run_with_data_limit_far_below_model_size(tmp_path):
    ds_dir = make_tiny_dataset(tmp_path / "d", windows=3, rows=2000, tables=(BIG_ROWS, 20, 8))
    config = model_config_for(Dataset(ds_dir).meta, TrainConfig(windows=(0,), embedding_dim=64))
    model = write_float_model(tmp_path / "m", config, _pieces(0))
    size = (model / "model.safetensors").stat().st_size
    assert size > 512e6
    art, calib, plan = tmp_path / "art", tmp_path / "calib.json", tmp_path / "plan.json"
    art32 = tmp_path / "art32"  # (converted here: convert's fp32 chunks take 256 MB, the whole limit)
    convert(model, Plan.uniform(Precision.FP32), art32)
    steps = [
        ("convert", "--model", model, "--precision", "int4", "--out", art),
        ("eval", "--model", model, "--data", ds_dir, "--windows", "2", "--json"),
        ("eval", "--model", art, "--data", ds_dir, "--windows", "2", "--json"),
        # QA 8d item 4: the fp32 artifact's finite check took 1M rows a block (320 MB of temporaries here)
        ("eval", "--model", art32, "--data", ds_dir, "--windows", "2", "--json"),
        ("shard", art32, "--ranks", "1"),
        ("calibrate", "--model", model, "--data", ds_dir, "--windows", "1", "--out", calib),
        ("search", "--model", model, "--data", ds_dir, "--calib-windows", "1", "--eval-windows", "2",
         "--precisions", "fp32,int8,int4", "--out", plan),
    ]
    r = _run_limited(size // 2, steps, old_loader_on=model / "model.safetensors")
    assert r.returncode == 0, (r.stdout[-1000:], r.stderr[-3000:])
    assert r.stdout.count("DONE") == len(steps)
    assert json.loads(plan.read_text())["tables"] and (art / "manifest.json").is_file()
    # search validated under the limit (rows-subset conversion) and removed its scratch directory
    assert json.loads(plan.read_text())["rounds"] >= 1
    assert not list(tmp_path.glob("*.validate*")) and not list(tmp_path.glob(".*.validate.tmp-*"))
    # The check has teeth: the old loader (a copy of the model in memory) fails the same limit.
    assert "OLD LOADER FAILED" in r.stdout and "memory" in r.stdout.lower(), r.stdout[-1000:]
    # QA 8d item 1: the sharded loader mapped the artifact with safetensors' safe_open (private and
    # writable: counted whole against the limit). One rank holds every shard here, so it needs the
    # table's bytes once (its TBE), not twice.
    r = _run_code(size + size // 2, _SHARDED.format(art=str(art32), data=str(ds_dir)))
    assert r.returncode == 0 and "SCORED 64" in r.stdout, (r.stdout[-1000:], r.stderr[-3000:])
    r = _run_code(size + size // 2, _SHARDED_OLD.format(art=str(art32)))  # the old mapping: refused there
    assert "OLD MAPPING FAILED" in r.stdout, (r.stdout[-1000:], r.stderr[-3000:])


_LIMIT = """
import resource
import torch, fbgemm_gpu, lowprec.serve.sharded
baseline = int([l for l in open("/proc/self/status") if l.startswith("VmData")][0].split()[1]) * 1024
limit = baseline + {extra}
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
"""

_SHARDED = """
import torch.distributed as tdist
from lowprec.data.dataset import Dataset
from lowprec.serve.sharded import load_sharded
tdist.init_process_group("gloo", init_method="file://" + {art!r} + ".pg", world_size=1, rank=0)
model = load_sharded({art!r})
dense, sparse, _ = Dataset({data!r}).arrays(2)
with torch.no_grad():
    out = model(torch.as_tensor(dense[:64]), torch.as_tensor(sparse[:64]))
print("SCORED", len(out), flush=True)
"""

_SHARDED_OLD = """
from safetensors import safe_open
from lowprec.serve.sharded import load_sharded
held = []
try:
    with safe_open({art!r} + "/weights.safetensors", framework="pt") as src:
        held.append(src.get_slice("tables." + src.keys()[0])[:1])
        load_sharded({art!r})
except Exception as exc:
    print("OLD MAPPING FAILED", type(exc).__name__, exc)
"""


def _run_code(extra: int, code: str) -> subprocess.CompletedProcess:
    """`code` in a child whose RLIMIT_DATA is its baseline (torch, fbgemm_gpu, lowprec imported) plus `extra`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-c", _LIMIT.format(extra=extra) + code],
                          capture_output=True, text=True, env=env, timeout=300)


def test_row_sharded_model_runs_with_data_limit_below_its_table(tmp_path):
    """qa-1b item 3: a table stored in row-range shards was joined into anonymous memory on loading,
    so eval of the MLPerf-style layout needed the table's bytes in RAM. Now it is looked up shard by
    shard: eval, calibrate and compare run with a data limit of half the table (256 MB)."""
    from lowprec.checkpoint.mapped import open_tensors
    from lowprec.fileio import sha256_file

    ds_dir = make_tiny_dataset(tmp_path / "d", windows=2, rows=2000, tables=(BIG_ROWS // 2, 20, 8))
    config = model_config_for(Dataset(ds_dir).meta, TrainConfig(windows=(0,), embedding_dim=64))
    single = write_float_model(tmp_path / "m", config, _pieces(0))
    src, big, out = open_tensors(single / "model.safetensors"), "embeddings.0.bag.weight", tmp_path / "sharded"
    out.mkdir()
    save_file({k: src.tensor(k) for k in src.names() if k != big}, str(out / "rest.safetensors"))
    wmap: dict = {k: "rest.safetensors" for k in src.names() if k != big}
    half = BIG_ROWS // 4 + 3
    wmap[big] = [{"file": f"t0-{i}.safetensors", "tensor": "rows", "rows": [lo, hi]}
                 for i, (lo, hi) in enumerate([(0, half), (half, BIG_ROWS // 2)])]
    for part in wmap[big]:
        save_file({"rows": src.table(big).rows(*part["rows"])}, str(out / part["file"]))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    cfg = json.loads((single / "config.json").read_text())
    cfg["sha256"] = {f.name: sha256_file(f) for f in out.glob("*.safetensors")}  # (compare pairs by it)
    (out / "config.json").write_text(json.dumps(cfg))
    size = src.table(big).nbytes
    steps = [("eval", "--model", out, "--data", ds_dir, "--windows", "1", "--json"),
             ("calibrate", "--model", out, "--data", ds_dir, "--windows", "1", "--out", tmp_path / "c.json"),
             ("convert", "--model", out, "--precision", "int8", "--out", tmp_path / "a"),
             ("compare", "--reference", out, "--candidate", tmp_path / "a", "--data", ds_dir, "--windows", "1")]
    r = _run_limited(size // 2, steps)
    assert r.returncode == 0, (r.stdout[-1000:], r.stderr[-3000:])
    assert r.stdout.count("DONE") == len(steps)


@pytest.mark.parametrize("precision", [Precision.INT4, Precision.FP16, Precision.FP32])
def test_artifact_row_check_runs_in_blocks_and_finds_a_nan_in_a_later_one(monkeypatch, precision):
    """Loading checks stored floats a block of rows at a time (not a table-sized temporary: 1 GB of
    anonymous memory for the 30 GB model's int4 artifact before), and still finds any NaN."""
    from lowprec.checkpoint import validate as checks
    from lowprec.errors import InputError

    width = precision.bytes_per_row(16)
    monkeypatch.setattr(checks, "_CHECK_BYTES", 7 * width)  # blocks of 7 rows
    rows = torch.zeros(50, width, dtype=torch.uint8)
    checks.check_table_rows("t", precision, 16, rows, "art")
    dtype = torch.float32 if precision is Precision.FP32 else torch.float16
    rows[45, : dtype.itemsize] = torch.tensor([float("nan")], dtype=dtype).view(torch.uint8)
    with pytest.raises(InputError, match="NaN"):
        checks.check_table_rows("t", precision, 16, rows, "art")
