"""Atomic outputs: temporary siblings of dead writers are swept, everyone else's are left."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lowprec.fileio import atomic_dir, atomic_write_text


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    host = socket.gethostname()
    name = "out[1]"  # glob characters in the name must not confuse the sweep
    dead = tmp_path / f".{name}.tmp-{host}-{dead_pid()}-abc00000"
    alive = tmp_path / f".{name}.tmp-{host}-{os.getppid()}-def00000"  # a running process's
    other_host = tmp_path / f".{name}.tmp-elsewhere-{dead_pid()}-ghi00000"  # can't tell: leave it
    old_style = tmp_path / f".{name}.tmp-k2j3h4"
    other_name = tmp_path / f".other.tmp-{host}-{dead_pid()}-jkl00000"
    for d in (dead, alive, other_host, old_style, other_name):
        d.mkdir()
        (d / "f").write_text("x")
    stale_file = tmp_path / f".{name}.tmp-{host}-{dead_pid()}-mno00000"
    stale_file.write_text("half")

    with atomic_dir(tmp_path / name) as tmp:
        (tmp / "done").write_text("yes")
    assert (tmp_path / name / "done").read_text() == "yes"
    assert not dead.exists() and not stale_file.exists()
    assert alive.exists() and other_host.exists() and old_style.exists() and other_name.exists()


def test_another_hosts_temporary_whose_host_extends_ours_is_left(tmp_path, monkeypatch):
    """qa-5 1: host `vm-N`'s `.out.tmp-vm-N-4242-XXXXXXXX` was read on host `vm` as PID N's, N dead
    here, and removed under the other host's live writer. Only `.NAME.tmp-vm-PID-XXXXXXXX` is ours."""
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    theirs = [tmp_path / f".out.tmp-vm-{dead_pid()}-4242-abcdefgh", tmp_path / f".out.tmp-vm-{dead_pid()}-4242-abcd",
              tmp_path / f".out.tmp-vm-{dead_pid()}-abc-defgh", tmp_path / f".out.tmp-vm-{dead_pid()}-abcdefghi"]
    ours = tmp_path / f".out.tmp-vm-{dead_pid()}-ab_d3fgh"
    for d in (*theirs, ours):
        d.mkdir()
        (d / "weights").write_text("precious")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("yes")
    assert all((d / "weights").read_text() == "precious" for d in theirs) and not ours.exists()
    atomic_write_text(tmp_path / "out.json", "{}\n")  # (the same rule for files)
    assert all(d.exists() for d in theirs)


def test_atomic_write_text_sweeps_its_own_stale_temporaries(tmp_path):
    stale = tmp_path / f".plan.json.tmp-{socket.gethostname()}-{dead_pid()}-x0000000"
    stale.write_text("{")
    atomic_write_text(tmp_path / "plan.json", "{}\n")
    assert (tmp_path / "plan.json").read_text() == "{}\n"
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_a_failed_write_removes_the_parent_directories_it_made_and_no_other(tmp_path):
    """`data prepare --out new1/new2/out` that failed left new1/new2 behind: "nothing written"."""
    import pytest

    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "kept" / "new1" / "new2" / "out", "dataset") as tmp:
            assert (tmp_path / "kept" / "new1" / "new2").is_dir()
            raise RuntimeError("the run fails")
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C (and SIGTERM, lowprec.cli) too
        with atomic_dir(tmp_path / "a" / "b" / "out", "dataset") as tmp:
            (tmp_path / "a" / "theirs.txt").write_text("someone else's, written meanwhile")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path / "a") == ["theirs.txt"]  # a directory holding others' files stays
    with atomic_dir(tmp_path / "n1" / "n2" / "out", "dataset") as tmp:
        (tmp / "dataset.json").write_text("{}")
    assert (tmp_path / "n1" / "n2" / "out" / "dataset.json").is_file()


def test_a_failure_on_a_temporary_sibling_names_the_users_path(tmp_path, monkeypatch):
    """QA 8b item 1: a read-only directory said `cannot write mnt/.small.tmp-vm-3906-b_qk_lr2` (the
    hidden temporary, whose OSError filename won) instead of the --out the user gave."""
    import errno
    import tempfile

    from lowprec import fileio
    from lowprec.errors import InputError, os_error

    out = tmp_path / "small"

    def read_only(prefix, dir):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / f"{prefix}b_qk_lr2"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(InputError) as exc:
        with fileio.atomic_dir(out):
            pass
    assert str(exc.value) == f"cannot write {out}: Read-only file system [EROFS]; nothing was replaced"
    inside = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".small.tmp-h-42-abcdefgh" / "w.bin"))
    assert str(os_error(inside, out)).startswith(f"cannot write {out}: ")
    # QA 9a item 5: a rank's staged part inside the output's temporary, and a write without a file name
    staged = tmp_path / ".ds2.tmp-h-42-abcdefgh" / ".parts"
    assert str(os_error(OSError(errno.ENOSPC, "No space left on device"), staged)).startswith(
        f"cannot write {tmp_path / 'ds2'}: ")
    scratch = OSError(errno.ENOSPC, "x", str(tmp_path / ".plan.json.validate.tmp-h-42-abcdefgh" / "model"))
    assert str(os_error(scratch, tmp_path / "elsewhere")).startswith(f"cannot write {tmp_path / 'plan.json.validate'}: ")
    other = OSError(errno.EACCES, "Permission denied", str(tmp_path / "input.csv"))  # a file it names: kept
    assert str(os_error(other, out, "read")).startswith(f"cannot read {tmp_path / 'input.csv'}: ")
