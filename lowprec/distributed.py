"""Data-parallel lowprec on torch.distributed: process group, rank slices, merges, start-up checks.

A job runs as N processes under torchrun (`torchrun --nproc_per_node N -m lowprec ...`, or
`lowprec --nproc N ...`, which launches it). This module owns everything that knows about ranks:

- `setup`: the gloo process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT), with a bounded timeout on every collective (LOWPREC_DIST_TIMEOUT seconds, default
  120). A collective that fails (a peer died, or did not answer within the timeout) raises
  `RankFailure` naming the collective and this rank; the CLI exits 3.
- `span`: the rank's slice of a window's batches: contiguous, cut on the batch boundaries the
  one-process run uses (`iter_batches(span=...)`), so dynamic int8 activation ranges see the same
  batches and every per-batch number is the same.
- merges: `all_reduce_sum` / `all_reduce_min` / `all_reduce_max` for sums and extremes,
  `gather_rows` (rows of every rank in rank order) for what is not a sum, and `fold_rows` to replay
  per-batch float sums in the one-process order (so merged float sums are bit-identical; the paired
  evaluation's bigger sums use `lowprec.evaluation.merge.OrderedSum`).
  Histograms of unit-weight rows hold integers < 2^53: their float64 sums are exact in any order.
- `map_rounds`: independent jobs (the search's sensitivity measurements) dealt round-robin over
  ranks, results all-gathered after every round, so no rank waits longer than one job at a collective.
- `check_same`: at start-up every rank reports the lowprec/torch/fbgemm versions, its command line
  (as parsed: options, not paths) and fingerprints (sha256; what they cover: lowprec.inputprints) of
  its input files; any difference raises `RankMismatch` (exit 2) on every rank, naming it.
- `is_main`: only rank 0 writes (reports, databases, stdout).
Launching a job (`lowprec --nproc N`) and reading its outcome is lowprec.launch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from lowprec.errors import InputError
from lowprec.inputprints import FULL_HASH_ENV, describe_inputs, full_hash, input_names

TIMEOUT_ENV = "LOWPREC_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
MAX_TIMEOUT_S = 86400.0  # a day: beyond it a hung rank holds the job practically forever (and 1e30 s overflows)
TORCHRUN_ENV = ("RANK", "MASTER_ADDR", "MASTER_PORT")  # set by torchrun beside WORLD_SIZE; init_process_group reads them
_local_depth = 0  # > 0 inside `local()`: collectives are skipped (rank-0-only work)
TIMING = {"collective_s": 0.0, "calls": 0}  # time in collectives (incl. waiting for peers); benchmarks read it


TIMED_OUT = "timed out: no answer within"  # in a RankFailure for a timeout (`timed_out`: how launch tells it)


def timed_out(message: str) -> bool:
    """Whether a rank's error says a collective timed out (a peer hung), not that a peer died."""
    return TIMED_OUT in message


class DistributedError(RuntimeError):
    """A data-parallel job cannot go on (the CLI exits 3 with this message)."""


class RankFailure(DistributedError):
    """A collective failed: a peer rank died or did not answer within the timeout."""


class RankMismatch(InputError):
    """Ranks run different software or read different inputs (exit 2, nothing written)."""


def timeout_s() -> float:
    """LOWPREC_DIST_TIMEOUT in seconds (default 120): finite, > 0 and at most MAX_TIMEOUT_S, else
    InputError naming the variable (`launch` checks it before any rank starts)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        if "_" in raw or not raw.isascii():  # (float() reads `1_20` as 120, `١٢٠` as 120)
            raise ValueError(raw)
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT_S:  # (False for nan)
        raise InputError(f"{TIMEOUT_ENV}={raw!r}: give a number of seconds above 0 and at most {MAX_TIMEOUT_S:.0f} "
                         f"(it bounds every wait of a data-parallel job; default {DEFAULT_TIMEOUT_S:.0f})")
    return value


def env_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when not launched by torchrun). InputError naming the
    variables when torchrun's environment is not a number or is incomplete (a WORLD_SIZE left in a
    shell by hand, without the RANK, MASTER_ADDR and MASTER_PORT torchrun sets beside it)."""
    raw = os.environ.get("WORLD_SIZE", "").strip()
    if not raw:
        return 1
    n = int(raw) if raw.isascii() and raw.isdigit() else 0  # (str.isdigit: also "²", which int() refuses)
    if n < 1:
        raise InputError(f"WORLD_SIZE={raw!r} is not a number of processes; torchrun sets it for its ranks: "
                         f"unset it to run one process")
    missing = [k for k in TORCHRUN_ENV if not os.environ.get(k, "").strip()] if n > 1 else []
    if missing:
        raise InputError(f"WORLD_SIZE={raw} is set but {_and(missing)} {'is' if len(missing) == 1 else 'are'} "
                         f"not: a stale torchrun environment? Unset WORLD_SIZE to run one process, or start "
                         f"a data-parallel job with `lowprec --nproc N` or torchrun")
    rank = os.environ.get("RANK", "0").strip()
    if n > 1 and not (rank.isascii() and rank.isdigit() and int(rank) < n):
        raise InputError(f"RANK={rank!r} is not a rank of WORLD_SIZE={n} (0..{n - 1}); torchrun sets both")
    return n


