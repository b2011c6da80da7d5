"""Ingest throughput: `lowprec data prepare` as a user runs it, this tree against a commit.

    python tools/bench_csv_ingest.py [--format csv|criteo-tsv] [--rows 210000] [--repeats 3]
        [--against REV | --nproc N] [--out reports/csv_ingest.json]

Writes a seeded click log (ISO times over 7 days, 0.3% positives, a log1p dense column and one with
empty cells, a hashed Zipf user id over 200k values, a vocabulary item column and a multi-hot tag
column) and times whole `data prepare ... --window day` runs, each in a child process (interpreter
start and imports included, as a user pays them), this tree's and --against's (a git worktree of
REV) alternating in every repeat. Reports seconds, rows/s and MB/s per run as median [min-max],
this tree's speedup paired per repeat, and whether the two trees wrote the same window files.
`--nproc N` times this tree's one-process run against `lowprec --nproc N data prepare` (csv: ranks
read shares of the file, rank 0 merges) instead of two trees, and checks the two datasets are the
same. `--format criteo-tsv` writes Criteo's layout instead (label, 13 integer columns with empty cells, 26
hex categoricals over Zipf values) and prepares it with `--table-size kaggle`, one window.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

SCHEMA = """
label = "clicked"
time = "event_time"
[dense.price]
transform = "log1p"
[dense.age]
[categorical.user]
num_embeddings = 100000
[categorical.item]
encoding = "vocab"
[categorical.tags]
num_embeddings = 1000
sep = "|"
hotness = 4
"""


def write_log(path: Path, rows: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    per_day = max(rows // 7, 1)
    with open(path, "w") as f:
        f.write("event_time,clicked,price,age,user,item,tags\n")
        for i in range(rows):
            d, s = divmod(i, per_day)
            u, it = int(rng.zipf(1.2)) % 200_000, int(rng.zipf(1.4)) % 5000
            tags = "|".join(f"t{int(rng.zipf(1.5)) % 300}" for _ in range(int(rng.integers(0, 6))))
            age = "" if rng.random() < 0.2 else str(int(rng.integers(15, 90)))
            y = int(rng.random() < 0.003)
            sec = s * 86_400 // per_day
            f.write(f"2024-03-{min(d, 6) + 1:02d}T{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d},{y},"
                    f"{rng.lognormal(2, 2):.3f},{age},u{u},i{it},{tags}\n")


def write_criteo(path: Path, rows: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            ints = ["" if rng.random() < 0.2 else str(int(rng.zipf(1.5))) for _ in range(13)]
            cats = ["" if rng.random() < 0.05 else f"{(int(rng.zipf(1.2)) * 2654435761) % 2**32:08x}"
                    for _ in range(26)]
            f.write("\t".join([str(int(rng.random() < 0.03)), *ints, *cats]) + "\n")


def prepare(tree: Path, fmt: str, src: Path, schema: Path, out: Path, nproc: int = 1) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    how = ["--schema", str(schema), "--window", "day"] if fmt == "csv" else ["--table-size", "kaggle"]
    cmd = [sys.executable, "-m", "lowprec", *(["--nproc", str(nproc)] if nproc > 1 else []), "data", "prepare",
           "--format", fmt, "--input", str(src), "--out", str(out), *how]
    start = time.perf_counter()
    # cwd outside both trees: `python -m` puts the working directory first on sys.path
    subprocess.run(cmd, env=env, cwd=out.parent, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def check_imports(tree: Path, cwd: Path) -> None:
    """The child of `prepare` imports lowprec from `tree` (an editable install or a working
    directory inside another tree would win otherwise, and both "trees" would time one)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    got = subprocess.run([sys.executable, "-c", "import lowprec; print(lowprec.__file__)"], env=env, cwd=cwd,
                         check=True, capture_output=True, text=True).stdout.strip()
    if not Path(got).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"a child process given {tree} imports lowprec from {got}")


def same_windows(a: Path, b: Path, pattern: str = "day_*.npy") -> bool:
    files = sorted(p.name for p in a.glob(pattern))
    return files == sorted(p.name for p in b.glob(pattern)) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", choices=("csv", "criteo-tsv"), default="csv")
    ap.add_argument("--rows", type=int, default=210_000)
    ap.add_argument("--repeats", type=int, default=3)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--against", help="a git revision to time beside this tree")
    how.add_argument("--nproc", type=int, help="time this tree on one process and on N (csv)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="csv_ingest_") as tmp:
        tmp = Path(tmp)
        src, schema = tmp / ("log.csv" if args.format == "csv" else "day_0.tsv"), tmp / "log.toml"
        (write_log if args.format == "csv" else write_criteo)(src, args.rows)
        schema.write_text(SCHEMA)
        trees = {"this tree": bc.REPO}
        nprocs = {"this tree": 1}
        if args.nproc:
            trees, nprocs = {"1 process": bc.REPO, f"{args.nproc} processes": bc.REPO}, {f"{args.nproc} processes": args.nproc}
        if args.against:
            subprocess.run(["git", "-C", str(bc.REPO), "worktree", "add", "-q", "--detach", str(tmp / "against"),
                            args.against], check=True)
            trees[args.against] = tmp / "against"
        try:
            for tree in trees.values():
                check_imports(tree, tmp)
            times: dict[str, list[float]] = {k: [] for k in trees}
            for r in range(args.repeats):
                for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                    times[name].append(prepare(trees[name], args.format, src, schema,
                                               tmp / f"out-{len(times[name]) % 2}-{name}", nprocs.get(name, 1)))
            pattern = "*" if args.nproc else "day_*.npy"  # (one tree's dataset.json, vocabularies and all)
            same = same_windows(*(tmp / f"out-0-{k}" for k in trees), pattern) if len(trees) == 2 else None
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(bc.REPO), "worktree", "remove", "--force", str(tmp / "against")],
                               check=False)
        mb = src.stat().st_size / 1e6
    result = {"command": bc.command_line("bench_csv_ingest.py", argv), "machine": bc.machine(1),
              "format": args.format, "rows": args.rows, "mb": mb, "repeats": args.repeats,
              "seconds": {k: bc.spread(v) for k, v in times.items()},
              "rows_per_s": {k: args.rows / bc.spread(v)["median"] for k, v in times.items()},
              "mb_per_s": {k: mb / bc.spread(v)["median"] for k, v in times.items()},
              "speedup": (bc.speedup(times[args.against], times["this tree"]) if args.against else
                          bc.speedup(times["1 process"], times[f"{args.nproc} processes"]) if args.nproc else None),
              "nproc": args.nproc, "load_after": os.getloadavg(),
              "same_windows": same, "times": times}
    for k, v in times.items():
        print(f"{k}: {bc.fmt_spread(bc.spread(v), digits=2, unit=' s')} for {args.rows:,} rows ({mb:.1f} MB): "
              f"{result['rows_per_s'][k]:,.0f} rows/s, {result['mb_per_s'][k]:.2f} MB/s")
    if args.against:
        print(f"this tree over {args.against}: {bc.fmt_ratio(result['speedup'])} (paired); same window files: {same}")
    if args.nproc:
        print(f"{args.nproc} processes over 1: {bc.fmt_ratio(result['speedup'])} (paired); same dataset: {same}")
    if args.out:
        bc.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
