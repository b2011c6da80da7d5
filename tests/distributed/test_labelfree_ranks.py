"""2-rank drift with a window whose labels are pending: the label-free records (sums all-reduced,
rank subsample gathered, attribution sums all-reduced) equal the one-process ones."""

from __future__ import annotations

import math
import shutil

from lowprec.drift.store import DriftStore
from tests.distributed.conftest import in_process, last_json, lowprec

KEYS = ("rows", "est_gap", "est_lo", "est_hi", "est_se", "est_ne_diff", "abs_mean", "abs_p50", "abs_p99",
        "abs_max", "kendall_tau", "spearman", "rank_rows", "psi", "est_alarm")


def test_label_free_records_two_ranks_equal_one_process(work, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(work["data"], data)
    (data / "day_3_labels.npy").unlink()  # window 3: labels pending

    def drift(tag: str, nproc: int) -> dict:
        args = ("drift", "--reference", work["model"], "--candidate", work["art"], "--data", data,
                "--windows", "2-3", "--db", tmp_path / f"{tag}.sqlite", "--report", tmp_path / f"{tag}-report",
                "--batch-size", "700", "--json")
        if nproc == 1:
            return last_json(in_process(*args).stdout)
        r = lowprec(*args, nproc=nproc)
        assert r.returncode in (0, 1), r.stderr[-3000:]
        return last_json(r.stdout)

    one, two = drift("one", 1), drift("two", 2)
    assert one["labels_pending"] == two["labels_pending"] == [3]
    with DriftStore(tmp_path / "one.sqlite") as a, DriftStore(tmp_path / "two.sqlite") as b:
        for x, y in zip(a.labelfree(), b.labelfree(), strict=True):
            for k in KEYS:
                assert (x[k] is None and y[k] is None) or math.isclose(x[k], y[k], rel_tol=1e-9, abs_tol=1e-15), k
        for x, y in zip(a.attributions(), b.attributions(), strict=True):
            assert x["part"] == y["part"] and x["rows"] == y["rows"] > 0
            assert math.isclose(x["kl"], y["kl"], rel_tol=1e-9, abs_tol=1e-15), x["part"]
