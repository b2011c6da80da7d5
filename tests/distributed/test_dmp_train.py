"""`lowprec train` on 2 ranks (TorchRec DistributedModelParallel over gloo): reproducible, a normal
float model, and the one-process trainer's model up to rounding (which row-wise Adagrad and Adam
amplify where a gradient is near zero, so the check is on quality, not on every weight)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from lowprec.errors import InputError
from lowprec.training.dmp import assign_tables
from tests.distributed.conftest import in_process, last_json, lowprec


def test_assign_tables_balances_bytes_deterministically():
    assert assign_tables([100, 10, 60, 50], 2) == [0, 0, 1, 1]  # 100 + 10 | 60 + 50
    assert assign_tables([5, 5, 5], 2) == [0, 1, 0]  # ties go to the lower rank
    assert assign_tables([7], 3) == [0]


def test_the_multi_process_refusal_names_only_what_was_set(monkeypatch):
    """It listed every option with its value ('embedding_l2 0.0, adagrad_init 0.0 and embedding_prior
    0.0 train in one process' after --optimizer sparse-adam alone)."""
    from lowprec import distributed as dist
    from lowprec.training.steps import make_step

    monkeypatch.setattr(dist, "world_size", lambda: 2)
    prefix = "multi-process training runs TorchRec's fused row-wise Adagrad only: "
    with pytest.raises(InputError) as alone:
        make_step(None, "sparse-adam", 1e-3, 0.05)
    assert str(alone.value) == prefix + ("--optimizer sparse-adam trains in one process (leave it out, or train "
                                         "without --nproc / torchrun)")
    with pytest.raises(InputError) as two:
        make_step(None, "rowwise-adagrad", 1e-3, 0.05, embedding_l2=0.01, embedding_prior=0.5)
    assert str(two.value).startswith(prefix + "--embedding-l2 0.01 and --embedding-prior 0.5 train in one process")


def test_two_rank_training_is_reproducible_and_loads_everywhere(work, tmp_path):
    args = ("train", "--data", work["data"], "--windows", "0", "--epochs", "1", "--batch-size", "256")
    runs = []
    for tag in ("a", "b"):
        r = lowprec(*args, "--out", tmp_path / tag, "--json", nproc=2)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(r.stdout.strip().splitlines()) == 1  # rank 0 alone prints
        # TorchRec's deprecation noise (DDP's broadcast_buffers FutureWarning, torch.fx's is_fx_tracing
        # log line) was printed once a rank: not the user's concern
        assert "Warning" not in r.stderr and "is_fx_tracing" not in r.stderr and "[rank" not in r.stderr, r.stderr
        runs.append(last_json(r.stdout))
    a, b = (load_file(str(tmp_path / t / "model.safetensors")) for t in ("a", "b"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # same seed, same world size
    one = load_file(str(work["model"] / "model.safetensors"))  # the fixture: one process, same flags
    assert one.keys() == a.keys() and all(one[k].shape == a[k].shape for k in a)
    assert runs[0]["rows_seen"] == 6000 and runs[0]["table_optimizer_state_bytes"] == 4 * (60 + 25 + 9)
    scores = {}
    for name, model in (("one", work["model"]), ("dmp", tmp_path / "a")):
        r = in_process("eval", "--model", model, "--data", work["data"], "--windows", "1-2", "--json")
        assert r.exit_code == 0, r.output
        scores[name] = last_json(r.stdout)
    assert abs(scores["dmp"]["ne"] - scores["one"]["ne"]) < 2e-3 * scores["one"]["ne"]
    assert abs(scores["dmp"]["auc"] - scores["one"]["auc"]) < 2e-3