def _and(words: Sequence[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def active() -> bool:
    return _local_depth == 0 and torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def setup() -> bool:
    """Join torchrun's gloo process group if WORLD_SIZE > 1 (idempotent); True when joined."""
    if env_world_size() <= 1:
        return False
    if not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=timeout_s()))
        except (RuntimeError, ValueError) as exc:
            raise RankFailure(f"rank {os.environ.get('RANK')}: could not join the process group at "
                              f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                              f"within {timeout_s():.0f}s: {exc}") from exc
    return True


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Run a block on this rank alone (rank-0-only work such as recalibration): no collectives."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


@contextlib.contextmanager
def _guard(what: str, timeout: float | None = None) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    except RuntimeError as exc:  # gloo: connection closed / reset by peer, timed out
        if isinstance(exc, DistributedError):
            raise
        limit = timeout or timeout_s()
        if time.perf_counter() - t0 >= 0.9 * limit:  # (gloo's own words for it vary by collective)
            raise RankFailure(f"rank {rank()} of {world_size()}: collective {what!r} {TIMED_OUT} {limit:.0f}s "
                              f"(a peer rank hung or was stopped): {exc}") from exc
        raise RankFailure(f"rank {rank()} of {world_size()}: collective {what!r} failed (a peer rank "
                          f"died or did not answer within {limit:.0f}s): {exc}") from exc
    finally:
        TIMING["collective_s"] += time.perf_counter() - t0
        TIMING["calls"] += 1


def guarded(what: str) -> contextlib.AbstractContextManager[None]:
    """Collectives run by other code (TorchRec, DDP) inside: a failure raises `RankFailure`."""
    return _guard(what)


def barrier(what: str, timeout: float | None = None) -> None:
    """Wait for every rank, at most `timeout` seconds (default: `timeout_s()`)."""
    if active():
        with _guard(f"barrier {what}", timeout):
            torch.distributed.monitored_barrier(timeout=timedelta(seconds=timeout or timeout_s()))


