"""Reference DLRM (facebookresearch/dlrm DLRM_Net) import: its naming, its lower-triangle interaction
order, the user-run conversion script, refusals.

The reference is a slow per-sample loop written from dlrm_s_pytorch.py's definition: bot_l/top_l are
Sequential(Linear, ReLU, ..., Linear, Sigmoid) with Linears at even indices, emb_l sum-pools, and
interact_features concatenates x with Z[i, j] for i in range(F), j in range(i).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from helpers import REPO, make_tiny_dataset
from lowprec.checkpoint.dlrm_reference import import_dlrm_reference
from lowprec.checkpoint.float_model import load_float_model
from lowprec.cli import main
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError

D = 8
BOT = (12, D)
TOP = (10, 6, 1)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return Dataset(make_tiny_dataset(tmp_path_factory.mktemp("ref") / "data", windows=1, rows=64, hotness=(1, 3, 1)))


@pytest.fixture(scope="module")
def batch(ds):
    return next(iter(iter_batches(ds, [0], batch_size=32)))


def reference_state(ds, order=None, seed=0):
    """A DLRM_Net state dict: emb_l.{t} in `order` (feature names), bot_l/top_l Linears at 2i."""
    g = torch.Generator().manual_seed(seed)
    meta = ds.meta
    rows = dict(zip(meta.sparse_names, meta.num_embeddings))
    state = {f"emb_l.{t}.weight": torch.randn(rows[f], D, generator=g) * 0.3
             for t, f in enumerate(order or meta.sparse_names)}
    width = len(meta.dense_names)
    for i, out in enumerate(BOT):
        state[f"bot_l.{2 * i}.weight"] = torch.randn(out, width, generator=g) * 0.4
        state[f"bot_l.{2 * i}.bias"] = torch.randn(out, generator=g) * 0.1
        width = out
    f = len(meta.sparse_names) + 1
    width = D + f * (f - 1) // 2
    for i, out in enumerate(TOP):
        state[f"top_l.{2 * i}.weight"] = torch.randn(out, width, generator=g) * 0.3
        state[f"top_l.{2 * i}.bias"] = torch.randn(out, generator=g) * 0.1
        width = out
    return state


def reference_logits(state, meta, dense, sparse, order=None):
    """DLRM_Net.sequential_forward, one sample at a time, before the final Sigmoid."""
    order = order or meta.sparse_names
    starts, hot = dict(zip(meta.sparse_names, meta.slot_offsets)), dict(zip(meta.sparse_names, meta.hotness))
    out = []
    for b in range(dense.shape[0]):
        x = dense[b].double()
        for i in range(len(BOT)):
            x = torch.relu(state[f"bot_l.{2 * i}.weight"].double() @ x + state[f"bot_l.{2 * i}.bias"].double())
        vecs = [x]
        for t, f in enumerate(order):
            acc = torch.zeros(D, dtype=torch.float64)
            for j in range(starts[f], starts[f] + hot[f]):
                if int(sparse[b, j]) >= 0:
                    acc = acc + state[f"emb_l.{t}.weight"].double()[int(sparse[b, j])]
            vecs.append(acc)
        z = [float(vecs[i] @ vecs[j]) for i in range(len(vecs)) for j in range(i)]  # li, lj
        y = torch.cat([x, torch.tensor(z, dtype=torch.float64)])
        for i in range(len(TOP)):
            y = state[f"top_l.{2 * i}.weight"].double() @ y + state[f"top_l.{2 * i}.bias"].double()
            if i < len(TOP) - 1:
                y = torch.relu(y)
        out.append(float(y[0]))
    return torch.tensor(out, dtype=torch.float64)


def write(state, root, config=None):
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"format": "dlrm-reference", **(config or {})}))
    return root / "model.safetensors", root / "config.json"


def test_reference_naming_and_interaction_order_match(ds, batch, tmp_path):
    state = reference_state(ds)
    model, info = import_dlrm_reference(*write(state, tmp_path / "ref"), ds.meta)
    assert info["tables"] == {"t0": "emb_l.0", "t1": "emb_l.1", "t2": "emb_l.2"}
    assert model.config.bottom_mlp == BOT and model.config.top_mlp == TOP[:-1]
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    want = reference_logits(state, ds.meta, batch.dense, batch.sparse)
    assert want.std() > 1e-2 and (got - want).abs().max() < 1e-5


def test_reference_table_order_from_config(ds, batch, tmp_path):
    order = ["t2", "t0", "t1"]
    state = reference_state(ds, order=order, seed=1)
    model, info = import_dlrm_reference(*write(state, tmp_path / "ref", {"sparse_feature_names": order}), ds.meta)
    assert info["feature_order"] == order and info["tables"]["t2"] == "emb_l.0"
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    assert (got - reference_logits(state, ds.meta, batch.dense, batch.sparse, order)).abs().max() < 1e-5


@pytest.mark.parametrize("edit,config,match", [
    (lambda s: s.__setitem__("emb_l.1.embs.0.weight", torch.zeros(3, D)), {}, r"emb_l\.1\.embs\.0\.weight.*qr-flag"),
    (lambda s: s.__setitem__("v_W_l.0", torch.zeros(3)), {}, "v_W_l"),
    (lambda s: None, {"arch_interaction_op": "cat"}, "arch_interaction_op 'cat'"),
    (lambda s: None, {"arch_interaction_itself": True}, "self-dots"),
    (lambda s: s.update({"bot_l.1.weight": s.pop("bot_l.2.weight"), "bot_l.1.bias": s.pop("bot_l.2.bias")}),
     {}, r"bot_l Linear layers sit at indices \[0, 1\]"),
    (lambda s: s.__setitem__("emb_l.1.weight", torch.zeros(7, D)), {}, r"emb_l\.1\.weight \(feature 't1'\) has shape \(7, 8\)"),
    (lambda s: s.update({"top_l.4.weight": torch.zeros(2, 6), "top_l.4.bias": torch.zeros(2)}), {},
     r"top_l\.4\.weight has shape \(2, 6\)"),
    (lambda s: s.__setitem__("emb_l.0.weight", s["emb_l.0.weight"].reshape(-1).contiguous()), {},
     r"emb_l\.0\.weight has shape \(\d+,\); a table is \(rows, dim\)"),
    (lambda s: None, {"sparse_feature_names": 5}, "sparse_feature_names must be a list of feature names, got 5"),
    (lambda s: None, {"sparse_feature_names": "t0"}, "sparse_feature_names must be a list"),
], ids=["qr", "weighted", "cat", "itself", "odd-index", "rows", "two-logits", "flat-table", "names-int", "names-str"])
def test_refusals_name_the_key_or_setting(ds, tmp_path, edit, config, match):
    state = reference_state(ds)
    edit(state)
    with pytest.raises(InputError, match=match):
        import_dlrm_reference(*write(state, tmp_path / "ref", config), ds.meta)


def test_user_script_then_cli_import_never_unpickles_in_lowprec(ds, batch, tmp_path):
    """The user's side: torch.save checkpoint -> tools script (their env) -> lowprec import."""
    state = reference_state(ds, seed=2)
    ckpt = tmp_path / "model.pt"
    torch.save({"epoch": 3, "state_dict": state, "opt_state_dict": {}}, ckpt)
    (tmp_path / "c.json").write_text(json.dumps({"format": "dlrm-reference"}))
    res = CliRunner().invoke(main, ["import", "--format", "dlrm-reference", "--state-dict", str(ckpt), "--config",
                                    str(tmp_path / "c.json"), "--data", str(ds.root), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "never unpickles" in res.output and not (tmp_path / "m").exists()
    script = REPO / "tools" / "dlrm_reference_to_safetensors.py"
    run = subprocess.run([sys.executable, str(script), "--checkpoint", str(ckpt), "--out", str(tmp_path / "conv")],
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "lowprec" not in script.read_text().split('"""')[2]  # the script needs torch + safetensors only
    res = CliRunner().invoke(main, ["import", "--format", "dlrm-reference", "--state-dict",
                                    str(tmp_path / "conv" / "model.safetensors"), "--config",
                                    str(tmp_path / "conv" / "config.json"), "--data", str(ds.root),
                                    "--out", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["format"] == "dlrm-reference"
    model, info = load_float_model(tmp_path / "m")
    assert info["imported"]["format"] == "dlrm-reference"
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    assert (got - reference_logits(state, ds.meta, batch.dense, batch.sparse)).abs().max() < 1e-5


def _cli_import(ds, tmp_path, state):
    model, config = write(state, tmp_path / "ref")
    res = CliRunner().invoke(main, ["import", "--format", "dlrm-reference", "--state-dict", str(model), "--config",
                                    str(config), "--data", str(ds.root), "--out", str(tmp_path / "m")])
    return res, model


@pytest.mark.parametrize("edit,match", [
    # integer tensors were silently cast to float (--format torchrec refuses them)
    (lambda s: s.__setitem__("emb_l.0.weight", (s["emb_l.0.weight"] * 10).long()),
     r"tensor 'emb_l\.0\.weight' has dtype torch\.int64; expected float weights"),
    (lambda s: s.__setitem__("top_l.0.weight", (s["top_l.0.weight"] * 10).to(torch.int32)),
     r"tensor 'top_l\.0\.weight' has dtype torch\.int32; expected float weights"),
    (lambda s: s.__setitem__("bot_l.0.bias", s["bot_l.0.bias"].to(torch.int8)),
     r"tensor 'bot_l\.0\.bias' has dtype torch\.int8; expected float weights"),
    # these reached DLRMConfig, whose messages ('embedding_dim must be >= 1', 'the bottom MLP must end
    # at embedding_dim...') named no file
    (lambda s: s.update({f"emb_l.{t}.weight": torch.zeros(s[f"emb_l.{t}.weight"].shape[0], 0) for t in range(3)}),
     r"emb_l\.0\.weight has shape \(\d+, 0\); a table needs at least one column"),
    (lambda s: s.update({"bot_l.2.weight": torch.zeros(4, BOT[0]), "bot_l.2.bias": torch.zeros(4)}),
     r"bot_l\.2\.weight has shape \(4, 12\); the bottom MLP must end at the tables' dim 8"),
    (lambda s: s.update({"top_l.2.weight": torch.zeros(0, TOP[0]), "top_l.2.bias": torch.zeros(0)}),
     r"top_l\.2\.weight has shape \(0, 10\): a layer with no outputs"),
    # fp64 beyond float32's range was checked before the cast and written as Inf
    (lambda s: s.__setitem__("emb_l.1.weight", s["emb_l.1.weight"].double().index_put_((torch.tensor(2), torch.tensor(5)), torch.tensor(3e40, dtype=torch.float64))),
     r"tensor 'emb_l\.1\.weight' holds 3e\+40 at index \[2, 5\], beyond float32's range"),
    (lambda s: s.__setitem__("top_l.0.bias", s["top_l.0.bias"].double() - 1e300),
     r"tensor 'top_l\.0\.bias' holds -1e\+300 at index \[0\], beyond float32's range"),
], ids=["int64-table", "int32-mlp", "int8-bias", "dim-0", "bottom-not-D", "width-0", "f64-table-big", "f64-bias-big"])
def test_cli_refusals_name_the_file(ds, tmp_path, edit, match):
    state = reference_state(ds)
    edit(state)
    res, model = _cli_import(ds, tmp_path, state)
    assert res.exit_code == 2, res.output
    assert f"{model}: " in res.output and re.search(match, res.output), res.output
    assert not (tmp_path / "m").exists()
