"""The Criteo TSV reader through the CLI: exact values, empty fields, gzip, bad rows, atomicity."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowprec.cli import main
from lowprec.data.batches import iter_batches
from lowprec.data.criteo import N_DENSE, N_SPARSE, parse_chunk, parse_line, parse_table_sizes
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError

SIZE = 1000


def row(label="1", ints=None, cats=None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(N_DENSE)]
    cats = cats if cats is not None else [f"{0xa0 + j:08x}" for j in range(N_SPARSE)]
    return "\t".join([label, *ints, *cats])


def expected(r: str) -> tuple[int, np.ndarray, np.ndarray]:
    parts = r.split("\t")
    dense = np.array([np.log1p(max(int(x), 0)) if x else 0.0 for x in parts[1:14]], dtype=np.float32)
    ids = np.array([1 + int(x, 16) % (SIZE - 1) if x else 0 for x in parts[14:]], dtype=np.int32)
    return int(parts[0]), dense, ids


GOOD = [
    row("1"),
    row("0", ints=[""] * N_DENSE, cats=[""] * N_SPARSE),  # every optional field empty
    row("0", ints=["-2", "", "7", "123456789"] + ["1"] * 9, cats=["", "FFFFFFFF"] + ["0badf00d"] * 24),
]
BAD = {  # line content -> reason fragment
    "1\t2\t3": "fields",
    row("1", ints=["x1"] + ["0"] * 12): "int_0",
    row("1", ints=["9" * 19] + ["0"] * 12): "is not an integer (<= 18 characters)",  # past int64: says why
    row("2"): "label",
    row("0", cats=["zz12"] + ["1"] * 25): "cat_0",
}


def run(*args: str):
    return CliRunner().invoke(main, ["data", "prepare", "--format", "criteo-tsv", *args])


@pytest.fixture
def tsv(tmp_path: Path) -> tuple[Path, Path]:
    plain = tmp_path / "day_0.tsv"
    lines = [GOOD[0], *list(BAD)[:2], GOOD[1], "", *list(BAD)[2:], GOOD[2]]
    plain.write_text("\r\n".join(lines) + "\n")
    gz = tmp_path / "day_1.tsv.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("\n".join([GOOD[2], GOOD[0]]))  # no trailing newline
    return plain, gz


def test_good_rows_exact_and_bad_rows_reported(tsv, tmp_path):
    plain, gz = tsv
    out = tmp_path / "out"
    res = run("--input", str(plain), str(gz), "--out", str(out), "--table-size", str(SIZE), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["windows"] == 2 and summary["rows"] == 5 and summary["bad_rows"] == 5
    assert summary["window_labels"] == ["day_0.tsv", "day_1.tsv.gz"]
    for line_no, frag in zip([2, 3, 6, 7, 8], BAD.values()):  # 1-based lines in day_0.tsv
        msg = next(m for m in res.stderr.splitlines() if f"{plain}:{line_no}:" in m)
        assert frag in msg
    ds = Dataset(out)
    for w, rows in ((0, GOOD), (1, [GOOD[2], GOOD[0]])):
        dense, sparse, labels = ds.arrays(w)
        for i, r in enumerate(rows):
            lab, d, ids = expected(r)
            assert labels[i] == lab
            np.testing.assert_array_equal(dense[i], d)
            np.testing.assert_array_equal(sparse[i], ids)
    prov = ds.meta.provenance
    assert prov["bad_rows"]["count"] == 5
    assert prov["bad_rows"]["by_reason"] == {"field count": 1, "hex": 1, "integer": 2, "label": 1}
    assert [i["rows"] for i in prov["inputs"]] == [3, 2] and len(prov["inputs"][1]["sha256"]) == 64
    assert ds.meta.num_embeddings == [SIZE] * N_SPARSE and len(ds.meta.dense_names) == N_DENSE
    batches = list(iter_batches(ds, [0, 1], batch_size=2))
    assert sum(len(b) for b in batches) == 5


def test_max_bad_rows_zero_writes_nothing(tsv, tmp_path):
    plain, _ = tsv
    out = tmp_path / "out"
    res = run("--input", str(plain), "--out", str(out), "--max-bad-rows", "0")
    assert res.exit_code == 2
    assert f"{plain}:2:" in res.output and "--max-bad-rows 0" in res.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day_0.tsv", "day_1.tsv.gz"]
    assert run("--input", str(plain), "--out", str(out), "--max-bad-rows", "-1").exit_code == 0  # no limit


def test_failed_prepare_keeps_existing_dataset(tsv, tmp_path):
    plain, gz = tsv
    out = tmp_path / "out"
    assert run("--input", str(gz), "--out", str(out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = run("--input", str(plain), "--out", str(out), "--max-bad-rows", "0")
    assert res.exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day_0.tsv", "day_1.tsv.gz", "out"]


def test_rows_per_window_and_per_table_sizes(tsv, tmp_path):
    plain, gz = tsv
    sizes = ",".join(str(10 + j) for j in range(N_SPARSE))
    res = run("--input", str(plain), "--input", str(gz), "--out", str(tmp_path / "o"),
              "--rows-per-window", "2", "--table-size", sizes, "--json")
    assert res.exit_code == 0, res.output
    ds = Dataset(tmp_path / "o")
    assert [w.rows for w in ds.meta.windows] == [2, 2, 1]
    assert [w.start for w in ds.meta.windows] == ["0", "2", "4"]
    assert ds.meta.num_embeddings == [10 + j for j in range(N_SPARSE)]
    _, sparse, _ = ds.arrays(0)
    assert sparse[0, 5] == 1 + int(f"{0xa0 + 5:08x}", 16) % (15 - 1)


def test_bad_inputs_exit_2(tsv, tmp_path):
    plain, gz = tsv
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gz.read_bytes()[:-12])
    res = run("--input", str(broken), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "broken.gz" in res.output
    assert run("--input", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o")).exit_code == 2
    assert run("--input", str(plain), "--out", str(tmp_path / "o"), "--table-size", "1").exit_code == 2
    assert run("--input", str(plain), "--out", str(tmp_path / "o"), "--window", "year").exit_code == 2
    assert not (tmp_path / "o").exists()


def test_out_may_not_replace_inputs_or_foreign_dirs(tsv, tmp_path):
    plain, _ = tsv
    assert run("--input", str(plain), "--out", str(tmp_path)).exit_code == 2
    assert plain.exists()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    res = run("--input", str(plain), "--out", str(foreign))
    assert res.exit_code == 2 and "not a lowprec dataset" in res.output
    assert (foreign / "keep.txt").read_text() == "mine"


def test_vectorized_parser_matches_reference():
    """parse_chunk (fast path) against parse_line (one line at a time, plain Python) on fuzzed lines."""
    rng = np.random.default_rng(0)
    mods = [int(m) for m in rng.integers(1, 2**31 - 2, N_SPARSE)]
    pool_int = [b"", b"0", b"7", b"-1", b"-", b"12a", b"1-2", b" 3", b"+4", b"9" * 18, b"9" * 19, b"1.5"]
    pool_hex = [b"", b"0", b"deadBEEF", b"68fd1e64", b"g1", b"0x1f", b"-1", b"f" * 16, b"f" * 17,
                b"1" * 64, b"1" * 65, b"a b", "é".encode()]
    lines = []
    for _ in range(3000):
        parts = [rng.choice([b"0", b"1", b"1", b"0", b"2", b"", b"01"])]
        parts += [pool_int[i] if rng.random() < 0.03 else str(rng.integers(0, 10**6)).encode()
                  for i in rng.integers(0, len(pool_int), N_DENSE)]
        parts += [pool_hex[i] if rng.random() < 0.03 else f"{rng.integers(0, 2**32):08x}".encode()
                  for i in rng.integers(0, len(pool_hex), N_SPARSE)]
        if rng.random() < 0.05:
            parts = parts[: rng.integers(1, len(parts))]
        lines.append(parts)
    labels, ints, ids, ok = parse_chunk(lines, np.asarray(mods))
    assert 0.05 < ok.mean() < 0.95
    for i, parts in enumerate(lines):
        ref = parse_line(parts, mods)
        assert ok[i] == (not isinstance(ref[0], str)), (i, parts, ref)
        if ok[i]:
            assert labels[i] == ref[0]
            assert ints[i].tolist() == [max(v, 0) for v in ref[1]]  # negative -> 0 either way
            assert ids[i].tolist() == ref[2]


def test_table_size_forms():
    assert parse_table_sizes("7") == [7] * N_SPARSE
    assert parse_table_sizes("kaggle")[:3] == [1461, 584, 10131228]
    assert parse_table_sizes("kaggle:100000")[:4] == [1461, 584, 100000, 100000]
    for bad in ("1", "x", "kaggle:x", "2,3", str(2**31)):
        with pytest.raises(InputError):
            parse_table_sizes(bad)


def test_an_empty_or_all_bad_day_is_warned_about_and_recorded(tsv, tmp_path):
    """It used to be written silently as a window of 0 rows that crashed eval, compare and drift."""
    plain, _ = tsv
    empty, bad = tmp_path / "day_2.tsv", tmp_path / "day_3.tsv"
    empty.write_text("")
    bad.write_text("1\t2\t3\n")
    res = run("--input", str(plain), str(empty), str(bad), "--out", str(tmp_path / "o"), "--table-size", str(SIZE))
    assert res.exit_code == 0, res.output
    assert "warning: window 1 ('day_2.tsv') holds no rows" in res.stderr
    assert "warning: window 2 ('day_3.tsv') holds no rows" in res.stderr
    meta = Dataset(tmp_path / "o").meta
    assert [w.rows for w in meta.windows] == [3, 0, 0]
    assert [m.split(" holds")[0] for m in meta.provenance["warnings"]] == ["window 1 ('day_2.tsv')",
                                                                          "window 2 ('day_3.tsv')"]
