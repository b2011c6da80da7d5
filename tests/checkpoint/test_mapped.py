"""The read-only tensor reader: headers, index files, row shards, sha256 streaming, bad input."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lowprec.checkpoint.mapped import open_tensors
from lowprec.checkpoint.safetensors_file import MappedFile
from lowprec.errors import InputError


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(37, 8, generator=g),
        "b": torch.randn(5, generator=g).half(),
        "c": torch.randint(0, 255, (3, 4, 2), generator=g, dtype=torch.uint8),
        "s": torch.tensor(3.5),
        "e": torch.empty(0, 4),
        "bf": torch.randn(6, 2, generator=g).bfloat16(),
    }


def _mapping_of(address: int) -> str:
    """The /proc/self/maps line whose range holds `address`."""
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= address < hi:
            return line.strip()
    raise AssertionError(f"{address:#x} is not mapped")


def test_single_file_reads_back_equal_and_read_only(tmp_path):
    ts = _tensors()
    save_file(ts, str(tmp_path / "m.safetensors"))
    src = open_tensors(tmp_path / "m.safetensors")
    assert sorted(src.names()) == sorted(ts)
    for name, t in ts.items():
        got = src.tensor(name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
    a = src.tensor("a")
    assert _mapping_of(a.data_ptr()).split()[1] == "r--s"  # a view of the read-only shared mapping
    assert _mapping_of(a.data_ptr()).endswith("m.safetensors")
    assert src.table("a").rows(3, 9).data_ptr() == a[3:9].data_ptr()


def test_index_file_over_shards(tmp_path):
    ts = _tensors(1)
    save_file({k: ts[k] for k in ("a", "b")}, str(tmp_path / "part-1.safetensors"))
    (tmp_path / "sub").mkdir()
    save_file({k: ts[k] for k in ("c", "s", "e", "bf")}, str(tmp_path / "sub" / "part-2.safetensors"))
    wmap = {k: "part-1.safetensors" if k in ("a", "b") else "sub/part-2.safetensors" for k in ts}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": wmap}))
    src = open_tensors(index)
    for name, t in ts.items():
        assert torch.equal(src.tensor(name), t)


def _row_sharded(tmp_path, table: torch.Tensor, cuts: list[int]) -> open_tensors:
    parts = []
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        save_file({f"shard{i}": table[lo:hi].contiguous(), "other": torch.ones(2)},
                  str(tmp_path / f"rows-{i}.safetensors"))
        parts.append({"file": f"rows-{i}.safetensors", "tensor": f"shard{i}", "rows": [lo, hi]})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"embeddings.3.bag.weight": parts}}))
    return open_tensors(index)


def test_row_shards_read_as_one_logical_table(tmp_path):
    table = torch.randn(100, 8)
    src = _row_sharded(tmp_path, table, [0, 30, 31, 64, 100])
    t = src.table("embeddings.3.bag.weight")
    assert t.shape == (100, 8) and t.dtype == torch.float32 and t.nbytes == 3200
    assert torch.equal(t.rows(0, 100), table)
    for a, b in [(0, 30), (29, 33), (31, 64), (50, 100), (7, 7), (99, 100)]:
        assert torch.equal(t.rows(a, b), table[a:b])
    chunks = list(t.iter_chunks(max_bytes=10 * 32))
    assert torch.equal(torch.cat([c for _, c in chunks]), table)
    assert [a for a, _ in chunks] == [0, 10, 20, 30, 31, 41, 51, 61, 64, 74, 84, 94]
    assert all(c.shape[0] <= 10 for _, c in chunks)
    assert src.shape("embeddings.3.bag.weight") == (100, 8)


def test_row_shards_with_gaps_or_mismatch_refused(tmp_path):
    table = torch.randn(20, 4)
    save_file({"x": table[:10].contiguous(), "y": table[10:].contiguous(), "h": table[10:, :2].contiguous()},
              str(tmp_path / "r.safetensors"))
    index = tmp_path / "i.safetensors.index.json"
    bad = [
        [{"file": "r.safetensors", "tensor": "x", "rows": [0, 10]}, {"file": "r.safetensors", "tensor": "y", "rows": [11, 21]}],
        [{"file": "r.safetensors", "tensor": "x", "rows": [0, 10]}, {"file": "r.safetensors", "tensor": "h", "rows": [10, 20]}],
        [{"file": "r.safetensors", "tensor": "x", "rows": [0, 9]}],
        [{"file": "r.safetensors", "tensor": "nope", "rows": [0, 10]}],
        [{"file": "r.safetensors", "rows": [0, 10]}],
    ]
    for parts in bad:
        index.write_text(json.dumps({"weight_map": {"t": parts}}))
        with pytest.raises(InputError, match="i.safetensors.index.json"):
            open_tensors(index)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "a/../../b.safetensors",
                                  "", "..\\x.safetensors"])
def test_index_paths_outside_its_directory_refused(tmp_path, name):
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": name}}))
    with pytest.raises(InputError, match="relative path"):
        open_tensors(index)
    index.write_text(json.dumps({"weight_map": {"a": [{"file": name, "tensor": "a", "rows": [0, 1]}]}}))
    with pytest.raises(InputError, match="relative path"):
        open_tensors(index)


def test_sha256_streams_while_reading(tmp_path):
    ts = _tensors(2)
    path = tmp_path / "m.safetensors"
    save_file(ts, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    seen = []
    src = open_tensors(path)
    src.expect_sha256({"m.safetensors": digest}, progress=seen.append)
    src.scan(lambda name, row, chunk: None, max_bytes=64)
    assert sum(seen) == path.stat().st_size  # hashed during the scan, not after it
    src.check_sha256()
    assert sum(seen) == path.stat().st_size  # every byte hashed exactly once
    src = open_tensors(path)
    src.expect_sha256({"m.safetensors": "0" * 64})
    src.tensor("a")
    with pytest.raises(InputError, match="m.safetensors: sha256 does not match"):
        src.check_sha256()


def _header_file(tmp_path, header: bytes, data: bytes = b"") -> str:
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return p


def test_header_errors_name_file_and_tensor(tmp_path):
    cases = {
        b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}': "tensor 'w'",
        b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 64]}}': "outside",
        b'{"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}': "dtype",
        b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}': "shape",
        b'[1, 2]': "not a JSON object",
        b'{"w": ': "not JSON",
    }
    for header, msg in cases.items():
        path = _header_file(tmp_path, header, bytes(16))
        with pytest.raises(InputError, match=msg) as err:
            MappedFile(path)
        assert "h.safetensors" in str(err.value)
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(InputError, match="too short"):
        open_tensors(tmp_path / "short.safetensors")
    with pytest.raises(InputError, match="missing tensor file"):
        open_tensors(tmp_path / "none.safetensors")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.booleans())
def test_fuzzed_headers_only_input_error(tmp_path, blob, with_length):
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes((struct.pack("<Q", len(blob)) if with_length else b"") + blob)
    try:
        src = open_tensors(p)
        for name in src.names():
            src.tensor(name)
    except InputError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=3), st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "U8", "F16", "X", 3]),
    "shape": st.lists(st.integers(-2, 5), max_size=3) | st.none(),
    "data_offsets": st.lists(st.integers(-4, 40), min_size=0, max_size=3),
}), max_size=3), st.integers(0, 40))
def test_fuzzed_json_headers_only_input_error(tmp_path, header, data):
    p = _header_file(tmp_path, json.dumps(header).encode(), bytes(data))
    try:
        src = open_tensors(p)
        for name in src.names():
            assert src.tensor(name).numel() * src.tensor(name).element_size() <= data
    except InputError:
        pass


def test_unmappable_file_is_input_error_naming_it_and_its_size(tmp_path, monkeypatch):
    import errno
    import mmap

    save_file({"a": torch.ones(10)}, str(tmp_path / "m.safetensors"))
    size = (tmp_path / "m.safetensors").stat().st_size

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    with pytest.raises(InputError, match=rf"m.safetensors: cannot map {size} bytes read-only"):
        open_tensors(tmp_path / "m.safetensors")
