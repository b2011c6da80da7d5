"""2-rank drift of a candidate with tiered tables: each rank counts its batches' tier lookups inside
the paired pass (lowprec.drift.tiers.TierShareObserver) and the counts are all-reduced, so the
recorded tier shares and the tiered table's per-row error equal one process's exactly."""

from __future__ import annotations

from lowprec.calibrate import CalibConfig, calibrate
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import load_float_model
from lowprec.data.dataset import Dataset
from lowprec.drift.store import DriftStore
from lowprec.plan import Plan, TableChoice
from lowprec.precision import Precision
from tests.distributed.conftest import in_process, last_json, lowprec

SPEC = {"kind": "tiered", "tiers": [[0.1, "fp16"], [0.2, "int8"]]}


def test_tier_shares_two_ranks_equal_one_process(work, tmp_path):
    ds = Dataset(work["data"])
    calib = calibrate(load_float_model(work["model"])[0], ds, CalibConfig((0,)))
    plan = Plan({"t0": TableChoice(Precision.INT4, SPEC), "t1": TableChoice(Precision.INT2, SPEC),
                 "*": TableChoice(Precision.INT8)})
    convert(work["model"], plan, tmp_path / "art", calib)

    def args(tag: str):
        return ("drift", "--reference", work["model"], "--candidate", tmp_path / "art", "--data", work["data"],
                "--windows", "1-2", "--db", tmp_path / f"{tag}.sqlite", "--report", tmp_path / f"{tag}-report",
                "--batch-size", "700", "--json")

    one = in_process(*args("one"))
    assert one.exit_code in (0, 1), one.output
    two = lowprec(*args("two"), nproc=2)
    assert two.returncode in (0, 1), two.stderr[-3000:]
    assert [w["hot_tier_share"] for w in last_json(two.stdout)["windows"]] == \
        [w["hot_tier_share"] for w in last_json(one.stdout)["windows"]]
    with DriftStore(tmp_path / "one.sqlite") as a, DriftStore(tmp_path / "two.sqlite") as b:
        shares = a.tier_shares()
        assert shares == b.tier_shares()
        assert {(r["window"], r["table_name"]) for r in shares} == {(w, t) for w in (1, 2) for t in ("t0", "t1")}
        assert all(sum(r["lookups"] for r in shares if (r["window"], r["table_name"]) == (w, t)) > 0
                   for w in (1, 2) for t in ("t0", "t1"))
        errors = [e for e in a.table_errors() if e["table_name"] in ("t0", "t1")]
        assert errors == [e for e in b.table_errors() if e["table_name"] in ("t0", "t1")]
        assert len(errors) == 4 and all(e["note"] is None and e["sqnr_db"] is not None for e in errors)
