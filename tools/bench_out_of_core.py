"""Models larger than RAM: every CLI stage on a ~30 GB float model, beside the same at ~2 GB.

For each size it writes a dataset (3 windows of a few thousand rows) and a float model with one
table of ~2/3 of the bytes and one of ~1/3 (dim 64, fp32), streamed to disk in blocks
(`write_float_model`, never in RAM), then runs each stage as its own `lowprec` child process under
RLIMIT_DATA (--limit-gb, so nothing can exhaust the machine's memory):
convert (uniform int4, and a plan: big table int4, the other int8), eval of the float model and
of the int4 artifact, compare of the two, calibrate, and one search (on --rows rows). With
--sharded N the model is stored as MLPerf DLRMv2's checkpoint is: each of the two big tables in N
row-range shard files, the rest in one file, a model.safetensors.index.json naming them (config.json
records every file's sha256, the index's too): the layout whose tables eval, compare, drift,
calibrate and convert look up shard by shard, and search joins (README "Models larger than RAM"). It records wall time, model GB
per second and the child's peak anonymous memory (RssAnon sampled every 50 ms from
/proc/PID/status; read-only file mappings are file pages, not anonymous ones), writes
the tables as markdown to --out (reports/out_of_core.md is that output merged by hand with the
analysis sections, so write elsewhere and merge) and deletes the big files (unless --keep).
It deletes only directories it created: each carries a marker file, and a --work or size directory
that exists without one is refused.

    .venv/bin/python tools/bench_out_of_core.py --sizes 2,30 --work /tmp/ooc --out /tmp/ooc.md
    .venv/bin/python tools/bench_out_of_core.py --sizes 2 --sharded 8 --limit-gb 1 --out /tmp/ooc-sharded.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine, machine_line  # noqa: E402

from lowprec.checkpoint.float_model import write_float_model  # noqa: E402
from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature  # noqa: E402
from lowprec.fileio import sha256_file  # noqa: E402
from lowprec.train import TrainConfig, model_config_for  # noqa: E402

DIM = 64
MARKER = ".bench_out_of_core"  # in every directory this tool created (and so may delete)
_CHILD = ("import resource, sys\n"
          "resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))\n"
          "from lowprec.cli import main\n"
          "sys.argv = ['lowprec'] + sys.argv[1:]\n"
          "main()\n")


def write_dataset(out: Path, rows_big: int, rows_mid: int, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    feats = [SparseFeature("big", rows_big, 1), SparseFeature("mid", rows_mid, 1),
             SparseFeature("s0", 1000, 1), SparseFeature("s1", 100, 1)]
    writer = DatasetWriter(out, [f"d{i}" for i in range(4)], feats, {"source": "bench_out_of_core"})
    for w in range(3):
        ww = writer.window(label=f"w{w}", start=f"2020-01-{w + 1:02d}", end=f"2020-01-{w + 2:02d}")
        dense = rng.normal(0, 1, (rows, 4)).astype(np.float32)
        ids = np.stack([rng.integers(0, f.num_embeddings, rows) for f in feats], 1)
        labels = (rng.random(rows) < 1 / (1 + np.exp(-dense[:, 0]))).astype(np.int32)
        ww.append(dense, ids, labels)
        writer.add_window(ww)
    writer.finish()
    return out


def pieces(name: str, shape: tuple[int, ...], block_rows: int = 1 << 20):
    """One random block (uniform +-0.1) per tensor, repeated: writing runs at disk speed, and row-wise
    conversion costs the same for repeated rows."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    block = torch.empty((min(block_rows, shape[0]), *shape[1:])).uniform_(-0.1, 0.1, generator=g)
    for start in range(0, shape[0], block_rows):
        yield block[: min(block_rows, shape[0] - start)]


