"""What ranks compare at start (lowprec.inputprints): every file of every input, keyed by the input's
position and the path inside it, big files by evenly spaced blocks (or whole with LOWPREC_DIST_FULL_HASH=1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lowprec import distributed as dist
from lowprec import inputprints
from lowprec.errors import InputError
from tests.distributed.conftest import WAIT_S, last_json, start_ranks

BIG = 300 << 20  # over FULL_HASH_LIMIT; a sparse file, so cheap to make and to read


def _sparse(path: Path, size: int = BIG) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_an_edit_in_the_middle_of_a_big_file_is_seen(tmp_path):
    """qa-1b 1: files over 256 MiB were fingerprinted by their size and first and last 4 MiB, so two
    hosts whose copies differed in the middle (a partial rsync, bit rot, a same-size rewrite) scored
    different data with exit 0. Now 4 KiB blocks spaced ~75 KB apart over the whole 300 MiB are hashed."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _sparse(a / "day_3_sparse.npy"), _sparse(b / "day_3_sparse.npy")
    assert inputprints.describe_inputs([a]) == inputprints.describe_inputs([b])
    _write_at(b / "day_3_sparse.npy", BIG // 3, b"\x01" * (1 << 20))  # 1 MiB a third of the way in
    before, after = inputprints.describe_inputs([a]), inputprints.describe_inputs([b])
    assert before["input 1: day_3_sparse.npy"].startswith("sampled:4096x4096:")
    assert before != after


def test_an_edit_between_blocks_needs_the_full_hash(tmp_path, monkeypatch):
    """What sampling cannot see, said in the README: a few bytes between two blocks. With
    LOWPREC_DIST_FULL_HASH=1 every whole file is hashed."""
    a, b = _sparse(tmp_path / "a.npy"), _sparse(tmp_path / "b.npy")
    offsets = inputprints.sample_offsets(BIG)
    gap = offsets[100] + inputprints.SAMPLE_BYTES + 10
    assert gap < offsets[101]
    _write_at(b, gap, b"\x01")
    assert inputprints.fingerprint(a) == inputprints.fingerprint(b)  # (the documented limit)
    monkeypatch.setenv("LOWPREC_DIST_FULL_HASH", "1")
    assert inputprints.fingerprint(a) != inputprints.fingerprint(b)
    assert len(inputprints.fingerprint(a)) == 64  # a plain sha256
    assert dist.software()["LOWPREC_DIST_FULL_HASH"] == "1"  # (ranks must agree on it, as on versions)
    monkeypatch.setenv("LOWPREC_DIST_FULL_HASH", "yes")
    with pytest.raises(InputError, match="LOWPREC_DIST_FULL_HASH='yes'"):
        inputprints.describe_inputs([a])


def test_files_in_subdirectories_and_symlinked_ones_are_compared(tmp_path):
    """qa-1b 1: only files directly inside an input directory were fingerprinted, so a model shard in
    a subdirectory could differ between hosts unseen. Hidden entries stay bookkeeping."""
    m = tmp_path / "m"
    (m / "shards").mkdir(parents=True)
    (m / "config.json").write_text("{}")
    (m / "shards" / "t2-part1.safetensors").write_bytes(b"abc")
    (m / ".tmp").mkdir()
    (m / ".tmp" / "x").write_text("ignored")
    (m / "loop").symlink_to(m)  # followed once, not forever
    described = inputprints.describe_inputs([m])
    assert set(described) == {"input 1: config.json", "input 1: shards/t2-part1.safetensors"}
    (m / "shards" / "t2-part1.safetensors").write_bytes(b"abd")
    assert inputprints.describe_inputs([m]) != described


def test_inputs_are_keyed_by_position_not_by_name(tmp_path):
    """qa-1b 9: keys held the input directory's name, so identical data mounted as /mnt/criteo-v3 on
    one host and /data/criteo on another was refused, as "dataset.json is None on rank 1"."""
    a = tmp_path / "criteo-v3"
    a.mkdir()
    (a / "dataset.json").write_text("{}")
    b = Path(shutil.copytree(a, tmp_path / "criteo"))
    assert inputprints.describe_inputs([a]) == inputprints.describe_inputs([b])
    (b / "dataset.json").write_text("{ }")
    described = [{"software": {}, "command line": {}, "inputs": inputprints.describe_inputs([p]),
                  "names": inputprints.input_names([p])} for p in (a, b)]
    assert dist.first_difference(described).startswith(
        "rank 1 differs from rank 0 in inputs: input 1 (criteo-v3 on rank 0, criteo on rank 1): dataset.json is '")
    os.remove(b / "dataset.json")
    described[1]["inputs"] = inputprints.describe_inputs([b])
    assert " dataset.json is missing on rank 1, '" in dist.first_difference(described)


def test_ranks_accept_the_same_data_under_another_name(work, tmp_path):
    """qa-1b 9, end to end: two ranks, the dataset under another directory name on rank 1."""
    other = Path(shutil.copytree(work["data"], tmp_path / "mounted-elsewhere"))
    args = [("eval", "--model", work["model"], "--data", d, "--windows", "1", "--json") for d in (work["data"], other)]
    procs = start_ranks(args, tmp_path)
    outs = [p.communicate(timeout=WAIT_S)[0] for p in procs]
    for r, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"rank{r}.err").read_text()[-2000:]
    assert last_json(outs[0])["windows"]


def test_a_file_the_process_cannot_read_inside_an_input_is_compared_not_refused(tmp_path, monkeypatch):
    """QA 5 item 7: an unreadable file beside the data (a user's private notes) made every --nproc
    command exit 2 while the one-process command, which never reads it, ran. (As root nothing is
    unreadable, so the read fails through a stand-in.)"""
    d = tmp_path / "d"
    d.mkdir()
    (d / "dataset.json").write_text("{}")
    (d / "notes.txt").write_text("private")
    real = inputprints.fingerprint

    def denied(path, whole=None):
        if Path(path).name == "notes.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, whole)
    monkeypatch.setattr(inputprints, "fingerprint", denied)
    described = inputprints.describe_inputs([d])
    assert described["input 1: notes.txt"] == "unreadable (EACCES)"
    assert described["input 1: dataset.json"] == real(d / "dataset.json")
