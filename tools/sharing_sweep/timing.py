"""Lookup speed of exact ROBE (torch: `RobeBag.exact_runtime()`, `RobeExact.exact_pooled`) against
aligned ROBE served by the FBGEMM TBE (`lowprec.serve.runtime.QuantizedEmbeddings`), on one batch.

The aligned runtime's time is split into its id transform and the TBE call: "hash transform only"
runs the runtime's own id-transform modules (`emb.id_maps`, one per TBE feature) on the batch's ids
and assembles the TBE's (indices, offsets, per-sample weights) as `QuantizedEmbeddings.lookup_tables`
does; "TBE lookup only" calls `emb.tbe` on those inputs. A check confirms that these inputs give the
runtime's own output exactly."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sharing_sweep.common import worker_init

EXACT = "exact torch runtime (RobeExact.exact_pooled)"
HASH_ONLY = "aligned: hash transform only (id_maps)"
LEGACY_HASH_ONLY = "aligned: hash transform only (tbe_inputs)"  # the same row in JSON of earlier revisions


def tbe_inputs(emb: Any, tables: list[Any]) -> tuple[Any, Any, Any]:
    """Per-table (B, hotness) ids -> the TBE's (indices, offsets, weights or None) (the runtime's own)."""
    return emb.tbe_inputs(tables)


def pooled_from_tbe(emb: Any, out: Any) -> Any:
    """The TBE's (B, sum of feature dims) output -> pooled (B, T, D) (the runtime's own)."""
    return emb.pooled_from_tbe(out, out.shape[0])


def _models_and_runtimes(ds: Any, ratio: float, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Untrained exact and aligned ROBE DLRMs (every table ROBE at `ratio`), and the aligned one
    converted at fp32 and int8 and loaded: its runtime embeddings per precision."""
    import torch

    from lowprec.checkpoint.convert import convert
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.checkpoint.load import load_model
    from lowprec.model.dlrm import DLRM
    from lowprec.plan import Plan
    from lowprec.precision import Precision
    from lowprec.train import TrainConfig, model_config_for

    models = {}
    for name, spec in (("exact", f"robe:ratio={ratio:g}"), ("aligned", f"robe:ratio={ratio:g},align=1")):
        torch.manual_seed(0)
        models[name] = DLRM(model_config_for(ds.meta, TrainConfig(windows=(0,), embedding=spec))).eval()
    save_float_model(models["aligned"], work / "aligned")
    runtimes = {}
    for prec in ("fp32", "int8"):
        convert(work / "aligned", Plan.uniform(Precision.parse(prec, "p")), work / f"aligned-{prec}")
        runtimes[prec] = load_model(work / f"aligned-{prec}")[0].embeddings
    return models, runtimes


def _functions(models: dict[str, Any], runtimes: dict[str, Any], sparse: Any) -> dict[str, Callable[[], Any]]:
    """The timed calls, by the name the report shows."""
    import torch

    from lowprec.model.dlrm import split_sparse
    from lowprec.model.sharing import robe_offsets

    parts = split_sparse(sparse, models["exact"].hotness)
    exact_rt = [m.exact_runtime() for m in models["exact"].embeddings]
    emb = runtimes["fp32"]
    inputs = tbe_inputs(emb, parts)

    def train_module(kind: str) -> Callable[[], Any]:
        mods = models[kind].embeddings
        return lambda: torch.stack([m(ids) for m, ids in zip(mods, parts)], 1)

    return {
        EXACT: lambda: torch.stack([m.exact_pooled(ids) for m, ids in zip(exact_rt, parts)], 1),
        "exact: hash only (robe_offsets)":
            lambda: [robe_offsets(ids, m.member, m.z, m.array.shape[0], m.seed) for m, ids in zip(exact_rt, parts)],
        "aligned TBE fp32 (hash transform + TBE)": lambda: emb(sparse),
        "aligned TBE int8 (hash transform + TBE)": lambda: runtimes["int8"](sparse),
        HASH_ONLY: lambda: tbe_inputs(emb, parts),
        "aligned: TBE lookup only, fp32": lambda: emb.tbe(*inputs),
        "training module, exact (RobeBag forward)": train_module("exact"),
        "training module, aligned (RobeBag forward)": train_module("aligned"),
    }


def _checks(fns: dict[str, Callable[[], Any]], emb: Any, sparse: Any) -> dict[str, float]:
    from lowprec.model.dlrm import split_sparse

    served = emb(sparse)
    split = pooled_from_tbe(emb, emb.tbe(*tbe_inputs(emb, split_sparse(sparse, emb.hotness))))
    return {
        "aligned TBE fp32 vs aligned float module, max |diff|":
            float((served - fns["training module, aligned (RobeBag forward)"]()).abs().max()),
        "exact runtime vs exact float module, max |diff|":
            float((fns[EXACT]() - fns["training module, exact (RobeBag forward)"]()).abs().max()),
        "aligned: id_maps + TBE call vs the runtime's forward, max |diff|": float((split - served).abs().max()),
    }


def _time(fns: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, list[float]]:
    """ms per call of each function, per round; rounds rotate the order of the functions."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[k]()
            times[k].append((time.perf_counter() - t0) / calls * 1e3)
    return times


def speed_job(ctx: dict[str, Any], ratio: float, rounds: int, calls: int, batch: int) -> dict[str, Any]:
    """Exact ROBE (torch `RobeExact.exact_pooled`) vs aligned ROBE on the FBGEMM TBE, same batch.

    Every table of the data set is ROBE at `ratio` (untrained weights: lookup cost does not depend
    on values). Rounds alternate the methods; each round times `calls` calls per method."""
    worker_init()
    import torch

    from lowprec.data.batches import iter_batches
    from lowprec.data.dataset import Dataset
    from lowprec.data.windows import parse_windows

    ds = Dataset(ctx["data"])
    w = parse_windows(ctx["eval"], ds.meta.window_indices)
    sparse = next(iter(iter_batches(ds, w, batch))).sparse
    work = Path(ctx["work"]) / "speed"
    models, runtimes = _models_and_runtimes(ds, ratio, work)
    fns = _functions(models, runtimes, sparse)
    with torch.inference_mode():
        check = _checks(fns, runtimes["fp32"], sparse)
        times = _time(fns, rounds, calls)
    shutil.rmtree(work, ignore_errors=True)
    size = models["exact"].embeddings[0].array.size
    return {"ratio": ratio, "batch": batch, "tables": len(models["exact"].hotness), "rounds": rounds,
            "calls_per_round": calls, "array_elements": int(size), "array_mib": size * 4 / 2**20,
            "threads": torch.get_num_threads(),
            "ms_per_call": {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                                "q1": float(np.percentile(v, 25)), "q3": float(np.percentile(v, 75)),
                                "rounds": v} for k, v in times.items()},
            "checks": check}
