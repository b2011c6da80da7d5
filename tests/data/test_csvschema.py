"""The CSV + TOML schema reader: encodings, multi-hot, calendar windows from unsorted input, bad rows,
and schema validation errors that name the key."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowprec.cli import main
from lowprec.data.batches import iter_batches
from lowprec.data.csvschema import load_schema, parse_time
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError

SCHEMA = """
label = "rating"
positive = ">= 4"
time = "when"

[dense.price]
transform = "log1p"

[dense.age]
column = "user_age"
fill = -1.0

[categorical.user]
num_embeddings = 100

[categorical.genres]
num_embeddings = 50
sep = "|"
hotness = 2

[categorical.country]
encoding = "vocab"
"""

HEADER = "when,user,rating,price,user_age,genres,country"
ROWS = [  # (line content, good?)
    ("2024-02-03T10:00:00Z,u1,5,3.5,30,a|b,fr", True),
    ("1706745600,u2,2,,41,c,de", True),  # unix seconds: 2024-02-01T00:00:00Z
    ("2024-01-15T08:00:00,u1,4,-2,,a|b|c,fr", True),  # naive ISO = UTC; 3 genres -> truncated
    ("2024-02-01T00:00:00+00:00,u3,1,10,25,,", True),  # same time as row 2; empty bag, empty vocab cell
    ("2024-01-20T00:00:00Z,u2,3,1,30,b", False),  # 6 fields
    ("2024-01-21T00:00:00Z,u2,x,1,30,b,de", False),  # label
    ("2024-01-22T00:00:00Z,u2,3,cheap,30,b,de", False),  # dense
    ("yesterday,u2,3,1,30,b,zz", False),  # time; its country must not enter the vocabulary
]


def h(v: str, n: int) -> int:
    return 1 + int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") % (n - 1)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA)
    data = tmp_path / "d.csv.gz"
    with gzip.open(data, "wt") as fh:
        fh.write("\n".join([HEADER] + [r for r, _ in ROWS]) + "\n")
    return data, schema


def run(*args: str):
    return CliRunner().invoke(main, ["data", "prepare", "--format", "csv", *args])


def test_month_windows_values_and_bad_rows(files, tmp_path):
    data, schema = files
    res = run("--input", str(data), "--schema", str(schema), "--out", str(tmp_path / "o"), "--window", "month",
              "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["window_labels"] == ["2024-01", "2024-02"] and summary["window_rows"] == [1, 3]
    assert summary["bad_rows"] == 4
    for line in (6, 7, 8, 9):
        assert f"{data}:{line}:" in res.stderr
    d = Dataset(tmp_path / "o")
    m = d.meta
    assert m.dense_names == ("price", "age") and m.sparse_names == ["user", "genres", "country"]
    assert m.hotness == [1, 2, 1] and m.num_embeddings == [100, 50, 3]  # vocab: fr, de + id 0
    assert m.windows[0].start == "2024-01-01T00:00:00Z" and m.windows[1].end == "2024-03-01T00:00:00Z"
    dense, sparse, labels = d.arrays(0)  # January: the naive-ISO row
    np.testing.assert_allclose(dense[0], [0.0, -1.0])  # log1p(max(-2, 0)); empty age -> fill
    assert sparse[0].tolist() == [h("u1", 100), h("a", 50), h("b", 50), 1] and labels[0] == 1
    dense, sparse, labels = d.arrays(1)  # February, sorted by time: u2 and u3 (same second, file order), u1
    assert labels.tolist() == [0, 0, 1]
    assert sparse[:, 0].tolist() == [h("u2", 100), h("u3", 100), h("u1", 100)]
    assert sparse[1].tolist()[1:] == [-1, -1, 0]  # empty multi-hot cell = empty bag; empty vocab cell = 0
    assert sparse[0].tolist()[1:] == [h("c", 50), -1, 2]
    np.testing.assert_allclose(dense[2], [np.log1p(3.5), 30.0], rtol=1e-6)
    assert json.loads((d.root / "vocab_country.json").read_text()) == ["<missing or unknown>", "fr", "de"]
    prov = m.provenance
    assert prov["multi_hot_truncated"] == {"genres": 1}
    assert prov["bad_rows"]["by_reason"] == {"dense": 1, "field count": 1, "label": 1, "time": 1}
    assert not (d.root / ".spool").exists()
    assert sum(len(b) for b in iter_batches(d, [0, 1], batch_size=2)) == 4


def test_file_and_rows_windows_and_value_labels(tmp_path):
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\npositive = ["click", "buy"]\n[dense.x]\n[categorical.c]\n'
                      'encoding = "vocab"\nnum_embeddings = 3\n')
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("y,x,c\nclick,1,p\nview,2,q\nbuy,3,r\n")
    b.write_text("c,x,y\nq,4,view\n")  # other column order
    res = run("--input", str(a), str(b), "--schema", str(schema), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    d = Dataset(tmp_path / "o")
    assert [w.label for w in d.meta.windows] == ["a.csv", "b.csv"]
    assert d.arrays(0)[2].tolist() == [1, 0, 1] and d.arrays(1)[2].tolist() == [0]
    assert d.arrays(0)[1][:, 0].tolist() == [1, 2, 0] and d.arrays(1)[1][:, 0].tolist() == [2]  # r overflows
    assert d.meta.provenance["vocab_overflow"] == {"c": 1}
    res = run("--input", str(a), str(b), "--schema", str(schema), "--out", str(tmp_path / "r"), "--window", "rows:3")
    assert res.exit_code == 0, res.output
    assert [w.rows for w in Dataset(tmp_path / "r").meta.windows] == [3, 1]


def test_max_bad_rows_zero_and_existing_output(files, tmp_path):
    data, schema = files
    out = tmp_path / "o"
    assert run("--input", str(data), "--schema", str(schema), "--out", str(out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = run("--input", str(data), "--schema", str(schema), "--out", str(out), "--max-bad-rows", "0")
    assert res.exit_code == 2 and f"{data}:6:" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    res = run("--input", str(data), "--schema", str(schema), "--out", str(tmp_path / "new"), "--max-bad-rows", "3")
    assert res.exit_code == 2 and not (tmp_path / "new").exists()


@pytest.mark.parametrize("text, fragment", [
    ('label = "y"\nlables = 1\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\n', "lables"),
    ('[dense.x]\n[categorical.c]\nnum_embeddings = 5\n', "'label'"),
    ('label = "y"\n[dense.x]\n[categorical.c]\n', "num_embeddings"),
    ('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 1\n', "num_embeddings"),
    ('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = "5"\n', "num_embeddings"),
    ('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\nhotness = 2\n', "hotness"),
    ('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\nsep = "|"\n', "hotness"),
    ('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\nsep = "|"\nhotness = 100000\n',
     r"'hotness' must be in \[1, 4096\]"),
    ('label = "y"\n[dense.x]\ntransform = "log"\n[categorical.c]\nnum_embeddings = 5\n', "transform"),
    ('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\nencoding = "onehot"\n', "encoding"),
    ('label = "y"\npositive = 4\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\n', "positive"),
    ('label = "y"\ntime_format = "epoch"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\n', "time_format"),
    ('label = "y"\n[categorical.c]\nnum_embeddings = 5\n', "dense"),
    ('label = "x"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\n', "label column"),
    ('label = "y"\n[dense.x\n', "TOML"),
    ('label = "y"\n[dense.x]\n[categorical.x]\nnum_embeddings = 5\n', "unique"),
    ('label = "y"\n[dense."a/b"]\n[categorical.c]\nnum_embeddings = 5\n', "letters"),
])
def test_schema_errors_name_the_key(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=fragment) as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_cli_schema_and_window_errors(files, tmp_path):
    data, schema = files
    bad = tmp_path / "bad.toml"
    bad.write_text('label = "y"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\nsep = "|"\n')
    res = run("--input", str(data), "--schema", str(bad), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "[categorical.c]" in res.output and "hotness" in res.output
    assert run("--input", str(data), "--out", str(tmp_path / "o")).exit_code == 2  # no --schema
    res = run("--input", str(data), "--schema", str(schema), "--out", str(tmp_path / "o"), "--window", "week")
    assert res.exit_code == 2
    other = tmp_path / "other.toml"
    other.write_text('label = "rating"\npositive = ">= 4"\n[dense.price]\n[categorical.nope]\nnum_embeddings = 5\n')
    res = run("--input", str(data), "--schema", str(other), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "nope" in res.output and f"{data}:1" in res.output
    for header in ("when,user,rating,price,user_age,genres,country,user", "when,user,rating,price,user_age,genres,country, rating "):
        twice = tmp_path / "twice.csv"
        twice.write_text(header + "\n" + ROWS[0][0] + ",x\n")
        res = run("--input", str(twice), "--schema", str(schema), "--out", str(tmp_path / "o"))
        assert res.exit_code == 2 and f"{twice}:1" in res.output and "more than once" in res.output and "ambiguous" in res.output
        assert header.split(",")[-1].strip() in res.output
    unused = tmp_path / "unused.csv"  # a repeated column the schema does not read is no ambiguity
    unused.write_text(HEADER + ",note,note\n" + ROWS[0][0] + ",a,b\n")
    assert run("--input", str(unused), "--schema", str(schema), "--out", str(tmp_path / "u")).exit_code == 0
    notime = tmp_path / "notime.toml"
    notime.write_text('label = "rating"\n[dense.price]\n[categorical.user]\nnum_embeddings = 5\n')
    res = run("--input", str(data), "--schema", str(notime), "--out", str(tmp_path / "o"), "--window", "year")
    assert res.exit_code == 2 and "time" in res.output
    assert not (tmp_path / "o").exists()


def test_parse_time():
    assert parse_time("1706745600", "auto") == 1706745600
    assert parse_time("1706745600000", "unix_ms") == 1706745600
    assert parse_time("2024-02-01T01:00:00+01:00", "iso") == 1706745600
    assert parse_time("2024-02-01", "auto") == 1706745600
    assert parse_time("2024-02-01", "unix") is None and parse_time("nan", "unix") is None


@pytest.mark.parametrize("text", ["2024-02-01t00:00:00z", "2024-02-01T00:00:00z", "2024-02-01t00:00:00Z",
                                  "2024-02-01 00:00:00.000z", "2024-02-01t01:00:00+01:00"])
def test_rfc3339_lowercase_z_and_t_are_times(text):
    """RFC 3339 allows a lowercase `z` and `t`; fromisoformat refuses the `z`: such rows were bad rows."""
    for fmt in ("iso", "auto"):
        assert parse_time(text, fmt) == 1706745600
    assert parse_time("2024-02-01T00:00:00x", "iso") is None and parse_time("2024-02-01tt00:00", "iso") is None


@pytest.mark.parametrize("positive", ['"=> 1"', '">= abc"', '"1.0"', '["yes", "1"]', '">= 1.2.3"', '">= inf"',
                                      '"<> 1"', '[]', '[""]'])
def test_a_positive_rule_that_does_not_parse_is_refused(tmp_path, positive):
    """A mistyped rule used to be read as an exact value no cell has: every label 0, exit 0."""
    path = tmp_path / "clicks.toml"
    path.write_text(f'label = "clicked"\npositive = {positive}\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\n')
    with pytest.raises(InputError, match=r"key 'positive'.*accepted: \">= 4\"") as info:
        load_schema(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("positive,cells,labels", [
    ('">= 1"', ["1", "1.0", "0"], [1, 1, 0]), ('"== 1"', ["1.00", "2", "1"], [1, 0, 1]),
    ('"click"', ["click", "view", "click"], [1, 0, 1]), ('["a", "b"]', ["a", "b", "c"], [1, 1, 0]),
])
def test_accepted_positive_rules(tmp_path, positive, cells, labels):
    path = tmp_path / "s.toml"
    path.write_text(f'label = "y"\npositive = {positive}\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\n')
    rule = load_schema(path).label
    assert [rule(c) for c in cells] == labels


def test_prepare_warns_about_a_window_with_one_label_class_or_no_rows(tmp_path):
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\npositive = "== 5"\n[dense.x]\n[categorical.c]\nnum_embeddings = 5\n')
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("y,x,c\n1,1,p\n0,2,q\n1,3,r\n")  # no 5: every label 0
    b.write_text("y,x,c\n")  # header only
    res = run("--input", str(a), str(b), "--schema", str(schema), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert "warning: window 0 ('a.csv') holds only negatives (3 rows, no positive label)" in res.stderr
    assert "warning: window 1 ('b.csv') holds no rows" in res.stderr
    warnings = Dataset(tmp_path / "o").meta.provenance["warnings"]
    assert len(warnings) == 2 and warnings[0].startswith("window 0 ('a.csv') holds only negatives")


@pytest.mark.parametrize("positive,cell,says", [
    (None, "1.0", 'is a number; without a `positive` key'),  # a dataframe export's float labels
    (None, "-1", 'positive = "> 0"'),
    (None, "maybe", "is none of 1/true/yes, 0/false/no"),
    (None, "Y", "list the values that mark a positive in the schema, e.g. positive = [\"Y\"] if 'Y' is one"),
    (None, " ", "the label is empty"),
    ('">= 4"', "x", 'not a finite number, which positive = ">= 4" compares'),
    ('"click"', "", "the label is empty"),
])
def test_a_label_cell_that_cannot_be_read_says_why_and_the_fix(tmp_path, positive, cell, says):
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\n' + (f"positive = {positive}\n" if positive else "")
                      + "[dense.x]\n[categorical.c]\nnum_embeddings = 5\n")
    data = tmp_path / "d.csv"
    data.write_text(f"y,x,c\n1,0.5,a\n0,0.5,a\n{cell},0.5,b\n" if positive is None else
                    f"y,x,c\n{'5' if '>' in positive else 'click'},0.5,a\n{'1' if '>' in positive else 'no'},0.5,a\n{cell},0.5,b\n")
    res = run("--input", str(data), "--schema", str(schema), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    line = next(m for m in res.stderr.splitlines() if f"bad row: {data}:4:" in m)
    assert says in line


def test_dense_values_past_float32_are_bad_rows_not_infinities(tmp_path):
    """Dense values are stored as float32: a cell finite as a double but not as a float would have
    become inf (and NaN losses in training). The limit is exact: the largest double that rounds to
    a finite float32 passes; log1p keeps every finite value in range."""
    limit = float(np.nextafter(2.0**128 - 2.0**103, 0))
    assert np.isfinite(np.float32(limit))
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\n[dense.x]\n[dense.z]\ntransform = "log1p"\n[categorical.c]\nnum_embeddings = 5\n')
    data = tmp_path / "d.csv"
    data.write_text("y,x,z,c\n" + "".join(f"{y},{x},{z},a\n" for y, x, z in [
        (1, repr(limit), "1e300", ), (0, "1", "1"), (1, "1e39", "1"), (0, "-3.5e38", "1")]))
    res = run("--input", str(data), "--schema", str(schema), "--out", str(tmp_path / "o"), "--json")
    assert res.exit_code == 0, res.output
    assert "x = '1e39' is beyond float32's range" in res.stderr and "x = '-3.5e38'" in res.stderr
    dense, _, _ = Dataset(tmp_path / "o").arrays(0)
    assert dense.shape == (2, 2) and np.isfinite(dense).all()
    assert dense[0, 0] == np.float32(limit) and dense[0, 1] == np.float32(np.log1p(1e300))
    big_fill = tmp_path / "f.toml"
    big_fill.write_text('label = "y"\n[dense.x]\nfill = 1e39\n[categorical.c]\nnum_embeddings = 5\n')
    with pytest.raises(InputError, match=r"\[dense.x\]: key 'fill' = 1e\+39 is beyond float32"):
        load_schema(big_fill)


def test_hashed_ids_equal_the_formula_before_and_past_the_collision_cap(monkeypatch):
    """Values seen before take their remembered id (no hashing); past the cap of remembered values
    every id is still hashed, and the count says it did not see every value."""
    from lowprec.data import csvencode
    from lowprec.data.csvschema import CategoricalColumn

    monkeypatch.setattr(csvencode, "COLLISION_CAP", 3)
    enc = csvencode.Encoder(CategoricalColumn("u", "u", 1000))
    values = ["a", "b", "a", "c", "d", "a", "e", "d", "é"]
    assert [enc.ids(v)[0] for v in values] == [h(v, 1000) for v in values]
    assert enc.collisions() == {"distinct_values": 3, "distinct_ids": len({h(v, 1000) for v in "abc"}),
                                "colliding_values": 3 - len({h(v, 1000) for v in "abc"}),
                                "counted_all_values": False}