def _reduce(x: np.ndarray, op: Any, what: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    if not active():
        return arr
    t = torch.from_numpy(arr.copy())
    with _guard(what):
        torch.distributed.all_reduce(t, op=op)
    return t.numpy()


def all_reduce_sum(x: np.ndarray | float, what: str = "sum") -> np.ndarray:
    return _reduce(np.asarray(x), torch.distributed.ReduceOp.SUM, what)


def all_reduce_min(x: np.ndarray | float, what: str = "min") -> np.ndarray:
    return _reduce(np.asarray(x), torch.distributed.ReduceOp.MIN, what)


def all_reduce_max(x: np.ndarray | float, what: str = "max") -> np.ndarray:
    return _reduce(np.asarray(x), torch.distributed.ReduceOp.MAX, what)


def gather_rows(rows: np.ndarray, what: str = "gather") -> np.ndarray:
    """Every rank's (n_r, d) float64 rows, concatenated in rank order, on every rank."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:  # (a rank with no batches passes (0, d): reshape(0, -1) cannot infer d)
        rows = rows.reshape(len(rows), -1)
    if not active():
        return rows
    n = world_size()
    with _guard(what):
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(n)]
        torch.distributed.all_gather(sizes, torch.tensor([len(rows)], dtype=torch.int64))
        top = max(int(s) for s in sizes)
        padded = np.zeros((top, rows.shape[1]))
        padded[: len(rows)] = rows
        out = [torch.zeros(top, rows.shape[1], dtype=torch.float64) for _ in range(n)]
        torch.distributed.all_gather(out, torch.from_numpy(padded))
    return np.concatenate([o.numpy()[: int(s)] for o, s in zip(out, sizes)])


def fold_rows(rows: np.ndarray, width: int) -> np.ndarray:
    """Σ of rows in order, starting at 0.0: exactly what `x += row` per batch gives in one process."""
    acc = np.zeros(width)
    for r in rows:
        acc += r
    return acc


def broadcast_json(obj: Any, what: str = "broadcast") -> Any:
    """Rank 0's JSON-serialisable object on every rank."""
    if not active():
        return obj
    box = [json.dumps(obj) if rank() == 0 else None]
    with _guard(what):
        torch.distributed.broadcast_object_list(box, src=0)
    return json.loads(box[0])


def span(n_batches: int, r: int | None = None, n: int | None = None) -> tuple[int, int]:
    """Rank r's contiguous share [a, b) of n_batches batches (sizes differ by at most one)."""
    r = rank() if r is None else r
    n = world_size() if n is None else n
    return n_batches * r // n, n_batches * (r + 1) // n


def software() -> dict[str, str]:
    import lowprec

    return {"lowprec": lowprec.__version__, "torch": str(lowprec.TORCH_VERSION),
            "fbgemm_gpu": str(lowprec.FBGEMM_VERSION), "python": sys.version.split()[0],
            FULL_HASH_ENV: "1" if full_hash() else "0"}  # (else the fingerprints differ in kind, not content)


def command_line() -> dict[str, Any]:
    """The command this process runs, as click parsed it: `{"command": "data prepare", "--batch-size":
    4096, ...}` ({} outside a command). A path is recorded only as given or not: its file is
    compared by content (`describe_inputs`), hosts may mount it elsewhere, and outputs are rank 0's."""
    import click

    ctx, chain = click.get_current_context(silent=True), []
    while ctx is not None:
        chain.insert(0, ctx)
        ctx = ctx.parent
    if not chain:
        return {}
    out: dict[str, Any] = {"command": " ".join(c.info_name or "" for c in chain[1:])}
    for c in chain:
        for param in c.command.params:
            value = c.params.get(param.name) if param.name else None
            if isinstance(param.type, click.Path) and value not in (None, ()):
                value = "(a path)"
            key = param.opts[0] if isinstance(param, click.Option) else param.name
            out[key] = json.loads(json.dumps(value, default=str))
    return out


def check_same(inputs: Sequence[Path | str]) -> None:
    """Refuse (RankMismatch, on every rank) when ranks differ in software, command line or input files."""
    if not active():
        return
    mine = {"software": software(), "command line": command_line(), "inputs": describe_inputs(inputs),
            "names": input_names(inputs)}
    everyone: list[Any] = [None] * world_size()
    with _guard("start-up check"):
        torch.distributed.all_gather_object(everyone, json.dumps(mine, sort_keys=True))
    difference = first_difference([json.loads(text) for text in everyone])
    if difference:
        raise RankMismatch(f"{difference}; refusing to run")


def first_difference(described: list[dict[str, dict[str, Any]]]) -> str | None:
    """The first way a rank's description (`check_same`) differs from rank 0's, in words."""
    ref = described[0]
    for r, other in enumerate(described[1:], start=1):
        for part in ("software", "command line", "inputs"):
            keys = sorted(set(ref[part]) | set(other[part]), key=lambda k: (k != "command", k))
            bad = [k for k in keys if ref[part].get(k) != other[part].get(k)]
            if bad:
                k = bad[0]
                return (f"rank {r} differs from rank 0 in {part}: {_named(k, ref, other, r)} is "
                        f"{_value(other[part].get(k))} on rank {r}, {_value(ref[part].get(k))} on rank 0")
    return None


def _value(v: Any) -> str:
    return "missing" if v is None else repr(v)


def _named(key: str, ref: dict[str, Any], other: dict[str, Any], r: int) -> str:
    """`input 2: day_3_sparse.npy` as `input 2 (data): day_3_sparse.npy`, or `input 2 (data on rank 0,
    data-copy on rank 1): ...` when the ranks name it differently (a name is said, never compared)."""
    head, sep, rest = key.partition(": ")
    a, b = ref.get("names", {}).get(head), other.get("names", {}).get(head)
    if a is None:
        return key
    name = a if a == b or b is None else f"{a} on rank 0, {b} on rank {r}"
    return f"{head} ({name}){sep}{rest}"


def merge_stats(local: Any, batch_sums: list[tuple[float, float, float, float]], what: str = "stats") -> Any:
    """One window's BinaryStats over all ranks from this rank's histograms and per-batch
    (weight, positives, pred_sum, logloss_sum): sums folded in the one-process batch order."""
    from lowprec.evaluation.metrics import BinaryStats

    rows = gather_rows(np.asarray(batch_sums, dtype=np.float64).reshape(-1, 4), f"{what} sums")
    weight, positives, pred_sum, logloss_sum = fold_rows(rows, 4)
    hists = all_reduce_sum(np.stack([local.hist_pos, local.hist_neg]), f"{what} histograms")
    return BinaryStats(float(weight), float(positives), float(pred_sum), float(logloss_sum), hists[0], hists[1])


def map_rounds(keys: Sequence[str], fn: Callable[[str], Any], what: str,
               on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """fn(key) for every key, on every rank's behalf: round j gives keys[j N + r] to rank r, then
    every rank gets the round's JSON-serialisable results (`on_round(results)`, in key order).
    Returns key -> result in key order. One process runs the same rounds alone."""
    n, r, out = world_size(), rank(), {}
    for start in range(0, len(keys), n):
        batch = list(keys[start: start + n])
        mine = {batch[r]: fn(batch[r])} if r < len(batch) else {}
        if active():
            everyone: list[Any] = [None] * n
            with _guard(f"{what} round {start // n + 1}"):
                torch.distributed.all_gather_object(everyone, json.dumps(mine))
            for text in everyone:
                mine.update(json.loads(text))
        results = {k: mine[k] for k in batch}
        out.update(results)
        if on_round is not None:
            on_round(results)
    return out