def shard_tables(model: Path, parts: int, min_rows: int = 100_000) -> None:
    """Rewrite `model` (one model.safetensors) in the MLPerf DLRMv2 layout: each table of >= min_rows
    rows in `parts` row-range files (one slice in memory at a time), the other tensors in
    rest.safetensors, an index naming them; config.json records every file's sha256 and the index's."""
    from safetensors.torch import save_file

    from lowprec.checkpoint.mapped import open_tensors  # read-only shared mappings: not RLIMIT_DATA

    index, wmap, rest = "model.safetensors.index.json", {}, {}
    src = open_tensors(model / "model.safetensors")
    for name in src.names():
        rows = src.shape(name)[0]
        if not name.endswith(".bag.weight") or rows < min_rows:
            rest[name], wmap[name] = src.tensor(name).clone(), "rest.safetensors"
            continue
        bounds = np.linspace(0, rows, parts + 1).astype(int)
        wmap[name] = []
        for i, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            file = f"{name.split('.')[1]}-{i}.safetensors"
            save_file({"rows": src.tensor(name)[lo:hi].contiguous()}, str(model / file))
            wmap[name].append({"file": file, "tensor": "rows", "rows": [lo, hi]})
    del src
    save_file(rest, str(model / "rest.safetensors"))
    (model / index).write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    (model / "model.safetensors").unlink()
    config = json.loads((model / "config.json").read_text())
    files = sorted(p.name for p in model.glob("*.safetensors")) + [index]
    config["sha256"] = {f: sha256_file(model / f) for f in files}
    (model / "config.json").write_text(json.dumps(config))


def run_stage(args: list[str], limit: int) -> dict:
    """One lowprec command in a child under RLIMIT_DATA; wall time and peak RssAnon / VmHWM."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(limit=limit), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_anon = peak_hwm = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            peak_anon = max(peak_anon, int(fields["RssAnon"].split()[0]) * 1024)
            peak_hwm = max(peak_hwm, int(fields["VmHWM"].split()[0]) * 1024)
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    tail = [line for line in err.splitlines() if "Error" in line or "error" in line][-2:]
    return {"command": "lowprec " + " ".join(map(str, args)), "seconds": round(time.time() - start, 1),
            "exit": proc.returncode, "peak_anon": peak_anon, "peak_rss": peak_hwm,
            "error": " | ".join(tail)[-300:] if proc.returncode else ""}


def make_own(path: Path) -> None:
    """Create `path` (refusing one that exists without our marker) and mark it as this tool's."""
    if path.exists() and not (path / MARKER).exists():
        sys.exit(f"{path} exists and was not created by this tool; choose another --work")
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()


def remove_own(path: Path) -> None:
    """Delete `path` if this tool created it (it carries the marker); leave anything else alone."""
    if (path / MARKER).exists():
        shutil.rmtree(path, ignore_errors=True)


def write_inputs(root: Path, gb: float, rows: int, sharded: int = 0) -> tuple[Path, Path, float | None]:
    """The dataset and float model under `root` (its big tables in `sharded` row shards, if > 0);
    reused (write time None) if a complete one is there."""
    big, mid = int(gb * 1e9 * 2 / 3 / (DIM * 4)), int(gb * 1e9 / 3 / (DIM * 4))
    ds, model = root / "data", root / "model"
    if (model / "config.json").exists() and (ds / "dataset.json").exists():
        return ds, model, None
    remove_own(root)
    make_own(root)
    t = time.time()
    write_dataset(ds, big, mid, rows)
    config = model_config_for(Dataset(ds).meta, TrainConfig(windows=(0,), embedding_dim=DIM))
    write_float_model(model, config, pieces, {"source": "bench_out_of_core"})
    if sharded:
        shard_tables(model, sharded)
    return ds, model, round(time.time() - t, 1)


def bench_size(gb: float, work: Path, limit: int, rows: int, report, only: set[str] | None = None,
               sharded: int = 0) -> dict:
    root = work / f"{gb:g}gb{f'-{sharded}shards' if sharded else ''}"  # one --work per concurrent run
    big, mid = int(gb * 1e9 * 2 / 3 / (DIM * 4)), int(gb * 1e9 / 3 / (DIM * 4))
    ds, model, write_s = write_inputs(root, gb, rows, sharded)
    size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    plan = root / "plan.json"
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1, "tables": {
        "big": {"precision": "int4"}, "*": {"precision": "int8"}}}))
    stages = {
        "convert int4": ["convert", "--model", model, "--precision", "int4", "--out", root / "a-int4"],
        "eval float": ["eval", "--model", model, "--data", ds, "--windows", "2", "--json"],
        "eval artifact": ["eval", "--model", root / "a-int4", "--data", ds, "--windows", "2", "--json"],
        "compare": ["compare", "--reference", model, "--candidate", root / "a-int4", "--data", ds, "--windows", "2",
                    "--json"],
        "calibrate": ["calibrate", "--model", model, "--data", ds, "--windows", "1",
                      "--out", root / "calib.json"],
        "search": ["search", "--model", model, "--data", ds, "--calib-windows", "1", "--eval-windows", "2",
                   "--precisions", "fp32,int8,int4", "--max-rows", str(rows), "--out", root / "found.json"],
        "convert plan": ["convert", "--model", model, "--plan", plan, "--out", root / "a-plan"],
    }
    out = {"gb": gb, "bytes": size, "write_seconds": write_s, "big_rows": big,
           "mid_rows": mid, "sharded": sharded, "stages": {}, "root": root}
    for name, args in stages.items():
        if only is not None and name not in only:
            continue
        out["stages"][name] = run_stage(args, limit)
        print(f"{gb:g} GB {name}: {out['stages'][name]}", file=sys.stderr, flush=True)
        report(out)  # partial results survive an interrupted run
    return out


