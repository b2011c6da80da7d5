"""Ingest in shares (lowprec.data.sharedread, parts), CSV and Criteo TSV: the dataset, the bad rows and the errors are
one reader's, byte for byte, however the input is cut and dealt. Shares are read in turn in this
process here (prepare_csv's `in_turn`), on parts of a few bytes, so cuts land inside quoted cells,
CRLF pairs and bad rows; tests/distributed/test_ingest.py runs the same under torchrun."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowprec.data.parts import Part, deal, plan_parts
from lowprec.data.csvread import prepare_csv
from lowprec.errors import InputError

HEADER = "click,ts,price,item,user,tags,note"
SCHEMA = """
label = "click"
time = "ts"
[dense.price]
transform = "log1p"
[categorical.item]
encoding = "vocab"
{item_cap}
[categorical.user]
num_embeddings = 7
[categorical.tags]
{tag_encoding}
sep = "|"
hotness = 2
"""


def good(i: int, day: int) -> str:
    return (f"{i % 3 == 0:d},{1_700_000_000 + day * 86_400 + i},{(i * 7) % 50 / 3:.2f},it{(i * i) % 11},u{i % 9},"
            f"{'|'.join(f't{(i + k) % 6}' for k in range(i % 4))},n{i}")


ROWS = {  # kinds of row a messy log holds (i: the row's number)
    "good": good,
    "kept multi-line": lambda i, d: good(i, d).rsplit(",", 1)[0] + ',"a note\nover two lines"',
    "line break in item": lambda i, d: f'1,{1_700_000_000 + d * 86_400},1.0,"it\n{i}",u1,t1,n',
    "quote then text": lambda i, d: f'0,{1_700_000_000 + d * 86_400},"2"x,it1,u1,t1,n',
    "open quote": lambda i, d: f'0,{1_700_000_000 + d * 86_400},1.5,it2,u2,t2,"never closed',
    "field count": lambda i, d: "1,2,3",
    "bad label": lambda i, d: good(i, d).replace(good(i, d)[0], "maybe", 1),
    "bad dense": lambda i, d: f"0,{1_700_000_000 + d * 86_400},abc,it1,u1,t1,n",
    "blank": lambda i, d: "",
    "bad utf-8": lambda i, d: good(i, d).replace("n", "\udcff", 1),
}


@st.composite
def logs(draw):
    files = []
    for f in range(draw(st.integers(1, 3))):
        kinds = draw(st.lists(st.sampled_from(sorted(ROWS)), min_size=0, max_size=40))
        weights = ["good"] * draw(st.integers(0, 40))
        rows = [ROWS[k](i, f + i // 25) for i, k in enumerate(draw(st.permutations(kinds + weights)))]
        eol = draw(st.sampled_from(["\n", "\r\n"]))
        text = HEADER + eol + "".join(r + eol for r in rows)
        data = text.encode("utf-8", "surrogateescape")
        files.append((data, draw(st.booleans()) and draw(st.booleans()), draw(st.booleans())))  # (bytes, gzip, BOM)
    return files


def write_inputs(tmp: Path, files) -> list[Path]:
    paths = []
    for k, (data, gz, bom) in enumerate(files):
        data = (b"\xef\xbb\xbf" if bom else b"") + data
        p = tmp / f"day{k}.csv{'.gz' * gz}"
        p.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        paths.append(p)
    return paths


def run(inputs, root, schema, window, max_bad, keep, in_turn=None):
    reported: list[str] = []
    try:
        meta, bad = prepare_csv(inputs, root, schema, window, max_bad_rows=max_bad, report=reported.append,
                                show_bad_rows=keep, in_turn=in_turn)
    except InputError as exc:
        return ("error", str(exc), reported)
    files = {p.name: p.read_bytes() for p in sorted(root.iterdir())}
    return ("ok", files, bad.to_json(), reported)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=logs(), ranks=st.integers(2, 4), part_bytes=st.integers(1, 400),
       window=st.sampled_from(["file", "rows:17", "day"]), max_bad=st.sampled_from([None, 0, 2, 5]),
       keep=st.sampled_from([None, 0, 3]), item_cap=st.sampled_from(["", "num_embeddings = 6"]),
       tag_encoding=st.sampled_from(['encoding = "hash"\nnum_embeddings = 5', 'encoding = "vocab"']))
def test_shares_give_one_readers_dataset(tmp_path_factory, files, ranks, part_bytes, window, max_bad, keep, item_cap,
                                         tag_encoding):
    tmp = tmp_path_factory.mktemp("parts")
    schema = tmp / "s.toml"
    schema.write_text(SCHEMA.format(item_cap=item_cap, tag_encoding=tag_encoding))
    inputs = write_inputs(tmp, files)
    one = run(inputs, tmp / "one", schema, window, max_bad, keep)
    shared = run(inputs, tmp / "shared", schema, window, max_bad, keep, in_turn=(ranks, part_bytes))
    assert shared == one
    shutil.rmtree(tmp)


def test_a_quoted_cell_across_every_cut_is_read_again(tmp_path):
    """A note cell of many lines: cuts land inside it, the parts before them end malformed, and the
    merge reads the file again from there; the kept record and its warning are one reader's."""
    rows = [good(i, 0) for i in range(30)]
    rows[10] = good(10, 0).rsplit(",", 1)[0] + ',"' + "\n".join(f"line {k}" for k in range(60)) + '"'
    (tmp_path / "a.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA.format(item_cap="", tag_encoding='num_embeddings = 5'))
    one = run([tmp_path / "a.csv"], tmp_path / "one", schema, "file", None, None)
    assert one[0] == "ok" and b"record(s) run over several lines, the first at" in one[1]["dataset.json"]
    for part_bytes in (7, 64, 300):
        assert run([tmp_path / "a.csv"], tmp_path / f"p{part_bytes}", schema, "file", None, None,
                   in_turn=(3, part_bytes)) == one


def test_vocabulary_overflow_is_counted_per_occurrence_across_shares(tmp_path):
    """A capped vocabulary fills in one share; its overflow values recur in later shares."""
    rows = [f"0,{1_700_000_000 + i},1.0,v{i % 9 if i < 40 else i % 4 + 20},u1,t1,n" for i in range(120)]
    (tmp_path / "a.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA.format(item_cap="num_embeddings = 6", tag_encoding='encoding = "vocab"'))
    one = run([tmp_path / "a.csv"], tmp_path / "one", schema, "file", None, None)
    values = [r.split(",")[3] for r in rows]
    kept = list(dict.fromkeys(values))[:5]  # ids 1-5 of 6 rows (id 0: empty or overflow)
    assert json.loads(one[1]["dataset.json"])["provenance"]["vocab_overflow"]["item"] == \
        sum(v not in kept for v in values) == 96
    assert run([tmp_path / "a.csv"], tmp_path / "two", schema, "file", None, None, in_turn=(2, 150)) == one


def test_plan_cuts_plain_files_at_line_starts_and_keeps_gzip_whole(tmp_path):
    plain = tmp_path / "a.csv"
    plain.write_bytes(b"h\n" + b"".join(b"%d,xx\r\n" % i for i in range(500)))
    gz = tmp_path / "b.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    parts = plan_parts([plain, gz], part_bytes=100)
    cut = [p for p in parts if p.file == 0]
    assert cut[0].start == 0 and cut[-1].end == plain.stat().st_size and len(cut) > 20
    data = plain.read_bytes()
    for a, b in zip(cut[:-1], cut[1:]):
        assert a.end == b.start and data[b.start - 1: b.start] == b"\n"
    assert [(p.first, p.last) for p in cut] == [(True, False)] + [(False, False)] * (len(cut) - 2) + [(False, True)]
    assert parts[-1] == Part(1, 0, None, True, True, gz.stat().st_size * 8)


@given(work=st.lists(st.integers(0, 1000), max_size=30), n=st.integers(1, 5))
def test_deal_gives_every_part_once_in_order_and_balances(work, n):
    parts = [Part(i, 0, None, True, True, w) for i, w in enumerate(work)]
    shares = deal(parts, n)
    assert sorted(i for s in shares for i in s) == list(range(len(work)))
    assert all(s == sorted(s) for s in shares)
    loads = [sum(work[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(work, default=0)  # greedy: within one part of even


@pytest.mark.parametrize("max_bad", [0, 3])
def test_too_many_bad_rows_stop_at_one_readers_row(tmp_path, max_bad):
    rows = [good(i, 0) if i % 7 else "1,2,3" for i in range(100)]
    (tmp_path / "a.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA.format(item_cap="", tag_encoding='num_embeddings = 5'))
    one = run([tmp_path / "a.csv"], tmp_path / "one", schema, "file", max_bad, 2)
    assert one[0] == "error" and f"bad rows exceed --max-bad-rows {max_bad}" in one[1]
    assert run([tmp_path / "a.csv"], tmp_path / "two", schema, "file", max_bad, 2, in_turn=(3, 90)) == one


def test_a_missing_input_is_named_before_any_file_is_read(tmp_path, monkeypatch):
    """Every input is checked first: a typo in the last of a day's files costs no hours of reading."""
    import lowprec.data.csvrows as csvrows

    (tmp_path / "a.csv").write_text(HEADER + "\n" + good(1, 0) + "\n")
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA.format(item_cap="", tag_encoding='num_embeddings = 5'))
    reads: list[Path] = []
    real = csvrows.read_csv
    monkeypatch.setattr(csvrows, "read_csv", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    got = run([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "one", schema, "file", None, None)
    assert got[0] == "error" and got[1] == f"input file not found: {tmp_path / 'b.csv'}" and reads == []


def tsv_line(i: int, kind: str) -> str:
    ints = ["" if (i + k) % 5 == 0 else str((i * 7 + k) % 40 - 3) for k in range(13)]
    cats = ["" if (i + k) % 7 == 0 else f"{(i * 2654435761 + k * 97) % 2**32:08x}" for k in range(26)]
    fields = [str(i % 3 == 0 and 1 or 0), *ints, *cats]
    if kind == "field count":
        fields = fields[:20]
    elif kind == "label":
        fields[0] = "2"
    elif kind == "int":
        fields[3] = "x1"
    elif kind == "hex":
        fields[20] = "zz"
    return "" if kind == "blank" else "\t".join(fields)


TSV_KINDS = ["good"] * 6 + ["field count", "label", "int", "hex", "blank"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(st.lists(st.sampled_from(TSV_KINDS), max_size=60), st.booleans(),
                                st.sampled_from(["\n", "\r\n"])), min_size=1, max_size=3),
       ranks=st.integers(2, 4), part_bytes=st.integers(1, 2000), rows=st.sampled_from([None, 23]),
       max_bad=st.sampled_from([None, 0, 4]), keep=st.sampled_from([None, 0, 3]))
def test_criteo_shares_give_one_readers_dataset(tmp_path_factory, files, ranks, part_bytes, rows, max_bad, keep):
    from lowprec.data.criteo import prepare_criteo

    tmp = tmp_path_factory.mktemp("tsv")
    inputs = []
    for k, (kinds, gz, eol) in enumerate(files):
        data = "".join(tsv_line(i, kind) + eol for i, kind in enumerate(kinds)).encode()
        p = tmp / f"day_{k}.tsv{'.gz' * gz}"
        p.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        inputs.append(p)

    def prepare(root, in_turn=None):
        reported: list[str] = []
        try:
            meta, bad = prepare_criteo(inputs, root, [7] * 26, rows, max_bad_rows=max_bad, report=reported.append,
                                       show_bad_rows=keep, in_turn=in_turn)
        except InputError as exc:
            return ("error", str(exc), reported)
        return ("ok", {p.name: p.read_bytes() for p in sorted(root.iterdir())}, bad.to_json(), reported)

    assert prepare(tmp / "shared", (ranks, part_bytes)) == prepare(tmp / "one")
    shutil.rmtree(tmp)


def test_a_parts_uncapped_vocabulary_that_outgrows_memory_says_how_parts_help(monkeypatch):
    """A capped growing vocabulary is numbered uncapped within a part (the merge caps it): when it
    outgrows memory, the advice is about parts, not num_embeddings, which does not bound it there."""
    import lowprec.data.csvencode as csvencode
    from lowprec.data.csvschema import schema_from

    schema = schema_from({"label": "click", "dense": {"x": {}},
                          "categorical": {"item": {"encoding": "vocab", "num_embeddings": 10}}}, "test")
    monkeypatch.setattr(csvencode, "headroom_bytes", lambda: 0)
    monkeypatch.setattr(csvencode, "MEMORY_CHECK_EVERY", 4)
    whole, part = csvencode.Encoder(schema.categorical[0]), csvencode.Encoder(schema.categorical[0]).fresh()
    with pytest.raises(InputError, match=r"Set a smaller num_embeddings"):
        for i in range(12):
            whole.ids(f"v{i}")
    with pytest.raises(InputError, match=r"reads one part of the input .* smaller parts \(\$LOWPREC_CSV_PART_BYTES"):
        for i in range(12):
            part.ids(f"v{i}")


def test_a_rank_waits_a_little_for_the_plan_to_appear(tmp_path):
    """A shared file system may show rank 0's new plan file to another host a moment later: a rank
    polls for it before it refuses to run (lowprec.data.sharedread._appears)."""
    import threading

    from lowprec.data.sharedread import _appears

    late = tmp_path / "plan.json"
    threading.Timer(0.6, late.write_text, args=("[]",)).start()
    assert _appears(late, wait_s=30)
    assert not _appears(tmp_path / "never.json", wait_s=0.3)


def test_lines_are_numbered_by_newlines_whatever_lone_carriage_returns_a_file_holds(tmp_path):
    """csv's own reading broke a line at every lone \\r (also inside a quoted cell), so every bad row
    after one was placed a line too far (and the tail after an unquoted \\r became a record of its
    own); the part cutter counts \\n. One reader and shares agree, at the lines `grep -n` gives."""
    rows = [good(i, 0) for i in range(12)]
    rows[2] = good(2, 0).rsplit(",", 1)[0] + ',"a\rb"'  # legal: a \r inside a quoted cell of an unread column
    rows[4] = good(4, 0) + "\rjunk"  # a lone \r outside quotes: a malformed record, at its own line
    rows[7] = f"1,{1_700_000_000},1.0,it1,u1,t1,n\r"  # a \r before the \n: the line's own end (CRLF)
    rows[9] = "BAD,1700000000,1,it1,u1,t1,n"
    (tmp_path / "a.csv").write_bytes((HEADER + "\n" + "\n".join(rows) + "\n").encode())
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA.format(item_cap="", tag_encoding='num_embeddings = 5'))
    one = run([tmp_path / "a.csv"], tmp_path / "one", schema, "file", None, None)
    assert one[0] == "ok", one
    at = [m.split(": ", 1)[0].rsplit(":", 1)[1] for m in one[3]]
    assert at == ["6", "11"] and "carriage return" in one[3][0], one[3]  # rows[4] is line 6, rows[9] line 11
    assert json.loads(one[1]["dataset.json"])["provenance"]["inputs"][0]["lines"] == 13
    for part_bytes in (5, 40, 200):
        assert run([tmp_path / "a.csv"], tmp_path / f"p{part_bytes}", schema, "file", None, None,
                   in_turn=(3, part_bytes)) == one
