"""reports/distributed.md from the JSON of tools/bench_distributed.py (measurements + the projection)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import _bench_common as bc

ROWS_PER_DAY = 4e9  # Criteo Terabyte: ~4 billion rows a day
FP32_TABLE_GB = 100.0  # ~100 GB of fp32 tables (MLPerf DLRMv2: ~97 GB of weights), D = 128
DIM = 128
CORES_PER_HOST = 32  # assumption of the projection (a common 2-socket CPU host)
TABLE_BUDGET_GB = 64.0  # table memory a host can give to serving (assumption)
SEARCH_MEASUREMENTS = 146  # ~26 tables x 5 precisions + 8 layers x 2 ...
SEARCH_ROWS_EACH = 1_000_000  # ... each scored on 1M rows, each on one rank (`dist.map_rounds`)
CALIB_ROWS = 128_000  # MLPerf's official calibration set


def _s(spread: dict[str, float], digits: int = 0) -> str:
    return f"{spread['median']:,.{digits}f} [{spread['min']:,.{digits}f}-{spread['max']:,.{digits}f}]"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def projection(r: dict[str, Any]) -> list[str]:
    eval_rate = r["eval"]["rows_per_s"]["1"]["median"]
    drift_rate = r["drift"]["rows_per_s"]["1"]["median"]
    eff = min(1.0, r["eval"]["ratio_2_vs_1"]["median"] / 2)
    start = r["startup_s"]["2"]["median"]
    int8_gb = FP32_TABLE_GB * (DIM + 4) / (4 * DIM)
    int4_gb = FP32_TABLE_GB * (DIM // 2 + 4) / (4 * DIM)
    rows = []
    for h in (1, 2, 4, 8, 16, 32, 64):
        cores = CORES_PER_HOST * h * eff
        rows.append([h, _hours(ROWS_PER_DAY / (eval_rate * cores) + start),
                     _hours(ROWS_PER_DAY / (drift_rate * cores) + start),
                     _hours(math.ceil(SEARCH_MEASUREMENTS / (CORES_PER_HOST * h)) * SEARCH_ROWS_EACH
                            / (eval_rate * eff) + start),
                     _hours(CALIB_ROWS / (eval_rate / 2) + start),
                     f"{FP32_TABLE_GB / h:.1f} / {int8_gb / h:.1f} / {int4_gb / h:.1f}"])
    need = {name: math.ceil(gb / TABLE_BUDGET_GB) for name, gb in (("fp32", FP32_TABLE_GB), ("int8", int8_gb), ("int4", int4_gb))}
    return [
        "## On paper: a Criteo-Terabyte-scale job over H hosts",
        "",
        f"From the one-rank rates measured above (eval {eval_rate:,.0f} rows/s a core, drift {drift_rate:,.0f} "
        f"rows/s a core) and the measured 2-rank efficiency ({eff:.2f} = ratio / 2, capped at 1), assuming "
        f"{CORES_PER_HOST} cores a host, one rank a core, and the same efficiency at every H (the merges are "
        f"per window: a few MB of histograms, independent of the rows). Each stage also pays the measured "
        f"start-up ({start:.0f} s here, under load). A day is {ROWS_PER_DAY:.0e} rows; tables ~{FP32_TABLE_GB:.0f} GB "
        f"fp32 at D={DIM} ({int8_gb:.1f} GB int8, {int4_gb:.1f} GB int4 with fp16 scale and bias a row).",
        "",
        *bc.md_table(["H hosts", "eval a day", "drift a day (2 models)", f"search sensitivity ({SEARCH_MEASUREMENTS} x {SEARCH_ROWS_EACH:.0e} rows)",
                      f"calibrate ({CALIB_ROWS:,} rows, 2 passes)", "table GB a host, fp32 / int8 / int4"], rows),
        "",
        "The search column deals its measurements over the ranks as `lowprec search` does under torchrun: "
        "one measurement per rank per round, each whole on one rank, so it stops shrinking once there are "
        f"more ranks than the {SEARCH_MEASUREMENTS} measurements (one measurement's time, plus start-up); the "
        "validation rounds add one data-parallel paired eval of the eval windows each. Start-up is the loaded "
        "machine's; on an idle host torchrun starts 2 ranks in ~3 s.",
        "",
        f"Calibration does not need more than one host (128k rows). With {TABLE_BUDGET_GB:.0f} GB a host for "
        f"tables, model-parallel serving needs at least {need['fp32']} host(s) in fp32, {need['int8']} in int8 "
        f"and {need['int4']} in int4: low precision is what lets the tables fit on one host. Caveats: the rates "
        f"were measured on cache-resident tables (scale {r['settings']['scale']}); at full scale the lookups are "
        f"memory-bound (one host reads ~11 GB/s): a day's lookups, 4e9 rows x 26 ids x {DIM + 4} B of int8 rows "
        f"~ {ROWS_PER_DAY * 26 * (DIM + 4) / 1e12:.1f} TB, cost ~{_hours(ROWS_PER_DAY * 26 * (DIM + 4) / 11e9)} "
        f"of one host's read bandwidth alone, spread over the H hosts like the compute. The MLPs dominate the "
        f"compute, and they are data-parallel.",
    ]


def write_report(r: dict[str, Any], path: str | Path) -> Path:
    m = r["machine"]
    ev, dr, se = r["eval"], r["drift"], r.get("search")
    plan = r["shard_plan"]
    total = r["table_bytes"]
    plan_share = ", ".join(f"{100 * b / sum(plan['rank_bytes']):.1f}%" for b in plan["rank_bytes"])
    local_share = ", ".join(f"{100 * b / total:.1f}%" for b in r["sharded_local_bytes"])
    lines = [
        "# Beyond one machine: lowprec on torch.distributed",
        "",
        f"Made by `{r['command']}` (tools/bench_distributed.py; `--from-json reports/distributed.json` rewrites "
        f"this page from the recorded run).",
        "",
        f"Machine: {bc.machine_line(m)}. **Shared with other engineers**: load average (1, 5, 15 min) "
        f"{r['load_before']} before the run and {r['load_after']} after, on 2 cores. Every rank runs one "
        f"thread (OMP_NUM_THREADS=1). Numbers are median [min-max] over {ev['rows_per_s']['1']['n']} launches "
        f"per rank count, 1 and 2 ranks alternating.",
        "",
        "## Data-parallel: 1 vs 2 ranks",
        "",
        *bc.md_table(["stage", "work", "1 rank rate", "2 ranks rate", "2 vs 1 (paired by launch)",
                      "collective share of time, 2 ranks"],
                     [[name, work, _s(s["rows_per_s"]["1"], digits), _s(s["rows_per_s"]["2"], digits),
                       bc.fmt_ratio(s["ratio_2_vs_1"]), f"{100 * s['collective_share']['2']['median']:.1f}% "
                       f"[{100 * s['collective_share']['2']['min']:.1f}-{100 * s['collective_share']['2']['max']:.1f}]"]
                      for name, work, digits, s in (
                          ("eval (int8 artifact)", f"{ev['rows']:,} rows (rows/s)", 0, ev),
                          ("drift (float + int8, paired)", f"{dr['rows']:,} rows (rows/s)", 0, dr),
                          *([("search (sensitivity + validation)", "one search (searches/h)", 1, se)] if se else []))]),
        "",
        f"Start-up of a launch (torchrun to the ranks' first line of work: interpreter, torch, fbgemm, the "
        f"process group): 1 rank {_s(r['startup_s']['1'], 1)} s, 2 ranks {_s(r['startup_s']['2'], 1)} s. "
        "Launch once per job, not per window.",
        "",
        "The collective share counts the time a rank waits inside collectives, which includes waiting for the "
        "slower rank: on an idle machine it is the cost of the merges (per window, two 2 MB histograms per model "
        "and a few sums), here it is mostly imbalance from the other engineers' load. The issue asks for eval "
        f">= 1.6x with 2 ranks: measured {bc.fmt_ratio(ev['ratio_2_vs_1'])} (median [min-max]). Two ranks "
        "can only be 2x faster when both cores are free, and here they were not (load above; 15 on 2 cores "
        "means each rank got a fraction of a core): the best launch shows what the code allows, the median "
        "what this shared machine gave. Measure again on an idle host before reading the ratio as a property "
        "of lowprec.",
        *([f"Note on this run: {r['note']}", ""] if r.get("note") else []),
        "",
        "## Model-parallel: table bytes per rank",
        "",
        f"The int8 artifact's tables hold {total:,} bytes in FBGEMM's layout. Shard plan for 2 ranks "
        f"(`lowprec shard ARTIFACT --ranks 2 --calibration CALIB.json`, balanced by bytes and by the "
        f"calibration's row access counts): rank bytes {plan['rank_bytes']} "
        f"({plan_share}); "
        f"expected lookups {[round(x) for x in plan['rank_lookups']]}. Measured, the bytes each rank's TBE "
        f"holds after `load_sharded`: {r['sharded_local_bytes']} "
        f"({local_share} of the whole).",
        "",
        "## What the tests establish (tests/distributed, 2 gloo ranks on 127.0.0.1)",
        "",
        "- `eval` with 2 ranks prints exactly the one-process JSON (int8 artifact with dynamic int8 layers, "
        "whose activation ranges depend on which rows share a batch): slices are cut on the one-process batch "
        "boundaries, per-batch float sums are replayed in batch order, histograms hold integers.",
        "- `calibrate` with 2 ranks writes the one-process CALIB.json ranges and row counts bit for bit.",
        "- `drift` with 2 ranks gives the one-process windows, alarms, exit code and every float (NE, gaps, "
        "bootstrap intervals, DeLong) bit for bit in the author's runs (a later fresh-clone CI run once gave "
        "a bootstrap SE 2.6e-14 relative apart, cause not found; the test allows 1e-12 relative): the paired sums are summed per batch in one blocked order "
        "whatever the ranks (lowprec/evaluation/merge.py). Bootstrap weights depend only on (seed, window, "
        "row index).",
        "- `search` with 2 ranks (inline calibration, sensitivity measurements dealt over the ranks, "
        "data-parallel validation and test windows) writes the one-process PLAN.json and measurement cache "
        "byte for byte; `compare` prints the one-process JSON.",
        "- `train` with 2 ranks (TorchRec DistributedModelParallel: tables table-wise with the fused row-wise "
        "Adagrad kernel, MLPs under DDP) gives identical weights on a rerun, saves the normal float model, "
        "and scores like the one-process model (NE within 0.2%); weights agree to rounding amplified by the "
        "normalising optimizers, not bit for bit.",
        "- A rank killed mid-drift: the other exits 3 with `RankFailure` naming the collective, within the "
        "collective timeout; no report is written, the database keeps only whole windows; a rerun completes.",
        "- Ranks with different inputs (sha256 of model, artifact, dataset files) or versions are refused at "
        "start (exit 2, `RankMismatch`).",
        "- A 2-rank sharded artifact: each rank holds about half the table bytes; logits equal the unsharded "
        "artifact's bit for bit with whole tables, to < 1e-5 when a table is split by id range.",
        "- By hand (README): two `torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint "
        "127.0.0.1:PORT` processes on this machine ran `-m lowprec eval` as one job; rank 0 printed the "
        "one-process JSON, the other rank nothing.",
        "",
        *projection(r),
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
