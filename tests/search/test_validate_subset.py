"""Validation on the rows the eval windows look up gives the numbers of converting the whole plan;
its scratch directory is ours to create and remove, and nothing else is touched."""

import pytest

from helpers import trained_search_setup
from lowprec.plan import Plan
from lowprec.search import rows_subset
from lowprec.search.validate import MARKER, scratch_dir, validate

EVAL = [3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # t0 has 6000 rows, the eval window 800 rows: most rows are never looked up
    return trained_search_setup(tmp_path_factory.mktemp("subset"), 800, (6000, 40, 8), 1)


def _plan(tables: dict) -> Plan:
    return Plan.from_json({"format": "lowprec-plan", "version": 1, "tables": tables,
                           "layers": {"top.0": {"precision": "int8"}}})


PLANS = {
    "l2 int4 with row counts, int2, fp16": {"t0": {"precision": "int4", "range_method": "l2"},
                                           "t1": {"precision": "int2", "range_method": "l2"},
                                           "*": {"precision": "fp16"}},
    "minmax int8 / int4": {"t0": {"precision": "int8"}, "*": {"precision": "int4"}},
    "hot sharing (t0 converted whole)": {"t0": {"precision": "int8", "sharing": {"kind": "hot", "ratio": 4.0}},
                                         "t1": {"precision": "int4", "range_method": "l2"},
                                         "*": {"precision": "fp32"}},
}


@pytest.fixture(scope="module")
def touched(setup):
    """One looked-up-rows cache for every plan, as a search keeps it for all its rounds."""
    _, ds, model, _ = setup
    return rows_subset.TouchedRows(model, ds, EVAL)


@pytest.mark.parametrize("name", list(PLANS))
def test_rows_subset_validation_equals_full_conversion(setup, touched, tmp_path, name):
    root, ds, model, calib = setup
    plan = _plan(PLANS[name])
    tables = rows_subset.subset_tables(model, plan)
    rows = rows_subset.touched_rows(model, ds, EVAL, tables)
    if "sharing" in PLANS[name]["t0"]:
        assert 0 not in tables and 1 in tables
    else:  # the subset is a real one: t0 keeps a fraction of its rows
        assert 0 in tables and len(rows[0]) < 0.3 * model.config.tables[0].num_embeddings
    full = validate(root / "model", model, plan, ds, EVAL, calib, subset=False)
    sub = validate(root / "model", model, plan, ds, EVAL, calib, scratch=tmp_path / "s")
    # rows encode one by one (all tables here are below the compiled L2 passes' 2^25 values), the
    # TBE looks up the same bytes, the layers are the same: the same numbers, bit for bit
    assert sub == full
    assert full.ne_increase != 0.0 and full.rows == 800
    assert not (tmp_path / "s").exists()
    # the rows found for an earlier plan's tables serve this one (they are every dense table's)
    assert validate(root / "model", model, plan, ds, EVAL, calib, touched=touched) == full
    assert touched(tables).keys() == rows.keys()
    assert all(touched(tables)[t].equal(rows[t]) for t in tables)


def test_touched_rows_of_other_windows_are_refused(setup, touched):
    root, ds, model, calib = setup
    with pytest.raises(ValueError, match="other windows"):
        validate(root / "model", model, _plan({"*": {"precision": "int8"}}), ds, [2], calib, touched=touched)


def test_subset_ids_map_to_the_kept_rows(setup, tmp_path):
    _, ds, model, _ = setup
    rows = rows_subset.touched_rows(model, ds, EVAL, [0, 1, 2])
    for t, r in rows.items():
        assert r.tolist() == sorted(set(r.tolist())) and r.min() >= 0
        assert int(r.max()) < model.config.tables[t].num_embeddings
    sub = rows_subset.write_subset_model(model, rows, tmp_path / "m")
    from lowprec.checkpoint.float_model import load_float_model

    small, _ = load_float_model(sub)
    for t, r in rows.items():
        assert small.config.tables[t].num_embeddings == len(r)
        assert (small.embeddings[t].weight == model.embeddings[t].weight[r]).all()


def test_scratch_dir_is_created_removed_and_never_takes_what_is_not_ours(tmp_path):
    """A temporary sibling of the name (one per process: QA 8d item 3, `-rankN` directories of a
    killed --nproc search stayed); a dead process's is removed at the next start, as is one named
    by an older lowprec with its marker; nothing without the marker, nor a live process's."""
    import os
    import socket
    import subprocess
    import sys

    s = tmp_path / "plan.json.validate"
    with scratch_dir(s) as d:
        assert d.parent == tmp_path and d.name.startswith(f".plan.json.validate.tmp-{socket.gethostname()}-{os.getpid()}-")
        assert (d / MARKER).is_file()
        (d / "big").write_bytes(b"x" * 100)
    assert not d.exists() and not s.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, timeout=60).stdout.strip()
    killed = tmp_path / f".plan.json.validate.tmp-{socket.gethostname()}-{dead}-abcdefgh"
    live = tmp_path / f".plan.json.validate.tmp-{socket.gethostname()}-{os.getppid()}-abcdefgh"
    older = [tmp_path / "plan.json.validate-tmp", tmp_path / "plan.json.validate-tmp-rank1"]
    foreign = tmp_path / "plan.json.validate-tmp-rank2"  # (no marker: not ours)
    for x in [killed, live, *older, foreign]:
        x.mkdir()
        (x / "old-artifact").write_bytes(b"x")
    for x in [killed, live, *older]:
        (x / MARKER).write_text("")
    with scratch_dir(s) as d:
        assert not killed.exists() and not any(x.exists() for x in older)
        assert (live / "old-artifact").exists() and (foreign / "old-artifact").exists()