def render(results: list[dict], limit: int, cmd: str) -> str:
    lines = ["# Out-of-core: every stage on a float model larger than RAM", "",
             f"Command: `{cmd}`", "", machine_line(machine(1)), "",
             f"Each stage is its own `lowprec` process under RLIMIT_DATA = {limit / 2**30:.1f} GiB, "
             "OMP_NUM_THREADS=1. GB/s = float model bytes / wall time. Peak anon = the child's "
             "largest RssAnon (sampled every 50 ms): heap and anonymous mappings, the memory a model "
             "would need if it were copied; peak RSS (VmHWM) also counts page-cache pages of the "
             "read-only mappings, which the kernel reclaims at will.", ""]
    for r in results:
        lines += [f"## {r['bytes'] / 1e9:.1f} GB model (tables: {r['big_rows']:,} and {r['mid_rows']:,} "
                  f"rows x {DIM} fp32, two small ones"
                  + (f", each big one in {r['sharded']} row-shard files with an index" if r.get("sharded") else "")
                  + "); "
                  + (f"written in {r['write_seconds']} s" if r["write_seconds"] else "written by an earlier run"), "",
                  "| stage | exit | wall s | GB/s | peak anon MiB | peak RSS MiB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, s in r["stages"].items():
            gbs = r["bytes"] / 1e9 / s["seconds"] if s["seconds"] else float("nan")
            lines.append(f"| {name} | {s['exit']} | {s['seconds']} | {gbs:.2f} | "
                         f"{s['peak_anon'] / 2**20:.0f} | {s['peak_rss'] / 2**20:.0f} |")
        errors = [f"- {n}: {s['error']}" for n, s in r["stages"].items() if s["exit"]]
        lines += [""] + (["Failures:", *errors, ""] if errors else [])
        lines += ["Commands:", "", "```", *[s["command"] for s in r["stages"].values()], "```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2,30", help="model sizes in GB")
    ap.add_argument("--work", default="/tmp/lowprec-ooc",
                    help="scratch directory (created, and deleted at the end unless --keep)")
    ap.add_argument("--limit-gb", type=float, default=4.0, help="RLIMIT_DATA of every child")
    ap.add_argument("--rows", type=int, default=4000, help="rows per window (search uses them all)")
    ap.add_argument("--out", required=True,
                    help="markdown output (not reports/out_of_core.md itself: merge into it by hand)")
    ap.add_argument("--keep", action="store_true", help="keep the model and outputs (a later run reuses them)")
    ap.add_argument("--sharded", type=int, default=0,
                    help="store each big table in N row-range shard files with an index (MLPerf DLRMv2's layout)")
    ap.add_argument("--stages", default=None,
                    help="comma-separated stage names to run (default all; 'none' only writes the inputs)")
    args = ap.parse_args()
    limit = int(args.limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))  # the writer too
    work = Path(args.work)
    make_own(work)
    results: list[dict] = []
    cmd = "python tools/bench_out_of_core.py " + " ".join(sys.argv[1:])

    def report(current: dict) -> None:
        Path(args.out).write_text(render([*results, current], limit, cmd))

    try:
        for gb in (float(x) for x in args.sizes.split(",")):
            only = None if args.stages is None else set(args.stages.split(",")) - {"none"}
            r = bench_size(gb, work, limit, args.rows, report, only, args.sharded)
            results.append(r)
            if not args.keep:
                remove_own(r["root"])
    finally:
        if not args.keep:
            remove_own(work)
    Path(args.out).write_text(render(results, limit, cmd))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
