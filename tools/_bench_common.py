"""Shared helpers of the benchmark tools: machine description, interleaved timing, spread, tables.

Every benchmark here reports RATIOS of variants measured side by side in one process and one run:
`interleaved` times short blocks of calls of the variants, in a fresh random order every round
(B C A, A C B, ...; so no variant always follows the same neighbour) within every repeat, after
warm-up, so a change in machine load during the run hits every variant alike; `paired_ratio` then
divides the variants repeat by repeat. Spread is
reported as median [min-max] over the repeats (and IQR in the JSON). Nothing here asserts a
wall-clock limit: the numbers are facts about one machine on one day, recorded with `machine()`.

Peak memory of a piece of work is measured in a child process of its own (`run_child`): the child
reports its own VmHWM (peak resident set, /proc/self/status) and its RSS before the work, plus
sampled peaks of anonymous and file-backed memory (`RssSampler`). Not the parent's
getrusage(RUSAGE_CHILDREN) / wait4 ru_maxrss: Python starts children with vfork + exec, and Linux
carries the pre-exec high-water mark into the child's ru_maxrss, so a child of a 900 MB parent
reports >= 900 MB whatever it does (measured here).
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib.metadata as md
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports"
TOOLS = REPO / "tools"
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


# ---------------------------------------------------------------------------------------------
# the machine


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model, flags


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, SIMD flags, memory, library versions, torch threads, date, load."""
    import torch

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "simd_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "avx512": any(f.startswith("avx512") for f in flags),
        "mem_gib": _mem_total_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fbgemm_gpu_cpu": _version("fbgemm-gpu-cpu"),
        "numpy": _version("numpy"),
        "lowprec": _version("lowprec"),
        "git_commit": _git_commit(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def machine_line(m: dict[str, Any]) -> str:
    flags = ", ".join(m["simd_flags"]) or "none"
    return (f"{m['cpu']}, {m['cores']} cores ({flags}; AVX-512 {'yes' if m['avx512'] else 'no'}), "
            f"{m['mem_gib']} GiB; torch {m['torch']}, fbgemm-gpu-cpu {m['fbgemm_gpu_cpu']}, "
            f"python {m['python']}; torch threads pinned to {m['torch_threads']}; {m['date_utc']}; "
            f"1-min load average {m['loadavg_1min']} at start")


def set_threads(n: int) -> int:
    """Pin torch to n threads and apply the CLI's malloc settings (lowprec/allocator.py), so every
    tool measures the process `lowprec` runs (tools/bench_allocator.py measures the settings)."""
    import torch

    from lowprec.allocator import keep_buffers_in_heap

    keep_buffers_in_heap()
    torch.set_num_threads(n)
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# timing


def _calls_for(fn: Callable[[], Any], seconds: float, max_calls: int, probes: int = 8) -> int:
    """Calls that last about `seconds`, from the median of `probes` calls after `probes` untimed
    ones. (Sizing from one call, right after another variant, gave variants of equal speed blocks
    of 32 and 63 calls, and the shorter blocks paid the switch more often: a 2-4% bias.)"""
    for _ in range(probes):
        fn()
    times = []
    for _ in range(probes):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    t = max(statistics.median(times), 1e-7)
    return max(1, min(max_calls, math.ceil(seconds / t)))


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                min_seconds: float = 0.05, block_seconds: float = 0.01,
                max_calls: int = 2000, rewarm: bool = True, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of every variant, one value per repeat, the variants finely interleaved.

    Each variant first runs `warmup` times. A *block* is `k` back-to-back calls of one variant,
    `k` fixed per variant so a block lasts about `block_seconds`, preceded (with `rewarm`) by one
    untimed call, so the timed calls find the variant's own data warm in cache as in serving, where
    one model sees batch after batch, not wherever the previous variant left the cache. A
    *round* runs one block of every variant in a fresh random order (seeded), so no variant
    systematically follows one that warmed or flushed the cache for it (a fixed A B C, C B A order
    made raw FBGEMM fp32 always follow a variant reading the same rows: a 4% bias); a repeat is as many rounds as make each variant's share last about `min_seconds`. A repeat's
    value is the variant's mean seconds per call over that repeat, so variants compared in one
    repeat were measured within milliseconds of each other, under the same machine load.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    block = {name: _calls_for(fn, block_seconds, max_calls) for name, fn in variants.items()}
    rounds = max(1, math.ceil(min_seconds / block_seconds)) if block_seconds > 0 else 1
    names = list(variants)
    rng = random.Random(seed)
    out: dict[str, list[float]] = {name: [] for name in variants}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            spent = dict.fromkeys(names, 0.0)
            calls = dict.fromkeys(names, 0)
            for _ in range(rounds):
                for name in rng.sample(names, len(names)):
                    fn, k = variants[name], block[name]
                    if rewarm:
                        fn()  # untimed: re-warms this variant's data after the previous variant's
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    spent[name] += time.perf_counter() - t0
                    calls[name] += k
            for name in names:
                out[name].append(spent[name] / calls[name])
    finally:
        if was_enabled:
            gc.enable()
    return out


def cycling(fn: Callable[[int], Any], n: int) -> Callable[[], Any]:
    """A no-argument callable calling fn(0), fn(1), ..., fn(n - 1), fn(0), ..."""
    state = [0]

    def call():
        k = state[0]
        state[0] = (k + 1) % n
        return fn(k)
    return call


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# spread


def spread(xs: list[float]) -> dict[str, float]:
    """median, min, max, q1, q3 (inclusive quartiles) and n of a list of numbers."""
    xs = [float(x) for x in xs]
    if not xs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"),
                "q1": float("nan"), "q3": float("nan"), "n": 0}
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "q1": q[0], "q3": q[2], "n": len(xs)}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Spread of numerator[r] / denominator[r] over repeats r (values measured side by side)."""
    return spread([a / b for a, b in zip(numerator, denominator) if b])


def speedup(times_base: list[float], times_other: list[float]) -> dict[str, float]:
    """How many times faster `other` is than `base`: base time / other time, per repeat."""
    return paired_ratio(times_base, times_other)


def fmt_ratio(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f}x [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def fmt_spread(s: dict[str, float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    return (f"{s['median'] * scale:.{digits}f}{unit} "
            f"[{s['min'] * scale:.{digits}f}-{s['max'] * scale:.{digits}f}]")


def fmt_si(x: float, digits: int = 3) -> str:
    """1234567 -> '1.23M'."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits - 1}f}{suffix}" if abs(x) / div < 10 else f"{x / div:.{digits - 2}f}{suffix}"
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------------------------------------
# memory


def vm_status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in MiB."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def settle_memory() -> bool:
    """Return freed heap memory to the OS (glibc malloc_trim), then reset VmHWM to the current RSS.

    Without the trim, memory freed earlier stays resident and later work reuses it unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return reset_peak_rss()


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Peaks of VmRSS, RssAnon and RssFile (MiB) sampled every `interval` s in a thread.

    VmHWM counts file-backed pages too (a memory-mapped file that was read counts until it is
    unmapped, although the kernel can drop those pages at will); RssAnon is the memory the process
    itself allocated. Use as `with RssSampler() as s: work(); s.peaks`.
    """

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval = interval
        self.peaks = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = vm_status()
        for k in self.peaks:
            self.peaks[k] = max(self.peaks[k], now.get(k, 0.0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def run_child(cmd: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run `cmd`; return the JSON object on the last line of its stdout.

    The child's stderr passes through (progress). A non-zero exit raises RuntimeError.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}")
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# output


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_default) + "\n")
    tmp.replace(path)
    return path


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def command_line(tool: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"tools/{tool}", *args])  # quoted: the command runs as printed


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
