"""Training-step benchmark: per-table EmbeddingBag + SparseAdam vs FBGEMM's fused training TBE,
and dense vs hash / QR / ROBE tables under the fused step.

    python tools/bench_train.py [--scale 0.05] [--batches 512,2048] [--ratio 10] [--repeats 5]
    python tools/bench_train.py --scale 1.0 --sections step --batches 512,2048 --out reports/train_full.json

Model: the `lowprec train` default DLRM (D=16, bottom 13-64-16, top 64-32-1) over the 26
Criteo-Kaggle cardinalities (lowprec.data.synth.KAGGLE_CARDINALITIES) x --scale, one id per table
per sample, Zipf ids (exponent 1.05-1.3 per table, random rank -> id permutation), labels
Bernoulli(0.25). Every variant is one full training step (forward, BCE loss, backward, optimizer
steps) of `lowprec.training.steps`, on its own copy of the same initial model, cycling through the
same --distinct batches:

  step section     sparse-adam      EmbeddingBag per table, sparse gradients, SparseAdam (the old step)
                   rowwise-adagrad  one SplitTableBatchedEmbeddingBagsCodegen, EXACT_ROWWISE_ADAGRAD
                                    fused into backward (`lowprec train`'s default)
  sharing section  rowwise-adagrad on every table as dense / hash / qr / exact robe / aligned robe
                   at --ratio, and sparse-adam dense and exact robe (the previous path) for reference

Variants are interleaved (tools/_bench_common.interleaved: random order every round, several
repeats); ratios are paired per repeat, median [min-max]. Optimizer-state bytes are the tables'
state after warm-up (SparseAdam's moments are allocated on its first step). With --free-model-tables
the fused variant drops the model's own copy of the tables (the benchmark never writes back), which
keeps a full-scale run at ~1x the tables for the fused step. Writes --out (JSON) and, from every
JSON given by --merge plus this run, --report (Markdown).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

from lowprec.data.synth import KAGGLE_CARDINALITIES, SPARSE_NAMES, zipf_ranks  # noqa: E402
from lowprec.model.config import DLRMConfig, TableConfig  # noqa: E402
from lowprec.model.dlrm import DLRM  # noqa: E402
from lowprec.training.steps import make_step  # noqa: E402

TOOL = "bench_train.py"
OLD, NEW = "sparse-adam", "rowwise-adagrad"
TIME_SCALE = [1.0]  # --tiny shortens every timing block (smoke tests)


def make_batches(rows: list[int], batch: int, n: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(r) for r in rows]
    expo = rng.uniform(1.05, 1.3, len(rows))
    out = []
    for _ in range(n):
        ids = np.stack([p[zipf_ranks(rng.random(batch), r, a)] for p, r, a in zip(perms, rows, expo)], 1)
        dense = rng.standard_normal((batch, 13)).astype(np.float32)
        labels = (rng.random(batch) < 0.25).astype(np.float32)
        out.append((torch.from_numpy(dense), torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(labels)))
    return out


def model_config(rows: list[int], spec: str) -> DLRMConfig:
    tables = tuple(TableConfig(name, n, 1, spec) for name, n in zip(SPARSE_NAMES, rows))
    return DLRMConfig(13, tables, 16, (64, 16), (64, 32), tuple(f"int_{i}" for i in range(13)))


def build_step(base: DLRM | None, cfg: DLRMConfig, optimizer: str, free_tables: bool, seed: int):
    torch.manual_seed(seed)
    model = copy.deepcopy(base) if base is not None else DLRM(cfg)
    step = make_step(model, optimizer, 1e-3, 5e-2 if optimizer == NEW else 1e-2)
    if free_tables and optimizer == NEW:
        for p in model.embeddings.parameters():
            p.data = torch.empty(0)  # the TBE holds the live copy; nothing is written back here
    return step


def run_variants(steps: dict[str, Any], batches, repeats: int, batch: int) -> dict[str, Any]:
    def runner(step):
        return bc.cycling(lambda k: step.step(*batches[k]), len(batches))

    times = bc.interleaved({name: runner(s) for name, s in steps.items()}, repeats=repeats, warmup=2,
                           min_seconds=0.6 * TIME_SCALE[0], block_seconds=0.1 * TIME_SCALE[0], max_calls=50)
    return {"batch": batch, "seconds_per_step": times,
            "samples_per_s": {n: bc.spread([batch / t for t in ts]) for n, ts in times.items()},
            "state_bytes": {n: s.state_bytes() for n, s in steps.items()}}


def step_section(args, rows: list[int]) -> list[dict[str, Any]]:
    cfg = model_config(rows, "dense")
    out = []
    for batch in args.batches:
        torch.manual_seed(args.seed)
        base = DLRM(cfg)
        steps = {NEW: build_step(base, cfg, NEW, args.free_model_tables, args.seed)}
        steps[OLD] = make_step(base, OLD, 1e-3, 1e-2)  # the initial model itself: one copy fewer
        del base
        res = run_variants(steps, make_batches(rows, batch, args.distinct, args.seed), args.repeats, batch)
        res["speedup"] = bc.speedup(res["seconds_per_step"][OLD], res["seconds_per_step"][NEW])
        res["table_bytes"] = sum(rows) * 16 * 4
        out.append(res)
        del steps
    return out


def sharing_section(args, rows: list[int]) -> dict[str, Any]:
    r = args.ratio
    kinds = {"dense": "dense", f"hash {r}x": f"hash:ratio={r}", f"qr {r}x": f"qr:ratio={r}",
             f"robe {r}x": f"robe:ratio={r}", f"robe {r}x aligned": f"robe:ratio={r},align=1"}
    steps = {name: build_step(None, model_config(rows, spec), NEW, False, args.seed) for name, spec in kinds.items()}
    steps[f"dense ({OLD})"] = build_step(None, model_config(rows, "dense"), OLD, False, args.seed)
    steps[f"robe {r}x ({OLD})"] = build_step(None, model_config(rows, f"robe:ratio={r}"), OLD, False, args.seed)
    batch = args.sharing_batch
    res = run_variants(steps, make_batches(rows, batch, args.distinct, args.seed), args.repeats, batch)
    t = res["seconds_per_step"]
    res["vs_dense"] = {n: bc.speedup(t["dense"], ts) for n, ts in t.items()}  # rows/s / dense rows/s
    res["ratio"] = r
    return res


def _mb(x: float) -> str:
    return f"{x / 2**20:,.1f} MB"


def report_step(res: dict[str, Any]) -> list[str]:
    lines = [f"### Scale {res['scale']}: {res['rows']:,} rows, {_mb(res['rows'] * 64)} of fp32 tables", ""]
    rows = []
    for r in res["step"]:
        sp, st = r["samples_per_s"], r["state_bytes"]
        rows.append([r["batch"], bc.fmt_spread(sp[OLD], digits=0), bc.fmt_spread(sp[NEW], digits=0),
                     bc.fmt_ratio(r["speedup"]), f"{_mb(st[OLD])} ({st[OLD] / r['table_bytes']:.2f}x)",
                     f"{_mb(st[NEW])} ({st[NEW] / r['table_bytes']:.3f}x)"])
    lines += bc.md_table(["batch", f"{OLD} samples/s", f"{NEW} (fused TBE) samples/s", "fused / old",
                          f"{OLD} state (x tables)", f"{NEW} state (x tables)"], rows)
    return lines + [""]


def report_sharing(res: dict[str, Any]) -> list[str]:
    s = res["sharing"]
    rows = [[name, bc.fmt_spread(s["samples_per_s"][name], digits=0), bc.fmt_ratio(s["vs_dense"][name]),
             _mb(s["state_bytes"][name])] for name in s["seconds_per_step"]]
    return [f"### Sharing kinds, scale {res['scale']}, batch {s['batch']}, ratio {s['ratio']}x", "",
            f"Rows/s relative to dense under the fused step (`{NEW}`); the `({OLD})` rows are the "
            "previous per-table path, for reference.", "",
            *bc.md_table(["tables", "rows/s", "vs dense (fused)", "table optimizer state"], rows), ""]


def headline(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        for st in r.get("step", []):
            old_b, new_b = st["state_bytes"][OLD], st["state_bytes"][NEW]
            out.append(f"- scale {r['scale']} ({r['rows']:,} rows), batch {st['batch']}: the fused TBE step "
                       f"trains {bc.fmt_ratio(st['speedup'])} the samples/s of EmbeddingBag + SparseAdam; "
                       f"table optimizer state {_mb(new_b)} vs {_mb(old_b)} ({old_b / max(new_b, 1):.0f}x less)")
        if r.get("sharing"):
            s = r["sharing"]
            worst = min((v["median"], n) for n, v in s["vs_dense"].items() if OLD not in n)
            old_robe = s["vs_dense"][f"robe {s['ratio']}x ({OLD})"]["median"]
            out.append(f"- sharing kinds under the fused step (scale {r['scale']}, {s['ratio']}x): slowest is "
                       f"{worst[1]} at {worst[0]:.2f}x dense rows/s (target >= 0.5x); exact ROBE on the "
                       f"previous path ran at {old_robe:.2f}x")
    return out


def write_report(results: list[dict[str, Any]], path: Path) -> None:
    lines = ["# Training step: FBGEMM fused TBE vs EmbeddingBag + SparseAdam", "",
             "Regenerate (moderate scale, then full Kaggle cardinalities merged in; never both at once):", "",
             "```", *[r["command"] for r in results], "```", ""]
    for r in results:
        peak = f", process peak RSS {r['peak_rss_mb']:,.0f} MB" if "peak_rss_mb" in r else ""
        lines += [f"- {r['command']}: {bc.machine_line(r['machine'])}; {r['repeats']} interleaved repeats "
                  f"(random order every round), {r['distinct']} distinct batches cycled{peak}"]
    lines += ["", "## Headline", "", *headline(results)]
    lines += ["", "Method: one training step = forward, BCE loss, backward, optimizer steps of "
              "`lowprec.training.steps` (the code `lowprec train` runs), each variant on its own copy of the "
              "same initial model and the same batches; ratios are paired per repeat, median [min-max]. "
              "Optimizer state: the tables' only (the MLPs' Adam state is the same in both).", "",
              "## Old step vs fused TBE (dense tables)", ""]
    for r in results:
        if r.get("step"):
            lines += report_step(r)
    for r in results:
        if r.get("sharing"):
            lines += ["## Dense vs hash / QR / ROBE", ""] + report_sharing(r)
    lines += ["## Notes", "",
              "- The step ratio shrinks with batch size because the MLPs and the dot interaction (the same "
              "code in both variants: bmm alone is ~25-30% of the fused step at batch 2048) take a growing "
              "share; the tables' part of the step is what the fused TBE speeds up.",
              "- Exact ROBE is not a TBE table (a block straddles two rows): all exact robe tables share one "
              "batched gather and a fused row-wise Adagrad update over one-element rows "
              "(lowprec/training/robe_batched.py); aligned ROBE, hash and QR are TBE tables behind a "
              "batched id transform.", ""]
    path.write_text("\n".join(lines) + "\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.05)
    p.add_argument("--batches", default="512,2048", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--sharing-batch", type=int, default=512)
    p.add_argument("--ratio", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--distinct", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", default="step,sharing")
    p.add_argument("--free-model-tables", action="store_true")
    p.add_argument("--tiny", action="store_true", help="Smoke-test size: scale 0.0005, batch 64, 1 repeat.")
    p.add_argument("--out", default=str(bc.REPORTS / "train.json"))
    p.add_argument("--merge", nargs="*", default=[], help="Other bench_train JSONs to include in the report.")
    p.add_argument("--report", default=str(bc.REPORTS / "train.md"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.tiny:
        args.scale, args.batches, args.sharing_batch, args.repeats, args.distinct = 0.0005, [64], 64, 1, 2
    TIME_SCALE[0] = 0.05 if args.tiny else 1.0
    threads = bc.set_threads(args.threads)
    rows = [max(2, int(round(c * args.scale))) for c in KAGGLE_CARDINALITIES]
    sections = args.sections.split(",")
    result: dict[str, Any] = {"tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
                              "scale": args.scale, "rows": sum(rows), "repeats": args.repeats,
                              "distinct": args.distinct}
    if "step" in sections:
        result["step"] = step_section(args, rows)
    if "sharing" in sections:
        result["sharing"] = sharing_section(args, rows)
    result["peak_rss_mb"] = bc.vm_status().get("VmHWM", float("nan"))  # MiB, the whole run
    bc.write_json(args.out, result)
    merged = [result] + [bc.read_json(p) if hasattr(bc, "read_json") else __import__("json").loads(Path(p).read_text())
                         for p in args.merge if Path(p).exists() and Path(p).resolve() != Path(args.out).resolve()]
    write_report(sorted(merged, key=lambda r: r["scale"]), Path(args.report))
    return result


if __name__ == "__main__":
    main()
