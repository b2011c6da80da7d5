"""Stage runner of the Criteo-scale study: one `lowprec` CLI call per stage, resumable, measured.

Each stage is a subprocess (the real CLI, `python -m lowprec ...`) run under RLIMIT_DATA; the runner
records its command, exit code, wall seconds, peak RSS (os.wait4's ru_maxrss of that child: resident
pages including the mapped model files it touched), the git commit it ran under and the JSON object the
command printed last. Records go to the study's JSON file after every stage (atomically), so a crash
loses at most the running stage; a stage whose record says it finished (and whose output exists) is
skipped on the next run. When the study's own code changes while it runs, the runner exits with
RELOAD before the next stage, so a wrapper loop (`until ...; do [ $? = 75 ] || break; done`) picks the
change up without losing the stage in flight.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OK_CODES = (0,)
RELOAD = 75  # exit code: the study's own code changed; the wrapper loop starts it again (resumes)


def code_stamp() -> float:
    return max(f.stat().st_mtime for f in Path(__file__).parent.glob("*.py"))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def last_json(stdout: str) -> Any:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


class Runner:
    """Runs stages in order and keeps `state["stages"][name]` for each (see the module docstring)."""

    def __init__(self, state_path: Path, log_dir: Path, data_limit_gb: float, meta: dict[str, Any],
                 peers: tuple[Path, ...] = ()):
        self.state_path, self.peers = state_path, tuple(p for p in peers if p != state_path)
        self.log_dir = log_dir
        self.limit = int(data_limit_gb * 2**30)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.state = json.loads(state_path.read_text()) if state_path.exists() else {}
        self.state.setdefault("stages", {})
        # The study's meta (its regenerate command and config) is the first run's: a resumption with other
        # arguments (say --seeds 0 for one lane) records its command in its own `runs` entry instead.
        self.state["meta"] = {**meta, **self.state.get("meta", {})}
        self.stamp = code_stamp()
        self.save()

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    def record(self, name: str) -> dict | None:
        """This lane's record of stage NAME, else a finished one of another lane (`peers` state files)."""
        rec = self.state["stages"].get(name)
        if rec and rec.get("ok"):
            return rec
        for peer in self.peers:
            if peer.exists():
                other = json.loads(peer.read_text()).get("stages", {}).get(name)
                if other and other.get("ok"):
                    return other
        return rec

    def done(self, name: str, output: Path | None = None) -> bool:
        rec = self.record(name)
        return bool(rec and rec.get("ok") and (output is None or output.exists()))

    def result(self, name: str) -> Any:
        rec = self.record(name)
        return rec.get("result") if rec and rec.get("ok") else None

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (self.limit, self.limit))
        os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")

    def run(self, name: str, args: list[str], output: Path | None = None, ok_codes: tuple[int, ...] = OK_CODES,
            extra: dict[str, Any] | None = None) -> Any:
        """Run `python -m lowprec ARGS` as stage NAME unless it already finished; return its JSON."""
        if self.done(name, output):
            return self.result(name)
        if code_stamp() != self.stamp:
            print("study code changed: exiting to be restarted", flush=True)
            raise SystemExit(RELOAD)
        cmd = [sys.executable, "-m", "lowprec", *args]
        log = self.log_dir / f"{name.replace('/', '__')}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(args)}", flush=True)
        t0, commit = time.time(), git_commit()
        with open(log, "w") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                 preexec_fn=self._limit)
            out = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        secs = time.time() - t0
        rec = {"cmd": ["lowprec", *args], "rc": rc, "ok": rc in ok_codes, "seconds": round(secs, 1),
               "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "commit": commit, "commit_at": "start",
               "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "result": last_json(out), **(extra or {})}
        old = self.state["stages"].get(name)
        if old and not old.get("ok"):  # a failed or killed attempt stays on record
            self.state.setdefault("failed_attempts", []).append({"stage": name, **old})
        self.state["stages"][name] = rec
        self.save()
        print(f"    -> rc {rc} in {secs:.0f} s, peak RSS {rec['peak_rss_mb']:.0f} MB", flush=True)
        if not rec["ok"]:
            print(f"    stage {name} failed; see {log}", flush=True)
        return rec["result"] if rec["ok"] else None

    def note(self, key: str, value: Any) -> None:
        self.state.setdefault("derived", {})[key] = value
        self.save()
