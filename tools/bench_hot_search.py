"""Search cost of post-training sharing options on a large table: whole-table build vs subset forms.

    prlimit --data=6442450944 python tools/bench_hot_search.py [--rows 10000000] [--ratios 4,16,64]

One DLRM with a large dense table `big` (--rows x 16, Zipf(--zipf) ids over a random permutation
of the ids, as Criteo's large tables) and a 1,000-row `small` table; its weights are the DLRM's
initialisation (timing and equality only: nothing here measures quality). Real `lowprec calibrate`
row counts on window 0 (--calib-rows), the search's FloatCache on window 1 (--cache-rows, the
search's default 50,000). The options are the search's own for `big` (`options_for`: hot sharing
at each ratio x --precisions, plus --tier-layouts), measured as `measure_sensitivity` measures
them (`Emulator.run_paired([option])`) by
- after: the emulator's subset forms (lowprec/search/subset.py): rows ranked once per table, the
  float form built once per sharing and shared by precisions; a fresh emulator every repeat, so
  each repeat pays the table's ranking again (it is in its first option's time);
- before: the whole-table build the emulator used until then: the serving handlers' form of every
  row (`table_form`), every row quantized, looked up by the logical ids (`table_module(full=True)`).
Each repeat runs every option "after", then one option "before" (--before lists which): a whole-table build
takes minutes at 10M rows, so "before" gets one measurement per option and "after" --repeats.
Every "before" measurement also checks that the two paths pool bit-identical outputs.
Writes reports/bench_hot_search.json (see --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

from lowprec.calibrate import CalibConfig, calibrate  # noqa: E402
from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature  # noqa: E402
from lowprec.fileio import atomic_dir  # noqa: E402
from lowprec.model.config import DLRMConfig, TableConfig  # noqa: E402
from lowprec.model.dlrm import DLRM  # noqa: E402
from lowprec.precision import Precision  # noqa: E402
from lowprec.search.sensitivity import Emulator, FloatCache  # noqa: E402
from lowprec.search.space import SearchSpace, options_for  # noqa: E402

TOOL = "bench_hot_search.py"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="rows of the large table")
    p.add_argument("--zipf", type=float, default=1.05)
    p.add_argument("--calib-rows", type=int, default=250_000)
    p.add_argument("--cache-rows", type=int, default=50_000)
    p.add_argument("--ratios", default="4,16,64")
    p.add_argument("--precisions", default="int8,int4", help="hot sharing precisions (the search's default)")
    p.add_argument("--tier-layouts", default="0.02:fp16/int4", help="';'-separated; '' for none")
    p.add_argument("--range-method", default="l2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", default="0,3,6",
                   help="indices (in the search's option order) of the options timed on the whole-table path")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(bc.REPORTS / "bench_hot_search.json"))
    return p.parse_args(argv)


def zipf_ids(rng: np.random.Generator, n: int, rows: int, s: float, perm: np.ndarray) -> np.ndarray:
    """`rows` ids of an n-row table: rank r drawn with probability ~ r^-s, mapped through `perm`."""
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
    ranks = np.searchsorted(cdf, rng.random(rows) * cdf[-1])
    return perm[np.minimum(ranks, n - 1)]


def make_data(root: Path, args: argparse.Namespace) -> Dataset:
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(args.rows)
    feats = [SparseFeature("big", args.rows, 1), SparseFeature("small", 1000, 1)]
    with atomic_dir(root) as tmp:
        writer = DatasetWriter(tmp, ["d0", "d1", "d2", "d3"], feats, {"source": TOOL})
        for w, rows in enumerate((args.calib_rows, args.cache_rows)):
            ww = writer.window(label=f"w{w}", start=f"2020-01-{w + 1:02d}", end=f"2020-01-{w + 2:02d}")
            big = zipf_ids(rng, args.rows, rows, args.zipf, perm)
            small = zipf_ids(rng, 1000, rows, args.zipf, np.arange(1000))
            labels = (rng.random(rows) < 0.25).astype(np.int32)
            ww.append(rng.normal(0, 1, (rows, 4)).astype(np.float32), np.stack([big, small], 1), labels)
            writer.add_window(ww)
        writer.finish()
    return Dataset(root)


def after(model: DLRM, cache: FloatCache, calib: dict[str, Any], options: list, rm: str) -> tuple[dict, Emulator]:
    emu = Emulator(model, cache, calib)
    emu.run_paired([], rm)  # the float model's logits (paid once per search, not per option)
    out = {}
    for o in options:
        t0 = time.perf_counter()
        emu.run_paired([o], rm)
        out[o.key] = time.perf_counter() - t0
    return out, emu


def before(model: DLRM, cache: FloatCache, calib: dict[str, Any], o, rm: str, new: Emulator) -> tuple[float, bool]:
    """One option measured as the emulator did before subset forms; and whether it pools what `new` pools."""
    ref = Emulator(model, cache, calib)
    ref.run_paired([], rm)
    t = ref.names.index(o.name)
    t0 = time.perf_counter()
    emb = ref.table_module(o, rm, full=True)
    with torch.inference_mode():
        ref._pooled[o.key] = [emb(b.sparse[t])[:, 0] for b in cache.batches]
    ref.run_paired([o], rm)
    secs = time.perf_counter() - t0
    same = all(torch.equal(a, b) for a, b in zip(ref._pooled[o.key], new.table_pooled(o, rm)))
    return secs, same


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    threads = bc.set_threads(args.threads)
    rm = args.range_method
    result: dict[str, Any] = {"tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
                              "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    space = SearchSpace(sharing_ratios=tuple(float(r) for r in args.ratios.split(",")),
                        sharing_precisions=tuple(Precision.parse(p) for p in args.precisions.split(",")),
                        tier_layouts=tuple(x for x in args.tier_layouts.split(";") if x), range_method=rm)
    with tempfile.TemporaryDirectory(prefix="lowprec-bench-hot-", dir=os.environ.get("TMPDIR")) as tmp:
        t0 = time.perf_counter()
        ds = make_data(Path(tmp) / "data", args)
        torch.manual_seed(args.seed)
        tables = (TableConfig("big", args.rows, 1, "dense"), TableConfig("small", 1000, 1, "dense"))
        model = DLRM(DLRMConfig(4, tables, 16, (16, 16), (16, 8), ("d0", "d1", "d2", "d3"))).eval()
        calib = calibrate(model, ds, CalibConfig((0,)))
        calib["row_counts"] = {k: torch.as_tensor(v) for k, v in calib["row_counts"].items()}
        cache = FloatCache(model, ds, [1], args.cache_rows)
        options = [o for o in options_for(model.config, space, sharing=True)["table:big"] if o.sharing]
        result["setup_seconds"] = time.perf_counter() - t0
        touched = int(torch.unique(torch.cat([b.sparse[0].reshape(-1) for b in cache.batches])).numel())
        accessed = int((calib["row_counts"]["big"] > 0).sum())
        print(f"setup {result['setup_seconds']:.0f} s; {len(options)} options; {touched:,} ids looked up; "
              f"{accessed:,} rows accessed in calibration", file=sys.stderr)
        before_idx = [int(i) for i in args.before.split(",") if i]
        runs_after: list[dict[str, float]] = []
        runs_before: dict[str, dict[str, Any]] = {}
        peaks = {"after": {}, "before": {}}  # peak MiB of each path, over its runs
        for r in range(args.repeats):
            bc.settle_memory()
            with bc.RssSampler(0.05) as sampler:
                res, emu = after(model, cache, calib, options, rm)
            runs_after.append(res)
            peaks["after"] = {k: max(v, peaks["after"].get(k, 0.0)) for k, v in sampler.peaks.items()}
            print(f"after {r + 1}: " + ", ".join(f"{k.split('|', 1)[1]} {v:.2f}s" for k, v in res.items()),
                  file=sys.stderr)
            if r < len(before_idx):
                o = options[before_idx[r] % len(options)]
                with bc.RssSampler(0.05) as sampler:
                    secs, same = before(model, cache, calib, o, rm, emu)
                peaks["before"] = {k: max(v, peaks["before"].get(k, 0.0)) for k, v in sampler.peaks.items()}
                runs_before[o.key] = {"seconds": secs, "identical_pooled": same,
                                      "after_seconds_same_repeat": res[o.key]}
                print(f"before {o.key}: {secs:.1f} s, identical {same}", file=sys.stderr)
            del emu
    result.update({
        "rows": args.rows, "looked_up_ids": touched, "accessed_rows": accessed, "cache_rows": cache.rows,
        "options": [o.key for o in options],
        "after": {k: bc.spread([r[k] for r in runs_after]) for k in runs_after[0]},
        "after_total_seconds": bc.spread([sum(r.values()) for r in runs_after]),
        "before": runs_before,
        "peak_mib": peaks,
        "loadavg_end": os.getloadavg(),
    })
    bc.write_json(args.out, result)
    print("\n".join(render(result)))
    return result


def render(result: dict[str, Any]) -> list[str]:
    rows = []
    for key in result["options"]:
        a, b = result["after"][key], result["before"].get(key)
        rows.append([key.split("|", 1)[1], bc.fmt_spread(a, 1, 2),
                     f"{b['seconds']:.1f}" if b else "", f"{b['seconds'] / b['after_seconds_same_repeat']:.0f}x" if b else "",
                     str(b["identical_pooled"]) if b else ""])
    return bc.md_table(["option", "after: s, median [min-max]", "before: s (1 run)", "before / after (same repeat)",
                        "bit-identical pooled"], rows)


if __name__ == "__main__":
    main()
