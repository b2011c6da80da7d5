"""Latency costs for `--objective latency`: each option timed on this machine, cached on disk.

A table option is timed as the lookup of one batch of its real calibration ids (already in the
runtime's FeatureIds layout, as the data loader hands them over) through a single-table FBGEMM TBE
at the option's precision and sharing (what the runtime calls); a layer
option as its forward on the layer's real cached input (FBGEMM int8 or fp32 GEMM). Costs are the
median of `repeats` timings in microseconds, keyed by the CPU model, torch version and the option's
shape, and cached in ~/.cache/lowprec/latency.json (or $LOWPREC_CACHE), so a search re-times only
what it has not seen. The model is additive, like the accuracy model: the plan's predicted latency
is the sum of its options' latencies.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from lowprec.data.ids import FeatureIds
from lowprec.fileio import atomic_write_text
from lowprec.search.sensitivity import Emulator
from lowprec.search.space import Option


def _cache_file() -> Path:
    root = Path(os.environ.get("LOWPREC_CACHE", Path.home() / ".cache" / "lowprec"))
    return root / "latency.json"


def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown cpu"
    return f"{cpu}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def _median_us(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def measure_costs(emulator: Emulator, items: dict[str, list[Option]], range_method: str,
                  repeats: int = 7) -> dict[str, float]:
    """Microseconds per batch for every option (read from, and added to, the on-disk cache)."""
    path = _cache_file()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    batch = emulator.cache.batches[0]
    names = emulator.model.config.table_names
    out, machine, dirty = {}, _machine(), False
    for opts in items.values():
        for o in opts:
            if o.kind == "table":
                t = names.index(o.name)
                # ids as the loader hands them to the runtime (FeatureIds), so the cost is the lookup's
                ids = FeatureIds.from_matrix(batch.sparse[t], (emulator.model.config.tables[t].hotness,))
                key = (f"{machine}|{o.key}|rows={emulator.model.config.tables[t].num_embeddings}|b={ids.batch}"
                       "|feature-ids")
                run = lambda o=o, ids=ids: emulator.table_module(o, range_method)(ids)  # noqa: E731
            else:
                x = batch.layer_in[o.name]
                key = f"{machine}|{o.key}|shape={tuple(x.shape)}"
                run = lambda o=o, x=x: emulator.layer_module(o)(x)  # noqa: E731
            if key not in cache:
                with torch.inference_mode():
                    cache[key] = _median_us(run, repeats)
                dirty = True
            out[o.key] = cache[key]
    if dirty:
        atomic_write_text(path, json.dumps(cache, indent=1))
    return out
