"""`lowprec --nproc N CMD`: torchrun on this machine, and the job's outcome as one process gives it.

`launch` runs torchrun (`torchrun` below: torch.distributed.run without its failure report or a
traceback) on 127.0.0.1, its rendezvous store bound to port 0: torchrun takes a free port and keeps
it (none is chosen here and bound again later, which another process could take in between). Each
rank records its exit code and its `Error:` message in a temporary directory (`record_exit_code`,
`rank_error`); once torchrun has ended, the launcher prints the job's errors once (`job_errors`:
rank 0's, then those that differ; ranks that ended without a word, named with how they ended) and
exits with the code one process would have given (`job_exit_code`: 2 bad input, 4 a bug, 3 a lost
rank, else rank 0's). torchrun killed outright leaves its ranks (each in a session of its own) running:
once torchrun has ended other than with status 0, the launcher stops what is left of the job
(`stop_leftovers`, bounded) before it judges and cleans. SIGINT/SIGTERM to the launcher stop the job (torchrun gets one SIGTERM and
stops its ranks). After a failed or stopped job it removes what the ranks torchrun stopped left
half-written (lowprec.launchclean). What the ranks share while they run (process group,
collectives, start-up checks) is lowprec.distributed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from lowprec.distributed import timed_out as dist_timed_out
from lowprec.distributed import timeout_s
from lowprec.launchclean import clean_up, named_outputs, output_paths, some_paths
from lowprec.inputprints import full_hash


def free_port() -> int:
    """A port free now (for tests that start ranks by hand; `launch` lets torchrun bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# torchrun's own store on 127.0.0.1, port 0: it binds a free port and keeps it (a port chosen here,
# released and bound again by torchrun seconds later, could be taken in between: qa-1b 8)
RENDEZVOUS = ("--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1")
EXIT_DIR = "LOWPREC_EXIT_DIR"  # where each rank of a `--nproc` job records its exit code (lowprec.__main__)


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run `python -m lowprec ARGS` as nproc ranks under torchrun on this machine; the job's exit
    code as one process would give it (torchrun itself says 1 for any failed rank). SIGINT (Ctrl-C)
    or SIGTERM to the launcher stops the job: torchrun, in a session of its own so that a terminal's
    Ctrl-C reaches it through the launcher only, gets one SIGTERM and stops its ranks; the launcher
    waits for it (at most STOP_GRACE_S), removes its temporary directory and exits 128 + the signal."""
    import tempfile

    timeout_s()  # a bad LOWPREC_DIST_TIMEOUT (or LOWPREC_DIST_FULL_HASH): refused once, here, before any rank starts
    full_hash()
    cmd = [sys.executable, "-c", "import sys, lowprec.launch as d; d.torchrun(sys.argv[1:])",
           "--nnodes", "1", "--nproc-per-node", str(nproc), *RENDEZVOUS, "--rdzv-id", f"lowprec-{os.getpid()}",
           "-m", "lowprec", *args]
    outputs = output_paths(args)
    made = {out: [d for d in (out.parent, *out.parent.parents) if not d.exists()] for out in outputs}
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    stops: list[int] = []  # the signals the launcher was sent
    previous = {s: signal.signal(s, lambda signum, _: stops.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="lowprec-exit-") as codes:
            env[EXIT_DIR] = codes
            status = _wait(subprocess.Popen(cmd, env=env, start_new_session=True,
                                           preexec_fn=functools.partial(stop_with_parent, os.getpid())), stops)
            # (torchrun killed outright: its ranks run on; status 0: it saw every rank end, none is left)
            leftover = stop_leftovers(f"{EXIT_DIR}={codes}") if status != 0 else []
            recorded, errors, ended = ({r: int(t) for r, t in _records(codes, "rank").items()},
                                       _records(codes, "error"), _records(codes, "ended"))
            failed_start = _records(codes, "torchrun").get(0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    code = 128 + stops[0] if stops else job_exit_code(status, recorded, nproc)
    left = clean_up(made, named_outputs(args)) if code not in (0, 1) else []  # (ranks torchrun stopped left their temporaries)
    if stops:
        lines = [f"Error: stopped by {signal.Signals(stops[0]).name}: the job's ranks were stopped before it "
                 f"finished (exit {code})"]
    else:
        silent = {r: int(t) for r, t in ended.items() if r not in recorded and r not in errors}
        lines = job_errors(errors, silent, recorded, cleaned=not left)
        if not lines and failed_start:
            lines = [f"Error: torchrun could not start the job's ranks ({failed_start}) (exit {code})"]
        if not lines and code not in (0, 1):  # (torchrun itself killed): a failed job always says so
            lines = [f"Error: the job failed (exit {code}) and no rank said why (torchrun's exit status {status})"
                     + (f"; its {len(leftover)} rank process(es) still running were stopped" if leftover else "")]
    if left:
        lines.append(f"Error: the failed job left {some_paths(left)} that could not be removed: remove "
                     f"{'it' if len(left) == 1 else 'them'} by hand")
    say(lines, sys.stderr)
    return code


def stop_with_parent(parent: int) -> None:
    """In the child, before it runs: SIGTERM it when the process that started it dies (Linux's
    PR_SET_PDEATHSIG), so that a launcher killed outright (SIGKILL from `timeout -s KILL`, the
    out-of-memory killer) does not leave torchrun and its ranks running and writing outputs. A no-op
    where prctl is missing (not Linux)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


RANK_STOP_GRACE_S = 10.0  # a rank keeps SIGTERM's default action (lowprec.__main__): it dies at once


def stop_leftovers(marker: str, grace: float = RANK_STOP_GRACE_S) -> list[int]:
    """Stop the job's processes still running once torchrun has ended (the pids found): torchrun
    killed outright (SIGKILL, the out-of-memory killer) leaves its ranks, each in a session of its own,
    running on to publish their outputs after the launcher said the job failed. They are told by their
    environment (`marker`: EXIT_DIR=this job's directory); each gets SIGTERM, then SIGKILL after
    `grace` seconds, and the launcher waits at most `grace` more for them to go, before it judges and
    cleans up."""
    found = pids = _job_pids(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = _job_pids(marker, pids)
    return found


def _job_pids(marker: str, among: Sequence[int] | None = None) -> list[int]:
    """The running processes (not zombies: /proc/PID/environ is empty) whose environment holds `marker`."""
    want, pids = marker.encode(), []
    if among is None:  # (no /proc, not Linux: nothing found)
        among = [int(d) for d in os.listdir("/proc") if d.isdigit()] if os.path.isdir("/proc") else []
    for pid in among:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:  # (gone, or someone else's)
            continue
        if pid != os.getpid() and want in environ:
            pids.append(pid)
    return pids


STOP_GRACE_S = 60.0  # torchrun gives its ranks 30 s after SIGTERM before it kills them


def _wait(proc: subprocess.Popen, stops: list[int]) -> int:
    """torchrun's exit status; once the launcher was sent a stop signal, torchrun gets SIGTERM (once)
    and at most STOP_GRACE_S more before SIGKILL."""
    deadline = None
    while True:
        if stops and deadline is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                return proc.wait()


def say(lines: Sequence[str], file: Any) -> None:
    """The launcher's lines, each on a line of its own: a rank stopped mid-way leaves its progress
    bar's line unfinished, so on a terminal that line is erased first, and a log file gets a line
    break instead (no escape codes), so that `grep '^Error:'` finds the launcher's lines."""
    if lines:
        file.write("\r\x1b[K" if file.isatty() else "\n")
    for line in lines:
        print(line, file=file)


def rank_error(message: str) -> bool:
    """Called by a rank about to print its `Error:` line: records it for `launch`, which prints the
    job's errors once it has ended. True where the rank prints it itself: only ranks of a job
    `launch` did not start (plain torchrun). Under `launch` no rank prints its own: torchrun stops
    the other ranks as soon as one fails, and rank 0 stopped between recording its error and
    printing it left a job that exited 2 in silence (seen in CI)."""
    _record("error", message)
    return not os.environ.get(EXIT_DIR)


def _record(kind: str, text: str, rank: int | None = None) -> None:
    """A rank's `kind` (error; rank: its exit code; ended: its exit status as torchrun saw it) for
    `launch`, whole or not at all: torchrun may stop the rank mid-write. Default: this rank's."""
    where = os.environ.get(EXIT_DIR)
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    if where:
        with contextlib.suppress(OSError):
            part = Path(where, f".{kind}{rank}.part")
            part.write_text(text)
            os.replace(part, Path(where, f"{kind}{rank}"))


def _records(where: str, kind: str) -> dict[int, str]:
    return {int(f.name[len(kind):]): f.read_text() for f in Path(where).glob(f"{kind}[0-9]*")}


def job_errors(errors: dict[int, str], silent: dict[int, int] | None = None,
               codes: dict[int, int] | None = None, cleaned: bool = True) -> list[str]:
    """What `launch` prints after the job: rank 0's error as one process would print it, then each
    other rank's error that differs from it, once, naming the ranks that gave it (every rank
    refusing the same input prints one line, not N); then the ranks torchrun saw fail that recorded
    neither an exit code nor an error (`silent`: rank -> exit status, -N for signal N), such as a
    rank killed by hand or by the out-of-memory killer, or one that hung: torchrun kills (SIGKILL) a
    rank that does not stop at its SIGTERM, after the others reported a collective timed out. Where a
    rank refused its input or met a bug (`codes`, the ranks' exit codes: 2 or 4), the ranks that then
    lost it (3) are left unsaid. `cleaned`: whether `clean_up` removed every temporary the job left."""
    timed_out = any(dist_timed_out(m) for m in errors.values())
    if any(c in (2, 4) for c in (codes or {}).values()):
        errors = {r: m for r, m in errors.items() if (codes or {}).get(r) != 3}
    same: dict[str, list[int]] = {}
    for r in sorted(errors):
        if r != 0 and errors[r] != errors.get(0):
            same.setdefault(errors[r], []).append(r)
    ended: dict[str, list[int]] = {}
    for r, status in sorted((silent or {}).items()):
        if timed_out and status == -signal.SIGKILL:
            how = "did not answer within the timeout (hung, or stopped with SIGSTOP?) and torchrun killed it"
        elif status < 0:
            how = f"ended without a word (killed by {_signal_name(-status)}: by hand, or out of memory?)"
        else:
            how = f"ended without a word (exit status {status})"
        ended.setdefault(how, []).append(r)
    after = ("the job stopped; no temporary file of it is left (any a stopped rank left were removed)" if cleaned
             else "the job stopped")
    return ([f"Error: {errors[0]}"] if 0 in errors else []) + \
        [f"Error ({_ranks(rs)}): {m}" for m, rs in same.items()] + \
        [f"Error: {_ranks(rs)} {how}: {after}" for how, rs in ended.items()]


def _ranks(rs: list[int]) -> str:
    return f"rank{'s' * (len(rs) > 1)} {', '.join(map(str, rs))}"


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def torchrun(argv: Sequence[str]) -> None:
    """torchrun (`python -m torch.distributed.run ARGV`) without its failure report: when a rank
    fails, torchrun logs it and prints a Python traceback and a box of every rank's exit code, after
    the rank has printed its own `Error:` line. `launch` gives the job's code from the ranks', and
    learns here which ranks failed first and how (the others torchrun stopped itself)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:  # (each has its own level)
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(argv)))
    except ChildFailedError as exc:
        for r, status in first_failures({r: f.exitcode for r, f in exc.failures.items()}).items():
            _record("ended", str(status), r)
        sys.exit(1)
    except SignalException as exc:  # SIGTERM from `launch`: the ranks are stopped
        sys.exit(128 + int(exc.sigval))
    except Exception as exc:  # (its rendezvous: DistNetworkError, RendezvousError...): said by `launch`, no traceback
        _record("torchrun", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}", 0)
        sys.exit(1)


def first_failures(failures: dict[int, int]) -> dict[int, int]:
    """The ranks that failed first, from torchrun's rank -> exit status (-N: signal N) in the order it
    saw them end: once one fails it stops the others with SIGTERM and lists them too."""
    first = {r: s for r, s in failures.items() if s != -signal.SIGTERM}
    return first or dict(list(failures.items())[:1])


def job_exit_code(status: int, recorded: dict[int, int], nproc: int) -> int:
    """2 if any rank refused its input, 4 if a rank met a bug, 3 if a rank failed or died without
    recording a code, else rank 0's (1: a drift alarm; rank 0 sets the job's outcome)."""
    codes = set(recorded.values())
    if 2 in codes:
        return 2
    if 4 in codes:  # a bug on any rank stays a bug, whatever became of the others
        return 4
    if 3 in codes or len(recorded) < nproc:
        return 3 if (status or 3 in codes) else status
    return recorded.get(0, status)


def record_exit_code(code: int) -> None:
    """Called by a rank on its way out (lowprec.__main__): its code, for `launch`."""
    _record("rank", str(code))
