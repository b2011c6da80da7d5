"""Latency costs for `--objective latency`: each option timed on this machine, cached on disk.

A table option's cost is its marginal time in a model call: the lookup of one batch of its real
calibration ids (already in the runtime's FeatureIds layout, as the data loader hands them over)
through a single-table FBGEMM TBE at the option's precision and sharing (what the runtime calls),
minus the same lookup of the batch's first sample. The runtime looks all tables up in one call, so
a call's fixed cost (dispatch, the TBE launch, a tiered table's id split and pooling across tiers)
is paid once per model call, not once per table; timed alone, one table's batch is mostly that
fixed cost (reports/tiered.md: 46-52 us plain, 129 us tiered for 4,096 ids of a 10M-row table), and
an additive model of whole lookups would charge it 26 times. A tier layout with rows in rank
order ('.../rank') on those ids renumbered through its rank map, the input it is laid out for
(`lookup_ids(ids, ranked=True)`: a feature pipeline that sends ranks; reports/tiered.md); a layer
option as its forward on the layer's real cached input (FBGEMM int8 or fp32 GEMM). Costs are the
median of `repeats` timings in microseconds after WARMUP_CALLS untimed calls, keyed by the CPU
model, torch version, the option's shape, the timing protocol (with the version of the native tier
split) and (tables) a fingerprint of the timed ids, and cached in ~/.cache/lowprec/latency.json (or
$LOWPREC_CACHE/latency.json), so a search re-times only what it has not seen. The model is additive,
like the accuracy model: the plan's predicted latency is the sum of its options' latencies.

`significant_costs` is what the solver minimises: an option saving less than a small share of the
float model's predicted time is priced as its float baseline. Such savings (one small table's lookup
at int2 instead of fp32, a few microseconds) are within timing noise, and spending accuracy budget
on them crowds out the options that do save time: in tools/bench_e2e.py the latency search put 20
tables at int2 for ~0.1% of the time, failed validation on them, and never reached the int8 layer
that halves the forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lowprec.data.ids import FeatureIds
from lowprec.fileio import atomic_write_text
from lowprec.plan import Plan
from lowprec.search.cache import ignore, is_number, read_scratch
from lowprec.search.sensitivity import CachedBatch, Emulator
from lowprec.search.space import Option
from lowprec.serve import tier_native


def _cache_file() -> Path:
    root = Path(os.environ.get("LOWPREC_CACHE", Path.home() / ".cache" / "lowprec"))
    return root / "latency.json"


def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown cpu"
    return f"{cpu}|torch {torch.__version__}|threads {torch.get_num_threads()}"


WARMUP_CALLS, REPEATS = 20, 21  # untimed, then timed calls of an option (median of REPEATS)
# in every cache key: costs timed another way, or through another version of the native tiered id
# split (a faster split makes every tier layout cheaper), are timed again
PROTOCOL = f"warm{WARMUP_CALLS}|split {hashlib.sha256(tier_native.SOURCE.read_bytes()).hexdigest()[:12]}"


def _median_us(fn: Callable[[], object], repeats: int) -> float:
    """Median microseconds of `repeats` calls after WARMUP_CALLS untimed ones. A table built a
    moment ago is slow for its first calls: with one warm-up call and 7 timed, full-scale 20-id-bag
    lookups came out up to 2.9x their steady time (an int8 table 558-728 us, steady 243-251; the
    order of the options changed), with 20 and 21 within ~5% from one build to the next
    (reports/tiered.md, latency search on multi-hot data)."""
    for _ in range(WARMUP_CALLS):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _digest(ids: torch.Tensor) -> str:
    """The timed ids' fingerprint: a lookup's time depends on which ids come and how many a bag
    (a cached cost of one-hot traffic must not price a table of 20-id bags of the same size)."""
    return hashlib.sha256(ids.contiguous().numpy().tobytes() + str(tuple(ids.shape)).encode()).hexdigest()[:16]


def measure_costs(emulator: Emulator, items: dict[str, list[Option]], range_method: str,
                  repeats: int = REPEATS) -> dict[str, float]:
    """Microseconds per batch for every option (read from, and added to, the on-disk cache)."""
    path = _cache_file()
    cache = read_scratch(path, "latency cache")
    bad = next((k for k, v in cache.items() if not is_number(v)), None)
    if bad is not None:
        cache = ignore(path, "latency cache", f"entry {bad!r} is not a number of microseconds")
    batch = emulator.cache.batches[0]
    names = emulator.model.config.table_names
    out, machine, dirty = {}, _machine(), False
    digests = {t: _digest(ids) for t, ids in enumerate(batch.sparse)}  # once a table, not once an option
    for opts in items.values():
        for o in opts:
            # `prepare` builds the module outside the timing (building a table quantizes and
            # copies it: milliseconds that a lookup does not pay) and returns the timed calls
            if o.kind == "table":
                t = names.index(o.name)
                key = (f"{machine}|{o.key}|rows={emulator.model.config.tables[t].num_embeddings}"
                       f"|b={len(batch.sparse[t])}|ids={digests[t]}|{PROTOCOL}|marginal")

                def prepare(o=o, matrix=batch.sparse[t], h=emulator.model.config.tables[t].hotness):
                    emb = emulator.table_module(o, range_method, full=True)  # the table's real size
                    ranked = bool(emb.rank_maps())
                    calls = []
                    for rows in (matrix, matrix[:1]):  # the batch, then its first sample alone
                        # ids as the loader hands them to the runtime (FeatureIds), so the cost is the lookup's
                        ids = FeatureIds.from_matrix(rows, (h,))
                        ids = emb.ranked(ids) if ranked else ids
                        calls.append(lambda ids=ids: emb.lookup_ids(ids, ranked))
                    return calls
            else:
                x = batch.layer_in[o.name]
                key = f"{machine}|{o.key}|shape={tuple(x.shape)}|{PROTOCOL}"

                def prepare(o=o, x=x):
                    layer = emulator.layer_module(o)
                    return [lambda: layer(x)]
            if key not in cache:
                with torch.inference_mode():
                    timed = [_median_us(call, repeats) for call in prepare()]
                # a table's marginal cost, floored at a nanosecond: the difference of two medians can
                # come out <= 0 for a cache-resident table whose batch costs no more than one sample
                cache[key] = timed[0] if len(timed) == 1 else max(timed[0] - timed[1], 1e-3)
                dirty = True
            out[o.key] = cache[key]
    if dirty:
        atomic_write_text(path, json.dumps(cache, indent=1))
    return out


def significant_costs(cost: dict[str, float], items: dict[str, list[Option]],
                      share: float = 0.005) -> dict[str, float]:
    """`cost` with every saving under `share` x the float plan's time priced as no saving."""
    base = {item: next((o for o in opts if o.is_float_baseline), opts[0]) for item, opts in items.items()}
    floor = share * sum(cost[o.key] for o in base.values())
    out = {}
    for item, opts in items.items():
        b = cost[base[item].key]
        for o in opts:
            out[o.key] = cost[o.key] if b - cost[o.key] >= floor else max(b, cost[o.key])
    return out


