"""Constants of the sweep and helpers every part uses: the `lowprec` CLI runner, command strings,
scratch paths, run lookup by id, window specs, worker-process set-up."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOWPREC = str(Path(sys.executable).parent / "lowprec")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
RATIOS = (4, 16, 64, 256, 1000)
AUC_TOL, INT8_AUC_TOL, MIN_COMPRESSION = 0.005, 0.006, 40.0
EVAL_BATCH = 4096  # `lowprec eval` default
METHODS = {  # method -> (label, colour, SPEC template)
    "dense": ("dense", "black", "dense"),
    "hash": ("hash", "C0", "hash:ratio={r}"),
    "qr": ("QR", "C1", "qr:ratio={r}"),
    "robe": ("ROBE aligned (align=1)", "C2", "robe:ratio={r},align=1"),
    "robe_exact": ("ROBE exact (default)", "C3", "robe:ratio={r}"),
    "robe_realign": ("ROBE exact -> realign + 1-epoch fine-tune", "C5", "robe:ratio={r}"),
    "robe_wproj": ("ROBE exact -> count-weighted projection (prototype)", "C6", "robe:ratio={r}"),
    "noemb": ("compressed tables removed (hash:ratio=1e6)", "grey", "hash:ratio=1000000"),
    "hot": ("hot (post-training)", "C4", None),
}
TIMING_KEYS = {"seconds", "speed", "timing", "tool", "machine", "reproducibility", "created"}


def cli(args: list[str], env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `lowprec ARGS --json` in a subprocess; the last stdout line is its JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env_extra or {}))
    args = [str(a) for a in args] + ([] if "--json" in args else ["--json"])
    proc = subprocess.run([LOWPREC, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"lowprec {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cmd(*parts: Any) -> str:
    return "lowprec " + " ".join(shlex.quote(str(p)) for p in parts)


def calib_path(ctx: dict[str, Any], seed: int, windows: str) -> str:
    """Beside the data directory: `lowprec calibrate --out` does not create parent directories."""
    return str(Path(ctx["work"]) / f"calib-dense-s{seed}-w{windows}.json")


def probs_path(ctx: dict[str, Any], rid: str, variant: str) -> Path:
    path = Path(ctx["work"]) / "probs" / f"{rid}-{variant}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def find_run(ds: dict[str, Any], rid: str) -> dict[str, Any] | None:
    return next((r for r in ds["runs"] if r["id"] == rid), None)


def window_ints(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
