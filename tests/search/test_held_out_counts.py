"""The emulator's table options read calibration's counts without the measured rows' own lookups.

Why (lowprec/search/sensitivity.py): measured on rows calibration counted, a hot-sharing or tiered
option keeps every id those rows look up exact, so it looks nearly free; on the next window it is
not. These tests check the counts against a slow count, when they apply, and that an option measured
with them scores exactly as one built from hand-made held-out counts.
"""

import warnings

import pytest
import torch

from helpers import trained_search_setup
from lowprec.calibrate import CalibConfig, calibrate
from lowprec.precision import Precision
from lowprec.search.sensitivity import Emulator, FloatCache, counted_in_calibration, held_out_counts
from lowprec.search.space import Option

P = Precision


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return trained_search_setup(tmp_path_factory.mktemp("heldout"), 1500, (600, 40, 8), 1)


def slow_held_out(counts, lookups):
    out = [float(c) for c in counts]
    for batch in lookups:
        for i in batch.reshape(-1).tolist():
            if i >= 0:
                out[i] -= 1
    return torch.tensor([max(c, 0.0) for c in out])


def valid_ids(lookups):
    ids = torch.cat([x.reshape(-1) for x in lookups])
    return ids[ids >= 0]


def test_held_out_counts_match_a_slow_count():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 5, (50,), generator=g).float()
    lookups = [torch.randint(-1, 50, (30, 2), generator=g), torch.randint(-1, 50, (7, 2), generator=g)]
    got = held_out_counts(counts, valid_ids(lookups))
    assert torch.equal(got, slow_held_out(counts, lookups))
    assert got.dtype == counts.dtype and torch.equal(counts, counts.clone())  # input untouched
    ints = held_out_counts(counts.int().numpy(), valid_ids(lookups))  # calibrate's own int32 arrays
    assert torch.equal(ints.float(), got)


def test_when_the_cached_rows_are_counted(setup):
    _, ds, model, calib = setup  # calibration counted every row of window 2
    in_window = FloatCache(model, ds, [2], 200, batch_size=128)
    elsewhere = FloatCache(model, ds, [3], 200, batch_size=128)
    assert counted_in_calibration(calib, in_window)
    assert not counted_in_calibration(calib, elsewhere)
    assert not counted_in_calibration(None, in_window)
    assert not counted_in_calibration({**calib, "row_counts": {}}, in_window)
    # a prefix of windows 2, 3: counted if calibration read at least as many rows
    both = FloatCache(model, ds, [2, 3], 10**9, batch_size=128)
    assert counted_in_calibration({**calib, "windows": [2, 3], "rows": both.rows}, both)
    # calibration stopped before the cached rows end, and did not read all of its windows: cannot tell
    with pytest.warns(UserWarning, match="counted part of windows"):
        assert not counted_in_calibration({**calib, "windows": [2, 3], "rows": 300}, both)


def test_options_score_as_with_hand_made_held_out_counts(setup):
    _, ds, model, calib = setup
    cache = FloatCache(model, ds, [2], 300, batch_size=128)
    emu = Emulator(model, cache, calib)  # calibration counted window 2: held out by default
    assert emu.held_out
    hand = {k: slow_held_out(v, [b.sparse[t] for b in cache.batches])
            for t, (k, v) in enumerate(calib["row_counts"].items())}
    ref = Emulator(model, cache, {**calib, "row_counts": hand}, held_out=False)
    plain = Emulator(model, cache, calib, held_out=False)
    opts = [Option("table:t0", P.INT4, (("kind", "hot"), ("ratio", 4.0))),
            Option("table:t0", P.INT2, None),
            Option("table:t1", P.INT2, (("kind", "tiered"), ("tiers", ((0.1, "fp16"),))))]
    differs = 0
    for o in opts:
        got, want = emu.run_paired([o], "l2"), ref.run_paired([o], "l2")
        assert got[0].summary() == want[0].summary() and got[1] == want[1], o.key
        differs += plain.run_paired([o], "l2")[0].summary() != got[0].summary()
    assert differs >= 1  # the in-sample counts score some option differently
    # the mechanism: in-sample, every id the measured rows look up has a count (hot sharing keeps
    # the most counted rows exact); held out, the ids only those rows look up have none (on this
    # tiny model the NE moves either way: its embeddings barely matter)
    touched = emu._touched(0)
    assert (plain.counts(0)[touched] > 0).all()
    assert (emu.counts(0)[touched] == 0).any()


def test_inline_calibration_counts_the_cached_rows(setup):
    """`lowprec search` without --calibration calibrates on --calib-windows (every row): the
    emulator's counts are then held out, without a warning."""
    _, ds, model, _ = setup
    calib = calibrate(model, ds, CalibConfig((2,)))
    cache = FloatCache(model, ds, [2], 50_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert counted_in_calibration(calib, cache)