def time_plans(model_dir: str | Path, plans: dict[str, Plan], calibration: dict[str, Any] | None,
               batches: list[CachedBatch], hotness: list[int], scratch: Path | None,
               repeats: int = 9) -> dict[str, list[float]]:
    """Microseconds of one model call of each plan, converted whole and timed side by side.

    The option costs above time tables built in memory, one at a time; a served plan is an artifact
    read from its file mapping, all tables in one call (lowprec.search.whole says where they
    disagreed). So plans the search compares are also converted in
    full (into `scratch`, removed afterwards), loaded as serving loads them, and called on the
    cached batches (dense features and FeatureIds; ranks for rank-ordered tiers, as the option
    timing). Every plan first makes WARMUP_CALLS untimed calls; then each repeat times every plan,
    in an order rotated per repeat, over all batches. Returns plan -> per-repeat us a call."""
    from lowprec.search.validate import scratch_dir

    with scratch_dir(scratch) as tmp:
        calls = {name: _whole_call(model_dir, plan, calibration, batches, hotness, tmp / f"plan-{i}")
                 for i, (name, plan) in enumerate(plans.items())}
        with torch.inference_mode():
            out = _interleaved(calls, len(batches), repeats)
        del calls  # the artifacts are mapped: release them before their directory goes
    return out


def _interleaved(calls: dict[str, Callable[[], None]], per_call: int, repeats: int) -> dict[str, list[float]]:
    for fn in calls.values():
        for _ in range(max(1, WARMUP_CALLS // per_call)):
            fn()
    names, out = list(calls), {name: [] for name in calls}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            calls[name]()  # untimed: this plan's rows back in cache after the previous plan's
            t0 = time.perf_counter()
            calls[name]()
            out[name].append((time.perf_counter() - t0) / per_call * 1e6)
    return out


def _whole_call(model_dir: str | Path, plan: Plan, calibration: dict[str, Any] | None,
                batches: list[CachedBatch], hotness: list[int], out: Path) -> Callable[[], None]:
    """`plan` converted at `out` and loaded; a call scores every batch through it."""
    from lowprec.checkpoint.artifact import load_artifact
    from lowprec.checkpoint.convert import convert

    convert(model_dir, plan, out, calibration)
    runtime, _ = load_artifact(out)
    ranked = bool(runtime.embeddings.rank_maps())
    inputs = []
    for b in batches:
        ids = FeatureIds.from_matrix(torch.cat(b.sparse, dim=1), tuple(hotness))
        inputs.append((b.dense, runtime.embeddings.ranked(ids) if ranked else ids))

    def call() -> None:
        for dense, ids in inputs:
            runtime.logits(dense, runtime.embeddings.lookup_ids(ids, ranked))
    return call
